"""benchmarks/paired.py: the per-user Recall@10 it compares runs by is the competition's."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

spec = importlib.util.spec_from_file_location("paired", Path(__file__).parents[1] / "benchmarks" / "paired.py")
paired = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired)


def test_per_user_recall_divides_by_the_smaller_of_k_and_the_hidden_count(tmp_path):
    # user 1: 12 hidden items (3 last, 9 random), 4 of them in the top 10 (2 last, 2 random);
    # user 2: 1 hidden random item, listed 11th (beyond k): 0
    hidden = pd.DataFrame({"user": [1] * 12 + [2], "item": list(range(100, 112)) + [7],
                           "part": ["last"] * 3 + ["random"] * 9 + ["random"]})
    top1 = [100, 101, 103, 104, 1, 2, 3, 4, 5, 6]
    top2 = list(range(20, 30)) + [7]
    sub = tmp_path / "s.csv"
    pd.DataFrame({"user": [1] * 10 + [2] * 11, "item": top1 + top2}).to_csv(sub, index=False)
    r = paired.per_user_recall(sub, hidden)
    assert r["all"].to_dict() == pytest.approx({1: 4 / 10, 2: 0.0})
    assert r["last"].to_dict() == pytest.approx({1: 2 / 3})
    assert r["random"].to_dict() == pytest.approx({1: 2 / 9, 2: 0.0})
