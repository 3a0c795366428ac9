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

from recmovie.data.prepare import PreparedData
from recmovie.data.samplers import PairSampler, PairStream, ShardedBatches


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
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)


VIEWS: dict[str, Callable[..., DataLoader]] = {
    "user_vectors": user_vectors,
    "pairs": pairs,
}
