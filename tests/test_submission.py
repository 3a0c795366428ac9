"""Submission and candidate files: checked before writing, raw ids, rank order."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recmovie.data.prepare import prepare_data
from recmovie.evaluation.ranking import TopK, rank
from recmovie.models.baselines import Popularity
from recmovie.candidates import write_candidates
from recmovie.submission import SubmissionError, write_submission


@pytest.fixture(scope="module")
def ranked(small_dir):
    cfg = OmegaConf.create({"data": {"format": "competition", "dir": str(small_dir)},
                            "split": {"name": "none"}, "confidence": {"kinds": []}})
    data = prepare_data(cfg.data, cfg.split, cfg.confidence, cache_dir=None)
    model = Popularity()
    model.fit(data)
    return data, rank(model, data, k=20)


def test_written_files(ranked, tmp_path):
    data, top = ranked
    sub = pd.read_csv(write_submission(tmp_path / "submission.csv", top, data))
    assert list(sub.columns) == ["user", "item"] and len(sub) == 10 * data.n_users
    assert set(sub["user"]) == set(data.dataset.user_ids)
    first = data.dataset.user_ids[top.users[0]]
    assert list(sub[sub.user == first].item) == list(data.dataset.item_ids[top.items[0, :10]])
    cand = pd.read_csv(write_candidates(tmp_path / "candidates.csv", top, data))
    assert list(cand.columns) == ["user", "item", "score", "rank"] and len(cand) == 20 * data.n_users
    assert (cand.groupby("user")["rank"].apply(list).map(lambda r: r == list(range(1, 21)))).all()


def broken(top, **change):
    fields = {"users": top.users.copy(), "items": top.items.copy(), "scores": top.scores.copy()}
    for key, fn in change.items():
        fields[key] = fn(fields[key])
    return TopK(**fields)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"users": lambda u: u[1:], "items": lambda i: i[1:], "scores": lambda s: s[1:]}, "have no recommendations"),
        ({"items": lambda i: np.c_[i[:, :1], i[:, :1], i[:, 2:]]}, "repeated item"),
        ({"scores": lambda s: np.c_[s[:, :9], np.full(len(s), -np.inf), s[:, 10:]]}, "fewer than 10"),
    ],
)
def test_bad_lists_are_refused_and_nothing_is_written(ranked, tmp_path, change, message):
    data, top = ranked
    path = tmp_path / "submission.csv"
    path.write_text("previous\n")
    with pytest.raises(SubmissionError, match=message):
        write_submission(path, broken(top, **change), data)
    assert path.read_text() == "previous\n"


def test_seen_items_are_refused(ranked, tmp_path):
    data, top = ranked
    m = data.train_matrix
    u = top.users[0]
    seen_item = m.indices[m.indptr[u]]
    bad = broken(top, items=lambda i: np.c_[np.r_[seen_item, i[1:, 0]], i[:, 1:]])
    with pytest.raises(SubmissionError, match="training history"):
        write_submission(tmp_path / "s.csv", bad, data)
