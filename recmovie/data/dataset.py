"""The one in-memory form every reader produces: interactions with dense ids, plus item side fields."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

# Side fields of the competition folder, by file name.
SIDE_FILES = {
    "title": "titles.tsv",
    "year": "years.tsv",
    "genre": "genres.tsv",
    "director": "directors.tsv",
    "writer": "writers.tsv",
    "attribute": "attributes.tsv",  # any categorical attribute (categories, brands, tags)
}
# S3-Rec's baseline file of the same field: {"<item id>": [<attribute id>, ...], ...}
ATTRIBUTES_JSON = "*item2attributes.json"


@dataclass
class SideField:
    """One multi-valued item attribute: rows of (dense item, value code), codes index `vocab`."""

    item: np.ndarray  # int32, dense item index per row
    value: np.ndarray  # int32, index into vocab per row
    vocab: np.ndarray  # str, one entry per distinct value

    def matrix(self, n_items: int) -> sp.csr_matrix:
        """Binary item x value matrix (an item may hold several values)."""
        m = sp.csr_matrix(
            (np.ones(len(self.item), np.float32), (self.item, self.value)),
            shape=(n_items, len(self.vocab)),
        )
        m.data[:] = 1.0
        return m


@dataclass
class Dataset:
    """Interactions sorted by (user, time, item); dense ids index `user_ids` / `item_ids` (raw ids)."""

    user: np.ndarray  # int32
    item: np.ndarray  # int32
    time: np.ndarray  # int64, unix seconds
    user_ids: np.ndarray  # int64, raw id of each dense user
    item_ids: np.ndarray  # int64, raw id of each dense item
    side: dict[str, SideField] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.user)

    def item_years(self) -> np.ndarray:
        """Release year per item as float (NaN where unknown)."""
        years = np.full(self.n_items, np.nan)
        f = self.side.get("year")
        if f is not None:
            vals = np.array([_to_float(v) for v in f.vocab])
            years[f.item] = vals[f.value]
        return years

    # -- (de)serialisation for the cache: plain arrays, no pickles
    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        out = {f"{prefix}{k}": getattr(self, k) for k in ("user", "item", "time", "user_ids", "item_ids")}
        for name, f in self.side.items():
            out[f"{prefix}side.{name}.item"] = f.item
            out[f"{prefix}side.{name}.value"] = f.value
            out[f"{prefix}side.{name}.vocab"] = f.vocab.astype(str)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "") -> "Dataset":
        side: dict[str, SideField] = {}
        for key in arrays:
            if key.startswith(f"{prefix}side.") and key.endswith(".item"):
                name = key[len(prefix) + 5 : -5]
                base = f"{prefix}side.{name}"
                side[name] = SideField(arrays[f"{base}.item"], arrays[f"{base}.value"], arrays[f"{base}.vocab"])
        return cls(
            user=arrays[f"{prefix}user"],
            item=arrays[f"{prefix}item"],
            time=arrays[f"{prefix}time"],
            user_ids=arrays[f"{prefix}user_ids"],
            item_ids=arrays[f"{prefix}item_ids"],
            side=side,
        )


def _to_float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return float("nan")


def build_dataset(
    users: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    side: dict[str, tuple[np.ndarray, np.ndarray, str]] | None = None,
    source: str = "interactions",
) -> Dataset:
    """Turn raw-id interactions into a Dataset.

    Duplicate (user, item) rows keep the latest (with a warning); `side` maps a field name to
    (raw item ids, string values, file name), and rows for items without interactions are dropped
    with a warning that names the file.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    times = np.asarray(times, dtype=np.int64)
    user_ids, u = _dense_ids(users)
    item_ids, i = _dense_ids(items)
    n_items = len(item_ids)

    pair = u.astype(np.int64) * n_items + i
    sorted_pair = np.sort(pair)
    if len(pair) > 1 and (sorted_pair[1:] == sorted_pair[:-1]).any():
        # keep the latest row of each (user, item): the last one after sorting by (pair, time)
        order = np.lexsort((times, pair))
        last = np.r_[pair[order][1:] != pair[order][:-1], True]
        keep = order[last]
        log.warning("%s: %d duplicate (user, item) row(s) collapsed to the latest one", source, len(pair) - len(keep))
        u, i, times = u[keep], i[keep], times[keep]
    order = _order_by_user_time_item(u, times, i, n_items)
    ds = Dataset(user=u[order], item=i[order], time=times[order], user_ids=user_ids, item_ids=item_ids)

    for name, (raw_items, values, path) in (side or {}).items():
        ds.side[name] = _side_field(ds.item_ids, np.asarray(raw_items, np.int64), np.asarray(values), path)
    return ds


def _dense_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct raw ids and the dense index (int32) of each value."""
    if len(raw) and raw.min() >= 0 and raw.max() < 4 * len(raw) + 1_000_000:
        present = np.zeros(int(raw.max()) + 1, dtype=bool)  # a bitmap beats sorting for compact ids
        present[raw] = True
        ids = np.flatnonzero(present).astype(np.int64)
        lookup = np.cumsum(present, dtype=np.int64) - 1
        return ids, lookup[raw].astype(np.int32)
    ids, inverse = np.unique(raw, return_inverse=True)
    return ids.astype(np.int64), inverse.astype(np.int32)


def _order_by_user_time_item(u: np.ndarray, t: np.ndarray, i: np.ndarray, n_items: int) -> np.ndarray:
    if len(t) == 0:
        return np.zeros(0, np.int64)
    t_rel = t - t.min()
    span = int(t_rel.max()) + 1
    if (int(u.max()) + 1) * span * n_items < 2**62:  # one composite int64 key sorts 3x faster than lexsort
        key = (u.astype(np.int64) * span + t_rel) * n_items + i
        return np.argsort(key, kind="stable")
    return np.lexsort((i, t, u))


def _side_field(item_ids: np.ndarray, raw_items: np.ndarray, values: np.ndarray, path: str) -> SideField:
    pos = np.searchsorted(item_ids, raw_items)
    pos_c = np.minimum(pos, len(item_ids) - 1)
    known = item_ids[pos_c] == raw_items
    if not known.all():
        unknown = np.unique(raw_items[~known])
        log.warning(
            "%s: %d row(s) for %d item(s) that have no interactions were dropped (e.g. item %s)",
            path, int((~known).sum()), len(unknown), ", ".join(map(str, unknown[:5])),
        )
    items = pos_c[known].astype(np.int32)
    vocab, codes = np.unique(values[known].astype(str), return_inverse=True)
    # a repeated (item, value) row says nothing new
    pairs = np.unique(np.stack([items, codes.astype(np.int32)], 1), axis=0) if len(items) else np.zeros((0, 2), np.int32)
    return SideField(item=pairs[:, 0].astype(np.int32), value=pairs[:, 1].astype(np.int32), vocab=vocab.astype(str))
