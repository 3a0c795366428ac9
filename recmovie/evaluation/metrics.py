"""Recall@K as the competition defines it, and NDCG@K, overall and per hidden part."""
from __future__ import annotations

import numpy as np

from recmovie.data.split import PART_NAMES, Holdout


def _user_scores(
    row_of_user: np.ndarray, top: np.ndarray, user: np.ndarray, item: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per hidden user: recall = hits / min(k, |hidden|) and NDCG with binary gains."""
    users, inverse, n_hidden = np.unique(user, return_inverse=True, return_counts=True)
    rows = row_of_user[user]
    ranked = rows >= 0
    match = np.zeros((len(user), k), dtype=bool)
    match[ranked] = top[rows[ranked], :k] == item[ranked, None]
    hit = match.any(axis=1)
    pos = match.argmax(axis=1)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    hits = np.bincount(inverse, weights=hit, minlength=len(users))
    dcg = np.bincount(inverse, weights=np.where(hit, discount[pos], 0.0), minlength=len(users))
    denom = np.minimum(k, n_hidden)
    idcg = np.cumsum(discount)[denom - 1]
    return hits / denom, dcg / idcg


def evaluate(top_items: np.ndarray, users: np.ndarray, holdout: Holdout, n_users: int, k: int = 10) -> dict[str, float]:
    """Metrics of ranked lists against the hidden interactions.

    top_items: [len(users), >= k] dense item ids, best first; users: the dense user of each row.
    A hidden user without a ranked row counts as 0, as the competition scorer does.
    Returns recall_at_{k}, ndcg_at_{k}, and the same with _last / _random (/ _given) per hidden part.
    """
    if len(holdout) == 0:
        return {}
    if top_items.shape[1] < k:
        raise ValueError(f"need at least {k} ranked items per user, got {top_items.shape[1]}")
    row_of_user = np.full(n_users, -1, dtype=np.int64)
    row_of_user[users] = np.arange(len(users))
    out: dict[str, float] = {}
    groups = [("", np.ones(len(holdout), bool))]
    groups += [(f"_{PART_NAMES[p]}", holdout.part == p) for p in np.unique(holdout.part)]
    for suffix, sel in groups:
        recall, ndcg = _user_scores(row_of_user, top_items, holdout.user[sel], holdout.item[sel], k)
        out[f"recall_at_{k}{suffix}"] = float(recall.mean())
        out[f"ndcg_at_{k}{suffix}"] = float(ndcg.mean())
    return out


def user_recalls(top_items: np.ndarray, users: np.ndarray, holdout: Holdout, n_users: int, k: int = 10
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each hidden user's Recall@k (the users, sorted, and their figures): what `evaluate`'s
    recall_at_k is the mean of, for standard errors and paired comparisons."""
    row_of_user = np.full(n_users, -1, dtype=np.int64)
    row_of_user[users] = np.arange(len(users))
    recall, _ = _user_scores(row_of_user, top_items, holdout.user, holdout.item, k)
    return np.unique(holdout.user), recall
