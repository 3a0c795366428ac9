"""Fusion: one value per candidate from the members' ranks or scores (w = a member's weight, r =
the rank it gave the item, from 1):

  rank_vote    items ordered by sum(w * r), lowest first; an item a member did not list in its top_n
               counts as rank top_n + 1 (the seed team's hard voting)
  rrf          reciprocal-rank fusion (Cormack et al. 2009): sum(w / (rrf_k + r)), unlisted items add 0
  score_blend  sum(w * s): s = the member's score min-max normalised over the user's top_n, unlisted 0
  full-score blend  the same over every item, from the members' reloaded models, each member's
               scores standardised per user by its top `full_scores_head` unseen items (their mean
               and spread); ranked by the ranking engine
               (recmovie.evaluation.ranking.rank), so the release-year filter applies as in training
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from recmovie.data.batches import UserBatch
from recmovie.data.prepare import PreparedData
from recmovie.ensemble.pool import Pool, group_starts, hidden_rows, position_in_group, ranked_lists, standardised
from recmovie.evaluation.metrics import evaluate
from recmovie.errors import ConfigError
from recmovie.evaluation.ranking import topk_unseen
from recmovie.selection import available_memory

log = logging.getLogger(__name__)

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
    """Recall@k on `data`'s holdout of the pool fused with weights w (a weight search's objective):
    the figure `ranked_lists` + `evaluate` give, without either per call. The pool is laid out once
    as a [users, rows] grid; each call takes every user's top k by the fused value (ties: the first
    member's rank, then the item) with one partition over the grid."""
    grid = PoolGrid(pool, data, k)

    def recall(w: np.ndarray) -> float:
        return grid.recall(fuse(pool, method, w, rrf_k))

    return recall


class PoolGrid:
    """The pool's users with at least k rows as a [users, width] grid (hidden labels, tie keys),
    and the hits of the other hidden users, which do not depend on the weights: a user with fewer
    than k rows (or none) keeps all of them and the same popularity fill."""

    BIG = np.iinfo(np.int64).max

    def __init__(self, pool: Pool, data: PreparedData, k: int):
        self.k = k
        starts = group_starts(pool.users)
        counts = np.diff(np.r_[starts, len(pool.users)])
        pool_users = pool.users[starts]
        hidden = data.holdout
        known = hidden.item >= 0
        hidden_users, n_hidden = np.unique(hidden.user, return_counts=True)
        denominator = np.zeros(data.n_users)
        denominator[hidden_users] = np.minimum(k, n_hidden)
        long = counts >= k
        fixed = np.setdiff1d(hidden_users, pool_users[long])
        topk, _ = ranked_lists(pool, np.zeros(len(pool.users)), data, k, k)
        hit = (topk.items[hidden.user, :k] == hidden.item[:, None]).any(1) & known
        per_user = np.bincount(hidden.user, weights=hit, minlength=data.n_users)
        self.fixed_hits = float((per_user[fixed] / denominator[fixed]).sum()) if len(fixed) else 0.0
        self.n_eval = max(len(hidden_users), 1)
        self.in_long = np.repeat(long, counts)
        self.shape = (int(long.sum()), int(counts[long].max(initial=k)))
        rows = np.repeat(np.arange(self.shape[0]), counts[long])
        self.flat = rows * self.shape[1] + position_in_group(pool.users)[self.in_long]
        self.label = self.lay_out(hidden_rows(pool, data)[self.in_long], False)
        self.tie = self.lay_out(pool.ranks[self.in_long, 0].astype(np.int64) * data.n_items + pool.items[self.in_long],
                                self.BIG)
        users = denominator[pool_users[long]]
        self.user_weight = np.where(users > 0, 1.0 / np.maximum(users, 1), 0.0)

    def lay_out(self, values: np.ndarray, fill) -> np.ndarray:
        out = np.full(self.shape[0] * self.shape[1], fill, dtype=np.asarray(values).dtype)
        out[self.flat] = values
        return out.reshape(self.shape)

    def recall(self, fused: np.ndarray) -> float:
        """Recall@k of the order `fused` (one value per pool row, higher is better)."""
        values = self.lay_out(fused[self.in_long], -np.inf)
        width, k = self.shape[1], self.k
        kth = np.partition(values, width - k, axis=1)[:, width - k, None]
        chosen = values > kth
        tied = values == kth
        need = k - chosen.sum(1)
        # where more items tie at the k-th value than places are left, the lowest tie keys win
        crowded = np.flatnonzero(tied.sum(1) > need)
        plain = np.ones(self.shape[0], bool)
        plain[crowded] = False
        chosen[plain] |= tied[plain]
        if len(crowded):
            keys = np.where(tied[crowded], self.tie[crowded], self.BIG)
            cut = np.take_along_axis(np.sort(keys, axis=1), (need[crowded] - 1)[:, None], axis=1)
            chosen[crowded] |= keys <= cut
        return (self.fixed_hits + float(((self.label & chosen).sum(1) * self.user_weight).sum())) / self.n_eval


