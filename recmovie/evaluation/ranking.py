"""The one ranking engine: score users in chunks, mask what they have seen, keep the top N."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recmovie.data.prepare import PreparedData, UserBatch


@dataclass
class TopK:
    """Ranked lists: row r holds user `users[r]`'s items, best first (dense ids)."""

    users: np.ndarray  # int64 [n]
    items: np.ndarray  # int64 [n, N]
    scores: np.ndarray  # float32 [n, N]


def topk_unseen(scores: torch.Tensor, batch: UserBatch, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row after masking the batch's training items to -inf.

    Equal scores are ordered by item id, also at the k-th place, so the result is the same for any
    chunking of the users.
    """
    scores = scores.detach().float()
    scores[batch.row_ids().to(scores.device), batch.indices.to(scores.device)] = -torch.inf
    k = min(k, scores.shape[1])
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
