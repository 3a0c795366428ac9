"""The competition's Recall@K and NDCG@K on hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from recmovie.data.split import PART_LAST, PART_RANDOM, Holdout
from recmovie.evaluation.metrics import evaluate


def holdout(rows):
    u, i, p = zip(*rows)
    return Holdout(np.array(u, np.int32), np.array(i, np.int32), np.array(p, np.int8))


def test_recall_divides_by_min_of_k_and_hidden_size():
    # user 0: 12 hidden items, 3 of them in its top-10 -> 3 / min(10, 12) = 0.3
    # user 1: 2 hidden items, 1 hit -> 1 / 2
    top = np.array([list(range(10)), list(range(100, 110))])
    h = holdout([(0, i, PART_RANDOM) for i in [0, 5, 9] + list(range(50, 59))] + [(1, 100, PART_LAST), (1, 999, PART_LAST)])
    m = evaluate(top, np.array([0, 1]), h, n_users=2, k=10)
    assert m["recall_at_10"] == pytest.approx((0.3 + 0.5) / 2)
    assert m["recall_at_10_random"] == pytest.approx(0.3)
    assert m["recall_at_10_last"] == pytest.approx(0.5)


def test_ndcg_by_hand():
    disc = [1 / math.log2(r + 2) for r in range(10)]
    top = np.array([[7, 1, 8, 2, 9, 3, 10, 4, 11, 5]])
    h = holdout([(0, 1, PART_LAST), (0, 2, PART_LAST), (0, 42, PART_LAST)])  # hits at ranks 2 and 4
    m = evaluate(top, np.array([0]), h, n_users=1, k=10)
    assert m["ndcg_at_10"] == pytest.approx((disc[1] + disc[3]) / sum(disc[:3]))
    assert m["recall_at_10"] == pytest.approx(2 / 3)


def test_only_the_first_k_count_and_unranked_users_score_zero():
    top = np.array([[1, 2, 3, 4, 5]])
    h = holdout([(0, 3, PART_LAST), (0, 4, PART_LAST), (1, 1, PART_LAST)])
    m = evaluate(top, np.array([0]), h, n_users=2, k=2)
    assert m["recall_at_2"] == pytest.approx(0.0)  # items 3, 4 are beyond k; user 1 has no list
    m = evaluate(top, np.array([0]), h, n_users=2, k=4)
    assert m["recall_at_4"] == pytest.approx((2 / 2 + 0) / 2)


def test_needs_k_ranked_items():
    with pytest.raises(ValueError, match="at least 10"):
        evaluate(np.zeros((1, 5), int), np.array([0]), holdout([(0, 1, PART_LAST)]), n_users=1)
