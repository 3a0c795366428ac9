"""The candidate pool: every (user, item) pair some member listed, each member's rank and
normalised score of it; and the per-user ranked lists made from one value per pool row."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from recmovie.data.batches import UserBatch
from recmovie.data.prepare import PreparedData
from recmovie.evaluation.ranking import TopK


@dataclass
class Pool:
    """Every (user, item) pair some member listed, with each member's rank and normalised score."""

    users: np.ndarray  # int64 [rows], dense, sorted by user then item
    items: np.ndarray  # int64 [rows], dense
    ranks: np.ndarray  # float64 [rows, members]; top_n + 1 where the member did not list the item
    scores: np.ndarray  # float64 [rows, members]; min-max per user over the member's list, 0 unlisted
    top_n: int

    def subset(self, users: np.ndarray) -> Pool:
        """The rows of `users` only."""
        rows = np.isin(self.users, users)
        return Pool(self.users[rows], self.items[rows], self.ranks[rows], self.scores[rows], self.top_n)


def hidden_rows(pool: Pool, data: PreparedData, part: int | None = None) -> np.ndarray:
    """Whether each pool row's (user, item) is in `data`'s holdout (only its `part`, a part code, if given)."""
    hidden = data.holdout
    known = (hidden.item >= 0) & (True if part is None else hidden.part == part)
    key = hidden.user[known].astype(np.int64) * data.n_items + hidden.item[known].astype(np.int64)
    return np.isin(pool.users.astype(np.int64) * data.n_items + pool.items, key)


def group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted array."""
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if len(sorted_keys) else sorted_keys


def position_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    starts = group_starts(sorted_keys)
    sizes = np.diff(np.r_[starts, len(sorted_keys)])
    return np.arange(len(sorted_keys)) - np.repeat(starts, sizes)


def min_max_per_user(users: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Scores scaled to [0, 1] over each user's rows (`users` sorted); a user whose scores are all
    equal gets 1: members' raw scores differ in scale per model and per user."""
    if not len(users):
        return scores
    starts = group_starts(users)
    sizes = np.diff(np.r_[starts, len(users)])
    lo = np.repeat(np.minimum.reduceat(scores, starts), sizes)
    span = np.repeat(np.maximum.reduceat(scores, starts), sizes) - lo
    return np.where(span > 0, (scores - lo) / np.where(span > 0, span, 1.0), 1.0)


def build_pool(lists: list[pd.DataFrame], n_items: int, top_n: int) -> Pool:
    """The pool of members' candidate lists (recmovie.candidates.read_candidates, in member order)."""
    keys = [df["user"].to_numpy(np.int64) * n_items + df["item"].to_numpy(np.int64) for df in lists]
    union = np.unique(np.concatenate(keys))
    ranks = np.full((len(union), len(lists)), float(top_n + 1))
    scores = np.zeros((len(union), len(lists)))
    for m, (df, key) in enumerate(zip(lists, keys)):
        pos = np.searchsorted(union, key)
        ranks[pos, m] = df["rank"].to_numpy()
        scores[pos, m] = min_max_per_user(df["user"].to_numpy(), df["score"].to_numpy(np.float64))
    return Pool(union // n_items, union % n_items, ranks, scores, top_n)


def ranked_lists(pool: Pool, fused: np.ndarray, data: PreparedData, depth: int, k: int) -> tuple[TopK, int]:
    """Every user's best `depth` pool items by `fused` (one value per row, higher is better; ties:
    the first member's rank, then item id); users with fewer than k are filled with the most
    popular unseen items. Returns the lists and how many users were filled. Unfilled places
    beyond a user's items hold item 0 with score -inf."""
    order = np.lexsort((pool.items, pool.ranks[:, 0], -fused, pool.users))
    users, items, values = pool.users[order], pool.items[order], fused[order]
    pos = position_in_group(users)
    keep = pos < depth
    top_items = np.zeros((data.n_users, depth), np.int64)
    top_scores = np.full((data.n_users, depth), -np.inf, np.float32)
    top_items[users[keep], pos[keep]] = items[keep]
    top_scores[users[keep], pos[keep]] = values[keep]
    counts = np.bincount(users[keep], minlength=data.n_users)
    short = np.flatnonzero(counts < k)
    if len(short):
        # only when members listed fewer than k items for a user (or none): popularity, then item id
        by_pop = np.lexsort((np.arange(data.n_items), -data.item_popularity))
        m = data.train_matrix
        for u in short:
            have = counts[u]
            taken = np.r_[m.indices[m.indptr[u]:m.indptr[u + 1]], top_items[u, :have]]
            extra = by_pop[~np.isin(by_pop, taken)][: k - have]
            floor = top_scores[u, have - 1] if have else 0.0
            top_items[u, have:have + len(extra)] = extra
            top_scores[u, have:have + len(extra)] = floor - 1.0 - np.arange(len(extra))
    return TopK(np.arange(data.n_users), top_items, top_scores), len(short)


def standardised(scores: torch.Tensor, batch: UserBatch, head: int | None = None) -> torch.Tensor:
    """Each row of full scores centred and scaled by the mean and spread of the user's `head` best
    unseen items' scores (None: of every unseen item); seen items set to 0, masked later. The
    full-score blend's scale-free member scores: scaled by its head, a member's scale is set by the
    items that compete for a place in the list, not by the thousands of its tail, whose spread
    differs from member to member and says nothing about the top."""
    seen = torch.zeros_like(scores, dtype=torch.bool)
    seen[batch.row_ids(), batch.indices] = True
    values = scores.masked_fill(seen, float("-inf"))
    if head is not None:
        values = values.topk(min(int(head), scores.shape[1]), dim=1).values
    keep = torch.isfinite(values)  # with a head: fewer than `head` unseen items leave -inf in it
    values = values.masked_fill(~keep, 0.0)
    n = keep.sum(1, keepdim=True).clamp_min(1)
    mean = values.sum(1, keepdim=True) / n
    std = (((values - mean) * keep) ** 2).sum(1, keepdim=True).div(n).sqrt().clamp_min(1e-12)
    return ((scores - mean) / std).masked_fill(seen, 0.0)
