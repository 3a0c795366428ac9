"""Views of the prepared data that models train on; a model names its view (`Recommender.view`).

Each view is one function returning a torch DataLoader of batches (recmovie/data/batches.py)
drawn by the samplers (recmovie/data/samplers.py); adding a view is adding a function to VIEWS.
Batches are built from the prepared arrays, never materialised for a whole epoch.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from recmovie.data.batches import SequenceBatch, UserBatch
from recmovie.data.prepare import PreparedData
from recmovie.data.samplers import PairSampler, PairStream, ShardedBatches
from recmovie.errors import ConfigError


class UserRows(torch.utils.data.Dataset):
    """Indexed by an array of positions: the UserBatch of those users (CSR rows)."""

    def __init__(self, data: PreparedData, users: np.ndarray):
        self.data = data
        self.users = users

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, positions):
        return self.data.user_batch(self.users[np.asarray(positions)])


def _loader(dataset, sampler, num_workers: int) -> DataLoader:
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                      persistent_workers=num_workers > 0)


def user_vectors(data: PreparedData, batch_size: int, seed: int = 0, num_workers: int = 0, shuffle: bool = True,
                 passes: int = 1, rank: int = 0, world: int = 1) -> DataLoader:
    """Batches of users with at least one training interaction, as sparse rows (autoencoders);
    `passes` > 1 puts that many shuffled passes over the users into one epoch."""
    users = np.flatnonzero(np.diff(data.train_matrix.indptr) > 0)
    sampler = ShardedBatches(len(users), batch_size, shuffle, seed, passes, rank, world)
    return _loader(UserRows(data, users), sampler, num_workers)


def evaluation_users(data: PreparedData, chunk_size: int, rank: int = 0, world: int = 1) -> DataLoader:
    """Chunks of the users that have hidden interactions, in order, each user in exactly one
    process's share (validation through the ranking engine; the shares are gathered after)."""
    users = np.unique(data.holdout.user).astype(np.int64)[rank::world]
    return _loader(UserRows(data, users), ShardedBatches(len(users), chunk_size, shuffle=False), 0)


def pairs(data: PreparedData, batch_size: int, seed: int = 0, num_workers: int = 0, n_negatives: int = 1,
          sampling: str = "uniform", rank: int = 0, world: int = 1) -> DataLoader:
    """Batches of (user, positive, negatives) for pairwise losses (BPR-MF)."""
    stream = PairStream(PairSampler(data, n_negatives, sampling), batch_size, seed, rank, world)
    return _loader(stream, None, num_workers)


def fields(data: PreparedData, batch_size: int, seed: int = 0, num_workers: int = 0, n_negatives: int = 1,
           sampling: str = "uniform", features: dict | None = None, schema=None, rank: int = 0,
           world: int = 1) -> DataLoader:
    """The pairs view's (user, positive, negatives) rows with their feature-field codes, for the
    context-aware models (FM, DeepFM, Wide&Deep); `features` = the model's feature set."""
    from recmovie.data.features import FeatureSet, FieldSampler
    from recmovie.schema import Schema

    sampler = FieldSampler(PairSampler(data, n_negatives, sampling), data, FeatureSet.from_config(features),
                           schema or Schema.from_data(data))
    return _loader(PairStream(sampler, batch_size, seed, rank, world), None, num_workers)


def left_padded(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor | None, max_len: int,
                pad_item: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CSR rows (each in time order, oldest first) -> [B, W] items padded on the LEFT with
    `pad_item`, newest last, and the same layout of `values` (0 on padding); W = the longest row,
    capped at `max_len` (each row keeps its newest `max_len` entries), at least 1. The one
    conversion from histories to sequences: the `sequences` view builds its training batches with
    it and sequence models turn the ranking engine's UserBatch into their input with it, so
    training and scoring see the same layout. Works on any device."""
    if max_len < 1:
        raise ConfigError("model.max_len", f"must be >= 1, got {max_len}")
    lengths = indptr[1:] - indptr[:-1]
    n_rows = len(lengths)
    width = int(min(max_len, int(lengths.max()) if n_rows else 0)) or 1
    items = torch.full((n_rows, width), pad_item, dtype=torch.int64, device=indices.device)
    weights = None if values is None else torch.zeros((n_rows, width), dtype=torch.float32, device=indices.device)
    if len(indices):
        rows = torch.repeat_interleave(torch.arange(n_rows, device=indptr.device), lengths)
        # column of each entry: its distance from the row's end, counted back from the last column
        col = width - (indptr[1:][rows] - torch.arange(len(indices), device=indptr.device))
        keep = col >= 0
        rows, col = rows[keep], col[keep]
        items[rows, col] = indices[keep]
        if weights is not None:
            weights[rows, col] = values[keep].float()
    return items, weights


def sequence_batch(batch: UserBatch, max_len: int, pad_item: int | None = None) -> SequenceBatch:
    """A UserBatch (CSR rows in time order) as a SequenceBatch of its newest `max_len` items."""
    pad = batch.n_items if pad_item is None else pad_item
    items, weights = left_padded(batch.indptr, batch.indices, batch.values, max_len, pad)
    return SequenceBatch(batch.users, items, weights, pad)


class SequenceRows(UserRows):
    """Indexed by an array of positions: those users' newest `max_len` training items, as a
    SequenceBatch gathered from the training matrix's CSR rows (kept in time order, ties by item id)."""

    def __init__(self, data: PreparedData, users: np.ndarray, max_len: int):
        super().__init__(data, users)
        self.max_len = max_len

    def __getitem__(self, positions):
        return sequence_batch(super().__getitem__(positions), self.max_len, self.data.n_items)


def sequences(data: PreparedData, batch_size: int, seed: int = 0, num_workers: int = 0, shuffle: bool = True,
              max_len: int = 50, min_length: int = 2, rank: int = 0, world: int = 1) -> DataLoader:
    """Batches of users' histories as left-padded item sequences, newest last, at most `max_len`
    long (the newest kept); users with fewer than `min_length` training items are left out (a
    next-item model learns nothing from one item). Sequence models (SASRec, GRU4Rec, BERT4Rec)
    build their targets from the batch: the next item at every position, or masked positions."""
    if max_len < 1:
        raise ConfigError("model.max_len", f"must be >= 1, got {max_len}")
    users = np.flatnonzero(np.diff(data.train_matrix.indptr) >= max(1, min_length))
    if not len(users):
        raise ConfigError("model", f"no user has {min_length} or more training interactions: a sequence model "
                          "has nothing to learn from")
    sampler = ShardedBatches(len(users), batch_size, shuffle, seed, 1, rank, world)
    return _loader(SequenceRows(data, users, max_len), sampler, num_workers)


VIEWS: dict[str, Callable[..., DataLoader]] = {
    "user_vectors": user_vectors,
    "pairs": pairs,
    "fields": fields,
    "sequences": sequences,
}
