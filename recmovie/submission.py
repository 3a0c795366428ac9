"""The competition submission: checked (every user, k unseen distinct items) before it is written.

The other output, the ranked candidates that ensembles and re-rankers read, is recmovie/candidates.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recmovie.data.prepare import PreparedData
from recmovie.errors import RecmovieError
from recmovie.evaluation.ranking import TopK
from recmovie.io import write_csv

class SubmissionError(RecmovieError, ValueError):
    """The ranked lists cannot make a valid submission."""


def check_recommendable(data: PreparedData, k: int) -> None:
    """Every user has at least k items left to recommend once their training history is masked:
    checked when the data is read, before any fit (a tiny catalogue, or a user who has seen
    nearly everything, could not get a valid submission)."""
    unseen = data.n_items - np.diff(data.train_matrix.indptr)
    short = np.flatnonzero(unseen < k)
    if len(short):
        u = short[np.argmin(unseen[short])]
        raise SubmissionError(
            f"{len(short)} user(s) have fewer than {k} unseen items to recommend, e.g. user "
            f"{data.dataset.user_ids[u]} has seen {data.n_items - unseen[u]} of the {data.n_items} items; "
            f"lower eval.k or leave such users out of the data"
        )


def check_submission(topk: TopK, data: PreparedData, k: int = 10) -> None:
    """Every user present, k distinct items each, none of them seen in training, all scores finite."""
    if topk.items.shape[1] < k:
        raise SubmissionError(f"need {k} items per user, the ranking kept {topk.items.shape[1]}")
    missing = np.setdiff1d(np.arange(data.n_users), topk.users)
    if len(missing):
        raise SubmissionError(f"{len(missing)} user(s) have no recommendations, e.g. user {data.dataset.user_ids[missing[0]]}")
    items, scores = topk.items[:, :k], topk.scores[:, :k]
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        u = topk.users[np.flatnonzero(bad)[0]]
        n_unseen = data.n_items - data.train_matrix.indptr[u + 1] + data.train_matrix.indptr[u]
        raise SubmissionError(
            f"{int(bad.sum())} user(s) have fewer than {k} recommendable items, e.g. user "
            f"{data.dataset.user_ids[u]} has {n_unseen} unseen item(s)"
        )
    srt = np.sort(items, axis=1)
    if (srt[:, 1:] == srt[:, :-1]).any():
        raise SubmissionError("a user has a repeated item")
    recs = sp.csr_matrix(
        (np.ones(items.size, np.float32), (np.repeat(topk.users, k), items.ravel())), shape=data.train_matrix.shape
    )
    m = data.train_matrix
    seen = recs.multiply(sp.csr_matrix((np.ones(m.nnz, np.float32), m.indices, m.indptr), shape=m.shape)).nnz
    if seen:
        raise SubmissionError(f"{seen} recommended item(s) are in the user's training history")


def write_submission(path: str | Path, topk: TopK, data: PreparedData, k: int = 10) -> Path:
    """`user,item` with raw ids, k rows per user in rank order; checked before it is written."""
    check_submission(topk, data, k)
    order = np.argsort(data.dataset.user_ids[topk.users], kind="stable")
    users = np.repeat(data.dataset.user_ids[topk.users[order]], k)
    items = data.dataset.item_ids[topk.items[order, :k]].ravel()
    path = Path(path)
    write_csv(path, {"user": users, "item": items})
    return path
