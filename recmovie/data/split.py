"""Holdout splits: which interactions a model trains on and which are hidden for scoring."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recmovie.data.dataset import Dataset
from recmovie.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PART_LAST, PART_RANDOM, PART_GIVEN = 0, 1, 2
PART_NAMES = {PART_LAST: "last", PART_RANDOM: "random", PART_GIVEN: "given"}


@dataclass
class Holdout:
    """Hidden interactions: dense user, dense item (-1 where the item is unknown), part code."""

    user: np.ndarray  # int32
    item: np.ndarray  # int32
    part: np.ndarray  # int8

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def empty(cls) -> "Holdout":
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int8))

    def of_users(self, users: np.ndarray) -> "Holdout":
        """The rows of `users` only."""
        keep = np.isin(self.user, users)
        return Holdout(self.user[keep], self.item[keep], self.part[keep])

    def of_items(self, new_id: np.ndarray) -> "Holdout":
        """The rows whose item `new_id` (one entry per old dense item) maps to >= 0, renumbered."""
        mapped = np.where(self.item >= 0, new_id[np.maximum(self.item, 0)], -1)
        keep = mapped >= 0
        return Holdout(self.user[keep], mapped[keep].astype(np.int32), self.part[keep])


def split_none(ds: Dataset) -> tuple[np.ndarray, Holdout]:
    """Train on everything (for a final submission)."""
    return np.ones(len(ds), dtype=bool), Holdout.empty()


def hidden_sizes(n: np.ndarray, n_last: int, n_random: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user: how many of the last and how many random interactions to hide.

    A user keeps at least half of the history: h = min(n_last + n_random, n // 2), shared between
    the two parts in the configured proportion (half rounded up to `last`, at least one last item).
    """
    total = n_last + n_random
    h = np.minimum(total, n // 2)
    if total == 0:
        return np.zeros_like(n), np.zeros_like(n)
    last = np.floor(h * n_last / total + 0.5).astype(n.dtype)
    if n_last > 0:
        last = np.where(h >= 1, np.maximum(last, 1), 0)
    return last, h - last


def split_competition(ds: Dataset, n_last: int = 2, n_random: int = 8, seed: int = 42) -> tuple[np.ndarray, Holdout]:
    """Per user, hide the last `n_last` interactions in time plus `n_random` drawn from the rest.

    Rows are in (user, time, item) order, so "last" breaks timestamp ties by item id.
    Returns a train mask over the dataset's rows and the hidden part (tagged last / random).
    """
    if n_last < 0 or n_random < 0:
        raise ConfigError("split.n_last/n_random", "must be >= 0")
    n_rows = len(ds)
    counts = np.bincount(ds.user, minlength=ds.n_users)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    pos = np.arange(n_rows) - np.repeat(starts, counts)  # position of each row in its user's history
    n_u = counts[ds.user]
    last_k, rand_k = hidden_sizes(counts, n_last, n_random)
    is_last = pos >= n_u - last_k[ds.user]

    # random part: among each user's earlier rows, the `rand_k` with the smallest random keys
    rng = np.random.default_rng(seed)
    key = rng.random(n_rows)
    key[is_last] = 2.0  # never drawn
    order = np.lexsort((key, ds.user))
    rank = np.empty(n_rows, np.int64)
    rank[order] = np.arange(n_rows) - np.repeat(starts, counts)
    is_random = (rank < rand_k[ds.user]) & ~is_last

    hidden = is_last | is_random
    rows = np.flatnonzero(hidden)
    part = np.where(is_last[rows], PART_LAST, PART_RANDOM).astype(np.int8)
    return ~hidden, Holdout(ds.user[rows].copy(), ds.item[rows].copy(), part)


def split_given(ds: Dataset, path: str | Path) -> tuple[np.ndarray, Holdout]:
    """Hidden rows read from a CSV `user,item` (optional `part`: last/random); they leave training."""
    from recmovie.data.readers import read_table

    path = Path(path)
    t = read_table(path, {"user": "int", "item": "int"})
    u_pos = np.searchsorted(ds.user_ids, t["user"])
    u_known = (u_pos < ds.n_users) & (ds.user_ids[np.minimum(u_pos, ds.n_users - 1)] == t["user"])
    if not u_known.all():
        bad = int(np.flatnonzero(~u_known)[0])
        raise DataError(path, f"user {t['user'][bad]} is not in the interaction data", line=bad + 2)
    i_pos = np.searchsorted(ds.item_ids, t["item"])
    i_known = (i_pos < ds.n_items) & (ds.item_ids[np.minimum(i_pos, ds.n_items - 1)] == t["item"])
    if not i_known.all():
        log.warning("%s: %d hidden row(s) name items that have no interactions (they can never be hits)",
                    path, int((~i_known).sum()))
    user = u_pos.astype(np.int32)
    item = np.where(i_known, i_pos, -1).astype(np.int32)
    pair = np.unique(user.astype(np.int64) * ds.n_items + item)
    row_pair = ds.user.astype(np.int64) * ds.n_items + ds.item
    train = ~np.isin(row_pair, pair)
    try:
        parts = read_table(path, {"part": "str"})["part"]
        code = np.array([{"last": PART_LAST, "random": PART_RANDOM}.get(p, PART_GIVEN) for p in parts], np.int8)
    except DataError:
        code = np.full(len(user), PART_GIVEN, np.int8)
    keep = np.unique(user.astype(np.int64) * ds.n_items + item, return_index=True)[1]
    return train, Holdout(user[keep], item[keep], code[keep])


def make_split(ds: Dataset, cfg) -> tuple[np.ndarray, Holdout]:
    """Dispatch on the `split` config group."""
    name = cfg.name
    if name == "none":
        return split_none(ds)
    if name == "competition":
        return split_competition(ds, int(cfg.n_last), int(cfg.n_random), int(cfg.seed))
    if name == "given":
        if not cfg.get("path"):
            raise ConfigError("split.path", "split=given needs the CSV of hidden rows: split.path=/path/hidden.csv")
        return split_given(ds, cfg.path)
    raise ConfigError("split.name", f"unknown split {name!r} (expected competition, none or given)")
