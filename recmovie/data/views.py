"""Views of the prepared data that models train on; a model names its view (`Recommender.view`).

Each view is one function returning a torch DataLoader; adding a view is adding a function to
VIEWS. Batches are built from the prepared arrays, never materialised for a whole epoch.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from recmovie.data.prepare import PreparedData


class _UserRows(torch.utils.data.Dataset):
    """Indexed by a list of positions: returns the UserBatch of those users (CSR rows)."""

    def __init__(self, data: PreparedData, users: np.ndarray):
        self.data = data
        self.users = users

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, positions):
        return self.data.user_batch(self.users[np.asarray(positions)])


class _Passes(torch.utils.data.Sampler):
    """Several whole passes over the data in one loader epoch, each shuffled anew; no batch straddles
    two passes (RecVAE alternates encoder and decoder updates pass by pass)."""

    def __init__(self, batches: BatchSampler, passes: int):
        self.batches, self.passes = batches, passes

    def __iter__(self):
        for _ in range(self.passes):
            yield from self.batches

    def __len__(self) -> int:
        return self.passes * len(self.batches)


def _batches(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int, passes: int = 1) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    base = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
    sampler = BatchSampler(base, batch_size, drop_last=False)
    return DataLoader(dataset, sampler=_Passes(sampler, passes) if passes > 1 else sampler, batch_size=None,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


def user_vectors(data: PreparedData, batch_size: int, seed: int = 0, num_workers: int = 0,
                 shuffle: bool = True, passes: int = 1) -> DataLoader:
    """Batches of users with at least one training interaction, as sparse rows (autoencoders);
    `passes` > 1 puts that many shuffled passes over the users into one epoch."""
    users = np.flatnonzero(np.diff(data.train_matrix.indptr) > 0)
    return _batches(_UserRows(data, users), batch_size, shuffle, seed, num_workers, passes)


def evaluation_users(data: PreparedData, chunk_size: int) -> DataLoader:
    """Chunks of the users that have hidden interactions, in order (validation through the ranking engine)."""
    users = np.unique(data.holdout.user).astype(np.int64)
    return _batches(_UserRows(data, users), chunk_size, False, 0, 0)


VIEWS: dict[str, Callable[..., DataLoader]] = {
    "user_vectors": user_vectors,
}
