"""Views of the prepared data that models train on; a model names its view (`Recommender.view`).

Each view is one function returning a torch DataLoader; adding a view is adding a function to
VIEWS. Batches are built from the prepared arrays, never materialised for a whole epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler

from recmovie.data.prepare import PreparedData
from recmovie.errors import ConfigError


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


@dataclass
class PairBatch:
    """(user, positive item, sampled negative items) triples; weight = the positive's confidence."""

    users: torch.Tensor  # int64 [B]
    pos: torch.Tensor  # int64 [B]
    neg: torch.Tensor  # int64 [B, n_negatives]
    weight: torch.Tensor  # float32 [B]

    def __len__(self) -> int:
        return len(self.users)

    def to(self, device) -> "PairBatch":
        return PairBatch(self.users.to(device), self.pos.to(device), self.neg.to(device), self.weight.to(device))


SAMPLINGS = ("uniform", "popularity")


class PairSampler:
    """Draws training pairs on the fly: positives uniformly from the training rows, negatives
    uniformly over items or in proportion to item popularity, redrawn where they hit one of the
    user's positives (membership looked up in the sorted user * n_items + item keys)."""

    def __init__(self, data: PreparedData, n_negatives: int = 1, sampling: str = "uniform"):
        if sampling not in SAMPLINGS:
            raise ConfigError("model.sampling", f"must be one of {list(SAMPLINGS)}, got {sampling!r}")
        if n_negatives < 1:
            raise ConfigError("model.n_negatives", f"must be >= 1, got {n_negatives}")
        self.n_items = data.n_items
        self.n_negatives = n_negatives
        self.sampling = sampling
        user = data.train_user.astype(np.int64)
        item = data.train_item.astype(np.int64)
        self.keys = np.sort(user * self.n_items + item)  # (user, item) pairs are unique in a Dataset
        # a user who holds every item the negatives can come from has no negative: not sampled
        if sampling == "uniform":
            mass = np.ones(self.n_items)
        else:
            mass = np.bincount(item, minlength=self.n_items).astype(np.float64)
        distinct_user, distinct_item = np.divmod(self.keys, self.n_items)
        held = np.bincount(distinct_user, weights=mass[distinct_item], minlength=data.n_users)
        rows = np.flatnonzero(held[user] < mass.sum() - 0.5)
        self.user, self.item = user[rows], item[rows]
        self.weight = data.weight[rows].astype(np.float32)
        self._pop_items = item  # one row per interaction: a uniform row is a popularity draw

    def __len__(self) -> int:
        """Training rows that can be drawn as positives."""
        return len(self.user)

    def _draw(self, rng: np.random.Generator, size) -> np.ndarray:
        if self.sampling == "uniform":
            return rng.integers(0, self.n_items, size=size)
        return self._pop_items[rng.integers(0, len(self._pop_items), size=size)]

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        shape, keys = keys.shape, keys.ravel()
        order = np.argsort(keys)  # sorted lookups walk the table in order: ~2.5x faster than random ones
        at = np.empty(len(keys), np.int64)
        at[order] = np.searchsorted(self.keys, keys[order])
        np.minimum(at, len(self.keys) - 1, out=at)
        return (self.keys[at] == keys).reshape(shape)

    def sample(self, rng: np.random.Generator, size: int) -> PairBatch:
        rows = rng.integers(0, len(self.user), size=size)
        users = self.user[rows]
        neg = self._draw(rng, (size, self.n_negatives))
        hit = self.is_positive(users[:, None], neg)
        while hit.any():  # terminates: every sampled user has at least one possible negative
            neg[hit] = self._draw(rng, int(hit.sum()))
            hit[hit] = self.is_positive(np.broadcast_to(users[:, None], hit.shape)[hit], neg[hit])
        return PairBatch(torch.from_numpy(users), torch.from_numpy(self.item[rows]), torch.from_numpy(neg),
                         torch.from_numpy(self.weight[rows]))


class _PairStream(IterableDataset):
    """One epoch = as many pairs as training rows, in batches drawn on the fly (never materialised).
    Each epoch and each loader worker gets its own seeded stream."""

    def __init__(self, sampler: PairSampler, batch_size: int, seed: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.steps = max(1, -(-len(sampler) // batch_size))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        rng = np.random.default_rng([self.seed, self.epoch, worker])
        self.epoch += 1  # each (persistent) worker holds its own copy and counts the same epochs
        for _ in range(worker, self.steps, n_workers):
            yield self.sampler.sample(rng, self.batch_size)


def pairs(data: PreparedData, batch_size: int, seed: int = 0, num_workers: int = 0, n_negatives: int = 1,
          sampling: str = "uniform") -> DataLoader:
    """Batches of (user, positive, negatives) for pairwise losses (BPR-MF)."""
    stream = _PairStream(PairSampler(data, n_negatives, sampling), batch_size, seed)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)


VIEWS: dict[str, Callable[..., DataLoader]] = {
    "user_vectors": user_vectors,
    "pairs": pairs,
}
