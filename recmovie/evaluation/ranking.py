"""The one ranking engine: score users in chunks, mask what they have seen, keep the top N.

It ranks either the whole catalogue (`model.score`) or a candidate set per user
(`model.score_items`, e.g. another run's top-N for re-ranking). Both paths keep one total order
(score descending, equal scores by item id, also at the N-th place), so a user's list does not
depend on the chunk it was scored in, and ranking every item as a candidate gives the full path's
lists exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange

from recmovie.data.batches import UserBatch
from recmovie.data.prepare import PreparedData
from recmovie.errors import ConfigError


@dataclass
class TopK:
    """Ranked lists: row r holds user `users[r]`'s items, best first (dense ids)."""

    users: np.ndarray  # int64 [n]
    items: np.ndarray  # int64 [n, N]
    scores: np.ndarray  # float32 [n, N]


def topk_unseen(scores: torch.Tensor, batch: UserBatch, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row after masking the batch's training items to -inf, best first.

    The order is total: score descending, equal scores by item id, also at the k-th place, so the
    result is the same for any chunking of the users. CPU scores go through one fused numba pass
    (mask + heap selection); other devices use torch.topk. Both give identical results. `scores`
    may be overwritten where the batch's training items are: pass a tensor the caller can lose.
    """
    scores = scores.detach().float()
    k = min(k, scores.shape[1])
    if scores.device.type == "cpu":
        items = np.empty((scores.shape[0], k), np.int64)
        values = np.empty((scores.shape[0], k), np.float32)
        if _select_unseen(scores.contiguous().numpy(), batch.indptr.numpy(), batch.indices.numpy(), k, items, values):
            raise FloatingPointError("the model produced NaN scores")
        return torch.from_numpy(values), torch.from_numpy(items)
    return _torch_topk_unseen(scores, batch, k)


@njit(inline="always")
def _worse(va, ia, vb, ib):  # pragma: no cover - numba
    return va < vb or (va == vb and ia > ib)


@njit(inline="always")
def _sift_down(vals, items, pos, size):  # pragma: no cover - numba
    v, i = vals[pos], items[pos]
    while True:
        c = 2 * pos + 1
        if c >= size:
            break
        if c + 1 < size and _worse(vals[c + 1], items[c + 1], vals[c], items[c]):
            c += 1
        if not _worse(vals[c], items[c], v, i):
            break
        vals[pos], items[pos] = vals[c], items[c]
        pos = c
    vals[pos], items[pos] = v, i


@njit(parallel=True, cache=True, nogil=True)
def _select_unseen(scores, indptr, indices, k, out_items, out_values):  # pragma: no cover - numba
    # per row: mask the seen items, keep a k-heap whose root is the worst kept entry (lowest
    # score, then highest id), then heap-sort it best first. Items arrive in id order, so an
    # item equal to the root comes after it and never displaces it: ties go to the lowest ids.
    n_rows, n = scores.shape
    has_nan = np.zeros(n_rows, np.bool_)
    for r in prange(n_rows):
        row, vals, items = scores[r], out_values[r], out_items[r]
        for p in range(indptr[r], indptr[r + 1]):
            row[indices[p]] = -np.inf
        for c in range(k):
            vals[c], items[c] = row[c], c
            has_nan[r] |= row[c] != row[c]
        for c in range(k // 2 - 1, -1, -1):
            _sift_down(vals, items, c, k)
        for j in range(k, n):
            v = row[j]
            if v > vals[0]:
                vals[0], items[0] = v, j
                _sift_down(vals, items, 0, k)
            elif v != v:
                has_nan[r] = True
        for end in range(k - 1, 0, -1):
            v, i = vals[0], items[0]
            vals[0], items[0] = vals[end], items[end]
            vals[end], items[end] = v, i
            _sift_down(vals, items, 0, end)
    return has_nan.any()


def _torch_topk_unseen(scores: torch.Tensor, batch: UserBatch, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    scores[batch.row_ids().to(scores.device), batch.indices.to(scores.device)] = -torch.inf
    kk = min(k + 1, scores.shape[1])
    values, items = torch.topk(scores, kk, dim=1, sorted=True)
    if torch.isnan(values).any():
        raise FloatingPointError("the model produced NaN scores")
    if kk > k:
        tied = torch.nonzero(values[:, k] == values[:, k - 1]).flatten()
        values, items = values[:, :k], items[:, :k]
        if len(tied):  # the k-th place is shared: take the lowest item ids among the tied ones
            values, items = values.clone(), items.clone()
            values[tied], items[tied] = _canonical_topk(scores[tied], values[tied, k - 1], k)
    by_item = torch.argsort(items, dim=1)
    values, items = values.gather(1, by_item), items.gather(1, by_item)
    by_score = torch.argsort(-values, dim=1, stable=True)
    return values.gather(1, by_score), items.gather(1, by_score)


def _canonical_topk(rows: torch.Tensor, threshold: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: every item above `threshold`, then the lowest-id items equal to it, k in all."""
    above = rows > threshold[:, None]
    at = rows == threshold[:, None]
    need = k - above.sum(1, keepdim=True)
    keep = above | (at & (at.cumsum(1) <= need))
    items = torch.nonzero(keep)[:, 1].view(len(rows), k)  # row-major: each row's k items in id order
    return rows.gather(1, items), items


def seen_mask(batch: UserBatch, items: np.ndarray) -> np.ndarray:
    """[B, C] bool: whether row r's item items[r, c] is in user r's training history."""
    rows = batch.row_ids().numpy()
    n = batch.n_items + 1  # one past the largest id, so -1 (no candidate) keys stay apart
    history = np.sort(rows * n + batch.indices.numpy())
    keys = np.arange(len(items))[:, None] * n + items
    at = np.minimum(np.searchsorted(history, keys), max(len(history) - 1, 0))
    return history[at] == keys if len(history) else np.zeros(items.shape, bool)


def topk_candidates(scores: torch.Tensor, items: np.ndarray, batch: UserBatch, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row's candidates (`items` [B, C] dense ids, -1 = no candidate) by `scores`
    [B, C], after masking seen items and empty slots to -inf: the full path's total order
    restricted to the candidates (score descending, equal scores by item id). Rows with fewer
    than k candidates end in item -1 with score -inf."""
    values = scores.detach().float().cpu().numpy().astype(np.float32, copy=True)
    if np.isnan(values).any():
        raise FloatingPointError("the model produced NaN scores")
    values[(items < 0) | seen_mask(batch, items)] = -np.inf
    tie = np.where(items < 0, np.iinfo(np.int64).max, items)  # empty slots after every real item
    order = np.lexsort((tie, -values), axis=1)[:, :k]
    top_items = np.take_along_axis(items, order, 1)
    top_values = np.take_along_axis(values, order, 1)
    if top_items.shape[1] < k:
        pad = k - top_items.shape[1]
        top_items = np.pad(top_items, ((0, 0), (0, pad)), constant_values=-1)
        top_values = np.pad(top_values, ((0, 0), (0, pad)), constant_values=-np.inf)
    return top_values, top_items


FILTERED = -3.0e38  # a filtered item's score: after every real score, before the seen items (-inf)


class ReleaseYearFilter:
    """Items released after the year of the user's last training interaction (plus `slack_years`)
    rank after every other unseen item: a film cannot have been watched before it came out (the
    competition's winning trick). Items without a known year are never filtered."""

    def __init__(self, data: PreparedData, slack_years: int = 0):
        years = data.dataset.item_years()
        self.item_year = torch.from_numpy(np.nan_to_num(years, nan=-np.inf).astype(np.float32))
        self.user_year = torch.from_numpy((data.user_last_year + slack_years).astype(np.float32))

    def apply(self, users: np.ndarray, scores: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """`scores` [B, n_items] (or [B, C] of `items`) with the filtered entries set to FILTERED."""
        year = self.item_year.to(scores.device)
        year = year[None, :] if items is None else year[items.clamp_min(0).to(scores.device)]
        late = year > self.user_year[torch.as_tensor(users)].to(scores.device)[:, None]
        return scores.masked_fill(late, FILTERED)


def release_year_filter(filter_cfg, data: PreparedData) -> ReleaseYearFilter | None:
    """The run's `filter` section as the item filter for ranking `data` (None: nothing filtered)."""
    f = filter_cfg or {}
    if not f.get("release_year", False):
        return None
    if "year" not in data.dataset.side:
        raise ConfigError("filter.release_year", "needs the items' release years (years.tsv in the data folder, or "
                          "years in MovieLens titles); this data has none")
    slack = f.get("slack_years", 0)
    if not isinstance(slack, int) or isinstance(slack, bool):
        raise ConfigError("filter.slack_years", f"must be an integer, got {slack!r}")
    return ReleaseYearFilter(data, slack)


@torch.no_grad()
def rank(model, data: PreparedData, k: int = 50, chunk_size: int = 4096, users: np.ndarray | None = None,
         candidates: np.ndarray | None = None, item_filter: ReleaseYearFilter | None = None) -> TopK:
    """Rank for `users` (default: every user), `chunk_size` users at a time: every item with
    `model.score`, or with `candidates` ([len(users), C] dense item ids per user, -1 = none) only
    those, with `model.score_items`; `item_filter` pushes the items it filters behind the others."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    users = np.arange(data.n_users) if users is None else np.asarray(users, dtype=np.int64)
    if candidates is not None:
        candidates = np.asarray(candidates, dtype=np.int64)
        if candidates.ndim != 2 or len(candidates) != len(users):
            raise ValueError(f"candidates must be [users, C] = [{len(users)}, C], got {candidates.shape}")
        if candidates.max(initial=-1) >= data.n_items or candidates.min(initial=0) < -1:
            raise ValueError(f"candidate ids must be dense item ids in [0, {data.n_items}) or -1 for none")
    was_training = model.training
    model.eval()
    k = min(k, data.n_items)
    items = np.empty((len(users), k), np.int64)
    scores = np.empty((len(users), k), np.float32)
    for s in range(0, len(users), chunk_size):
        batch = data.user_batch(users[s : s + chunk_size])
        chunk_users = users[s : s + len(batch)]
        if candidates is None:
            chunk_scores = model.score(batch)
            if item_filter is not None:
                chunk_scores = item_filter.apply(chunk_users, chunk_scores)
            v, i = topk_unseen(chunk_scores, batch, k)
            v, i = v.cpu().numpy(), i.cpu().numpy()
        else:
            chunk = candidates[s : s + len(batch)]
            chunk_scores = model.score_items(batch, torch.from_numpy(chunk))
            if item_filter is not None:
                chunk_scores = item_filter.apply(chunk_users, chunk_scores, torch.from_numpy(chunk))
            v, i = topk_candidates(chunk_scores, chunk, batch, k)
        items[s : s + len(batch)] = i
        scores[s : s + len(batch)] = v
    model.train(was_training)
    return TopK(users, items, scores)