class ScoreBlend(torch.nn.Module):
    """The full-score blend as a model the ranking engine ranks: score = sum over members of
    w * (the member's scores standardised per user by its `head` best unseen items)."""

    def __init__(self, models: list, weights: np.ndarray, head: int | None):
        super().__init__()
        self.members = torch.nn.ModuleList(models)
        self.weights = [float(w) for w in weights]
        self.head = head

    def score(self, batch: UserBatch) -> torch.Tensor:
        return sum(w * standardised(m.score(batch).float(), batch, self.head)
                   for m, w in zip(self.members, self.weights) if w > 0)


def rows_dtype(n_members: int, n_users: int, n_items: int, free: int | None) -> torch.dtype:
    """float32 for the search's rows where they take at most half the memory available; float16
    (half the bytes, each search trial slower: RESULTS#full-score-memory) where that fits in 90% of
    it; otherwise one line saying what it would take and what helps."""
    need = n_members * n_users * n_items * 4
    if free is None or need <= free / 2:
        return torch.float32
    gb = f"{n_members} members x {n_users:,} validation users x {n_items:,} items"
    if need / 2 > free * 0.9:
        raise ConfigError("full_scores", f"the weight search holds every validation user's full rows: {gb} take "
                          f"{need / 2 / 2**30:.1f} GB even in float16, {free / 2**30:.1f} GB available: fewer members, "
                          f"weights given (search.method=null), or the candidate blend (full_scores=false)")
    log.warning("full-score search: %s take %.1f GB in float32, %.1f GB available: kept in float16 (%.1f GB)",
                gb, need / 2**30, free / 2**30, need / 2 / 2**30)
    return torch.float16


class FullScoreRows:
    """Each member's full score rows of `users` (validation users), standardised per user as the
    blend does (`head`), computed once: what a full-score weight search and its guard read. Kept
    in float16 where float32 would not fit (`rows_dtype`); blended in float32 either way."""

    def __init__(self, models: list, data: PreparedData, users: np.ndarray, chunk: int, head: int | None):
        self.data, self.users = data, users
        dtype = rows_dtype(len(models), len(users), data.n_items, available_memory())
        self.rows = []
        with torch.no_grad():
            for m in models:  # filled chunk by chunk: no second copy of a member's rows, as a cat would hold
                rows = torch.empty(len(users), data.n_items, dtype=dtype)
                for s in range(0, len(users), chunk):
                    b = data.user_batch(users[s : s + chunk])
                    rows[s : s + chunk] = standardised(m.score(b).float(), b, head)
                self.rows.append(rows)

    def top(self, w: np.ndarray, rows: np.ndarray, k: int, batch: UserBatch | None = None) -> np.ndarray:
        """[len(rows), k] items of the blend with weights `w` for the users at `rows` (`batch`: their
        histories, when the caller already has them)."""
        at = torch.from_numpy(np.asarray(rows, np.int64))
        total = torch.zeros(len(at), self.rows[0].shape[1])
        for x, p in zip(w, self.rows):
            if x > 0:  # index_select + add_: no weighted copy per member (each search trial reads every row)
                total.add_(p.index_select(0, at), alpha=float(x))
        _, items = topk_unseen(total, batch if batch is not None else self.data.user_batch(self.users[rows]), k)
        return items.numpy()

    def objective(self, rows: np.ndarray, k: int) -> Callable[[np.ndarray], float]:
        """Recall@k, on the holdout of the users at `rows`, of the blend with weights w."""
        users = self.users[rows]
        holdout = self.data.holdout.of_users(users)
        batch = self.data.user_batch(users)  # once, not per trial

        def recall(w: np.ndarray) -> float:
            return evaluate(self.top(w, rows, k, batch), users, holdout, self.data.n_users, k)[f"recall_at_{k}"]

        return recall
