"""Fusion: one value per candidate from the members' ranks or scores (w = a member's weight, r =
the rank it gave the item, from 1):

  rank_vote    items ordered by sum(w * r), lowest first; an item a member did not list in its top_n
               counts as rank top_n + 1 (the seed team's hard voting)
  rrf          reciprocal-rank fusion (Cormack et al. 2009): sum(w / (rrf_k + r)), unlisted items add 0
  score_blend  sum(w * s): s = the member's score min-max normalised over the user's top_n, unlisted 0
  full-score blend  the same over every item, from the members' reloaded models, each member's
               scores standardised per user over the unseen items; ranked by the ranking engine
               (recmovie.evaluation.ranking.rank), so the release-year filter applies as in training
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from recmovie.data.batches import UserBatch
from recmovie.data.prepare import PreparedData
from recmovie.ensemble.pool import Pool, ranked_lists, standardised
from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import topk_unseen

METHODS = ("rank_vote", "rrf", "score_blend", "rerank")


def fuse(pool: Pool, method: str, weights: np.ndarray, rrf_k: float = 60.0) -> np.ndarray:
    """One value per pool row, higher is better."""
    if method == "rank_vote":
        return -(pool.ranks @ weights)
    if method == "rrf":
        return np.where(pool.ranks <= pool.top_n, 1.0 / (rrf_k + pool.ranks), 0.0) @ weights
    if method == "score_blend":
        return pool.scores @ weights
    raise ValueError(f"unknown method {method!r}")


def recall_of(topk_items: np.ndarray, users: np.ndarray, data: PreparedData, k: int) -> float:
    return evaluate(topk_items, users, data.holdout, data.n_users, k)[f"recall_at_{k}"]


def pool_objective(pool: Pool, data: PreparedData, method: str, rrf_k: float, k: int
                   ) -> Callable[[np.ndarray], float]:
    """Recall@k on `data`'s holdout of the pool fused with weights w: a weight search's objective."""
    def recall(w: np.ndarray) -> float:
        topk, _ = ranked_lists(pool, fuse(pool, method, w, rrf_k), data, k, k)
        return recall_of(topk.items, topk.users, data, k)

    return recall


class ScoreBlend(torch.nn.Module):
    """The full-score blend as a model the ranking engine ranks: score = sum over members of
    w * (the member's scores standardised per user over the unseen items)."""

    def __init__(self, models: list, weights: np.ndarray):
        super().__init__()
        self.members = torch.nn.ModuleList(models)
        self.weights = [float(w) for w in weights]

    def score(self, batch: UserBatch) -> torch.Tensor:
        return sum(w * standardised(m.score(batch).float(), batch) for m, w in zip(self.members, self.weights) if w > 0)


def full_score_objective(models: list, data: PreparedData, chunk: int, k: int) -> Callable[[np.ndarray], float]:
    """Recall@k on `data`'s holdout of the full-score blend with weights w; each member's
    standardised rows of the validation users are computed once."""
    users = np.unique(data.holdout.user).astype(np.int64)
    with torch.no_grad():
        rows = [torch.cat([standardised(m.score(b).float(), b) for b in
                           (data.user_batch(users[s : s + chunk]) for s in range(0, len(users), chunk))])
                for m in models]
    batch = data.user_batch(users)

    def recall(w: np.ndarray) -> float:
        total = sum(float(x) * p for x, p in zip(w, rows) if x > 0)
        _, items = topk_unseen(total.clone(), batch, k)
        return recall_of(items.numpy(), users, data, k)

    return recall
