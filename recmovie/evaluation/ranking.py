"""The one ranking engine: score users in chunks, mask what they have seen, keep the top N."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange

from recmovie.data.prepare import PreparedData, UserBatch


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


@torch.no_grad()
def rank(model, data: PreparedData, k: int = 50, chunk_size: int = 4096, users: np.ndarray | None = None) -> TopK:
    """Rank all items for `users` (default: every user) with `model.score`, `chunk_size` users at a time."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    users = np.arange(data.n_users) if users is None else np.asarray(users, dtype=np.int64)
    was_training = model.training
    model.eval()
    k = min(k, data.n_items)
    items = np.empty((len(users), k), np.int64)
    scores = np.empty((len(users), k), np.float32)
    for s in range(0, len(users), chunk_size):
        batch = data.user_batch(users[s : s + chunk_size])
        v, i = topk_unseen(model.score(batch), batch, k)
        items[s : s + len(batch)] = i.cpu().numpy()
        scores[s : s + len(batch)] = v.cpu().numpy()
    model.train(was_training)
    return TopK(users, items, scores)
