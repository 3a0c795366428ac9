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


def _batches(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    base = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, sampler=BatchSampler(base, batch_size, drop_last=False), batch_size=None,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


def user_vectors(data: PreparedData, batch_size: int, seed: int = 0, num_workers: int = 0,
                 shuffle: bool = True) -> DataLoader:
    """Batches of users with at least one training interaction, as sparse rows (autoencoders)."""
    users = np.flatnonzero(np.diff(data.train_matrix.indptr) > 0)
    return _batches(_UserRows(data, users), batch_size, shuffle, seed, num_workers)


def evaluation_users(data: PreparedData, chunk_size: int) -> DataLoader:
    """Chunks of the users that have hidden interactions, in order (validation through the ranking engine)."""
    users = np.unique(data.holdout.user).astype(np.int64)
    return _batches(_UserRows(data, users), chunk_size, False, 0, 0)


VIEWS: dict[str, Callable[..., DataLoader]] = {
    "user_vectors": user_vectors,
}
