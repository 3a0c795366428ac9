"""From the `data`, `split`, `validation` and `confidence` configs to the arrays every model trains on (cached).

Three parts of the interactions: the TEST part (`split`: hidden, only ever scored), the
VALIDATION part (`validation`: carved from the rest by the same kind of protocol; what early
stopping, sweeps and ensemble weight searches select on) and the FIT part (the rest).
`PreparedData` itself is (training part = fit + validation, holdout = test); `fit_part()` is
(fit part, holdout = validation).
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recmovie.data.batches import UserBatch
from recmovie.data.cache import cache_key, load_arrays, save_arrays
from recmovie.data.confidence import confidence_weights
from recmovie.data.dataset import Dataset, SideField
from recmovie.data.split import PART_NAMES, Holdout, make_split
from recmovie.errors import ConfigError

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

FORMATS = ("competition", "movielens", "synthetic")
SYNTHETIC_KEYS = ("n_users", "n_items", "n_interactions", "seed")


@dataclass
class PreparedData:
    """A dataset, its train/hidden split and the training rows' confidence weights."""

    dataset: Dataset
    train_mask: np.ndarray  # bool per dataset row
    weight: np.ndarray  # float32 per training row
    holdout: Holdout
    fingerprint: str  # content hash of the input data
    info: dict = field(default_factory=dict)
    val_mask: np.ndarray | None = None  # bool per dataset row: training rows carved out for validation
    validation: Holdout = field(default_factory=Holdout.empty)

    def fit_part(self) -> "PreparedData":
        """The training part minus the validation part, with the validation part as its holdout
        (itself when nothing is carved out)."""
        if self.val_mask is None or not self.val_mask.any():
            return self
        keep = ~self.val_mask[self.train_mask]  # per training row
        return PreparedData(self.dataset, self.train_mask & ~self.val_mask, self.weight[keep], self.validation,
                            self.fingerprint, self.info)

    def of_items(self, items: np.ndarray) -> "PreparedData":
        """Every user with only `items` (dense ids), renumbered 0..len(items)-1 in their order: their
        rows, weights, side values and hidden rows. A smaller problem of the same kind, on which
        `tune` searches a grid whose every point costs items^3 (EASE's inverse)."""
        ds = self.dataset
        new_id = np.full(ds.n_items, -1, np.int64)
        new_id[items] = np.arange(len(items))
        rows = new_id[ds.item] >= 0
        side = {}
        for name, f in ds.side.items():
            kept = new_id[f.item] >= 0
            side[name] = SideField(new_id[f.item[kept]].astype(np.int32), f.value[kept], f.vocab)
        sub = Dataset(ds.user[rows], new_id[ds.item[rows]].astype(np.int32), ds.time[rows], ds.user_ids,
                      ds.item_ids[items], side)
        return PreparedData(sub, self.train_mask[rows], self.weight[rows[self.train_mask]],
                            self.holdout.of_items(new_id), f"{self.fingerprint}-items-{len(items)}", self.info,
                            None if self.val_mask is None else self.val_mask[rows], self.validation.of_items(new_id))

    @property
    def n_users(self) -> int:
        return self.dataset.n_users

    @property
    def n_items(self) -> int:
        return self.dataset.n_items

    @cached_property
    def train_user(self) -> np.ndarray:
        return self.dataset.user[self.train_mask]

    @cached_property
    def train_item(self) -> np.ndarray:
        return self.dataset.item[self.train_mask]

    @cached_property
    def train_time(self) -> np.ndarray:
        return self.dataset.time[self.train_mask]

    @cached_property
    def train_matrix(self) -> sp.csr_matrix:
        """users x items, values = confidence weights; rows keep the (time) order of the data."""
        counts = np.bincount(self.train_user, minlength=self.n_users)
        indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
        return sp.csr_matrix((self.weight, self.train_item.astype(np.int32), indptr), shape=(self.n_users, self.n_items))

    @cached_property
    def item_popularity(self) -> np.ndarray:
        """Training interactions per item."""
        return np.bincount(self.train_item, minlength=self.n_items).astype(np.float64)

    @cached_property
    def user_last_time(self) -> np.ndarray:
        """Time of each user's newest training interaction (the data's newest where the user has none)."""
        last = np.full(self.n_users, np.iinfo(np.int64).min, np.int64)
        np.maximum.at(last, self.train_user, self.train_time.astype(np.int64))
        return np.where(last == np.iinfo(np.int64).min, self.train_time.max(initial=0), last)

    @property
    def user_last_year(self) -> np.ndarray:
        """Calendar year (float, floored) of each user's newest training interaction."""
        return np.floor(1970 + self.user_last_time / (365.2425 * 86400))

    def side_matrix(self, name: str) -> sp.csr_matrix | None:
        f = self.dataset.side.get(name)
        return None if f is None else f.matrix(self.n_items)

    def user_batch(self, users: np.ndarray) -> UserBatch:
        users = np.asarray(users, dtype=np.int64)
        m = self.train_matrix
        starts, ends = m.indptr[users], m.indptr[users + 1]
        lengths = ends - starts
        indptr = np.r_[0, np.cumsum(lengths)]
        # gather the rows' slices in one vectorised step
        offsets = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return UserBatch(
            users=torch.from_numpy(users),
            indptr=torch.from_numpy(indptr.astype(np.int64)),
            indices=torch.from_numpy(m.indices[offsets].astype(np.int64)),
            values=torch.from_numpy(m.data[offsets].astype(np.float32)),
            n_items=self.n_items,
        )

    def summary(self) -> dict:
        parts = {PART_NAMES[p]: int((self.holdout.part == p).sum()) for p in np.unique(self.holdout.part)}
        return {
            "users": self.n_users, "items": self.n_items, "interactions": len(self.dataset),
            "train": int(self.train_mask.sum()), "validation": len(self.validation),
            "test": len(self.holdout), "test_parts": parts,
        }


# ------------------------------------------------------------------ reading + caching
def sample_dir() -> Path:
    """The bundled ml-latest-small sample, in competition format."""
    return Path(__file__).resolve().parent.parent / "sample_data" / "ml-latest-small"


def _reader_config(data_cfg) -> dict:
    fmt = data_cfg.get("format")
    if fmt not in FORMATS:
        raise ConfigError("data.format", f"unknown format {fmt!r}; choose from {list(FORMATS)}")
    if fmt == "synthetic":
        return {"format": fmt, **{k: int(data_cfg[k]) for k in SYNTHETIC_KEYS}}
    if fmt == "movielens":
        return {"format": fmt, "min_rating": data_cfg.get("min_rating")}
    return {"format": fmt}


def check_data_config(data_cfg) -> None:
    """Fail fast on wrong values, before anything is read."""
    rc = _reader_config(data_cfg)
    if rc["format"] == "synthetic":
        for k in SYNTHETIC_KEYS[:3]:
            if rc[k] < 2:
                raise ConfigError(f"data.{k}", f"must be >= 2, got {rc[k]}")
        if rc["n_interactions"] < rc["n_users"]:
            raise ConfigError("data.n_interactions", "must be >= data.n_users")
    else:
        d = data_cfg.get("dir")
        if d in (None, "", "???"):
            raise ConfigError("data.dir", f"data={data_cfg.get('name')} needs the folder: data.dir=/path/to/folder")
        if not Path(d).is_dir():
            raise ConfigError("data.dir", f"folder not found: {d}")


def _fingerprint(data_cfg, reader_cfg: dict) -> str:
    from recmovie.data.readers import files_fingerprint, input_files

    if reader_cfg["format"] == "synthetic":
        return "synthetic-" + cache_key(reader_cfg)
    return files_fingerprint(input_files(reader_cfg["format"], data_cfg.dir))


def _read(data_cfg, reader_cfg: dict) -> Dataset:
    from recmovie.data import readers

    fmt = reader_cfg["format"]
    if fmt == "synthetic":
        from recmovie.data.synthetic import generate_synthetic

        return generate_synthetic(**{k: reader_cfg[k] for k in SYNTHETIC_KEYS})
    if fmt == "movielens":
        return readers.read_movielens(data_cfg.dir, min_rating=reader_cfg["min_rating"])
    return readers.read_competition(data_cfg.dir)


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)


def carve_validation(ds: Dataset, train_mask: np.ndarray, validation_cfg) -> tuple[np.ndarray, Holdout]:
    """The validation part: `validation_cfg` (a split config) applied to the training rows alone.
    Returns a mask over the dataset's rows and the part as a Holdout."""
    rows = np.flatnonzero(train_mask)
    if validation_cfg is None or validation_cfg.get("name") == "none" or not len(rows):
        return np.zeros(len(ds), bool), Holdout.empty()
    # training rows keep the (user, time, item) order, so they form a Dataset of their own
    part = Dataset(ds.user[rows], ds.item[rows], ds.time[rows], ds.user_ids, ds.item_ids, ds.side)
    keep, holdout = make_split(part, validation_cfg)
    val_mask = np.zeros(len(ds), bool)
    val_mask[rows[~keep]] = True
    return val_mask, holdout


DATASET_KEYS = ("user", "item", "time", "user_ids", "item_ids")
PREPARED_KEYS = ("train_mask", "weight", "hidden_user", "hidden_item", "hidden_part", "val_mask", "val_user",
                 "val_item", "val_part")


def _cached_dataset(arrays: dict | None, cache_dir, key: str) -> Dataset | None:
    if arrays is None:
        return None
    try:
        ds = Dataset.from_arrays(arrays)
        if not len(ds.user) == len(ds.item) == len(ds.time):
            raise ValueError("arrays of different lengths")
        return ds
    except (KeyError, ValueError) as e:  # a side field with missing parts, a wrong entry under the key
        log.warning("cache entry %s/%s.npz does not hold a dataset (%s); rebuilding it", cache_dir, key, e)
        return None


def _fits(prep: dict, ds: Dataset) -> bool:
    """Whether a prepared entry's masks are over this dataset's rows."""
    mask = prep["train_mask"]
    return (mask.dtype == bool and len(mask) == len(prep["val_mask"]) == len(ds)
            and len(prep["weight"]) == int(mask.sum()))


def _split_and_weigh(ds: Dataset, split_cfg, validation_cfg, confidence_cfg) -> dict[str, np.ndarray]:
    """The test split, the validation carve and the confidence weights, as the cache stores them."""
    train_mask, holdout = make_split(ds, split_cfg)
    val_mask, validation = carve_validation(ds, train_mask, validation_cfg)
    genre = ds.side.get("genre")
    weight = confidence_weights(
        ds.user[train_mask], ds.item[train_mask], ds.n_users, ds.n_items,
        None if genre is None else genre.matrix(ds.n_items), confidence_cfg,
    )
    return {"train_mask": train_mask, "weight": weight,
            "hidden_user": holdout.user, "hidden_item": holdout.item, "hidden_part": holdout.part,
            "val_mask": val_mask, "val_user": validation.user, "val_item": validation.item,
            "val_part": validation.part}


def prepare_data(data_cfg, split_cfg, confidence_cfg, cache_dir: str | Path | None,
                 validation_cfg=None) -> PreparedData:
    """Read (or load from cache) the dataset, split it, carve the validation part out of the
    training part and weight the training rows.

    Two cache levels: the parsed dataset (key: input content hash + reader config) and the prepared
    split + weights (key: dataset key + split + validation + confidence config). `cache_dir=None`
    disables both.
    """
    t0 = time.perf_counter()
    reader_cfg = _reader_config(data_cfg)
    fingerprint = _fingerprint(data_cfg, reader_cfg)
    ds_key = "dataset-" + cache_key(fingerprint, reader_cfg)
    prep_key = "prepared-" + cache_key(ds_key, _plain(split_cfg), _plain(confidence_cfg),
                                       None if validation_cfg is None else _plain(validation_cfg))
    info = {"cache": "off" if cache_dir is None else "miss", "dataset_key": ds_key, "prepared_key": prep_key,
            "cache_dir": None if cache_dir is None else str(cache_dir)}  # models' derived arrays (text embeddings)

    arrays = load_arrays(cache_dir, ds_key, DATASET_KEYS) if cache_dir is not None else None
    ds = _cached_dataset(arrays, cache_dir, ds_key)
    if ds is None:
        ds = _read(data_cfg, reader_cfg)
        if cache_dir is not None:
            save_arrays(cache_dir, ds_key, ds.to_arrays())
    else:
        info["cache"] = "dataset"
    prep = load_arrays(cache_dir, prep_key, PREPARED_KEYS) if cache_dir is not None else None
    if prep is not None and not _fits(prep, ds):
        log.warning("cache entry %s/%s.npz does not fit its dataset; rebuilding it", cache_dir, prep_key)
        prep = None
    if prep is None:
        prep = _split_and_weigh(ds, split_cfg, validation_cfg, confidence_cfg)
        if cache_dir is not None:
            save_arrays(cache_dir, prep_key, prep)
    else:
        info["cache"] = "prepared"
    train_mask, weight, val_mask = prep["train_mask"], prep["weight"], prep["val_mask"]
    holdout = Holdout(prep["hidden_user"], prep["hidden_item"], prep["hidden_part"])
    validation = Holdout(prep["val_user"], prep["val_item"], prep["val_part"])
    info["seconds"] = round(time.perf_counter() - t0, 3)
    data = PreparedData(ds, train_mask, weight, holdout, fingerprint, info, val_mask, validation)
    log.info("data ready in %.2fs (cache: %s): %s", info["seconds"], info["cache"], data.summary())
    return data


def load_run_data(cfg, validation: bool = True) -> PreparedData:
    """A run config's data (its data, split, confidence and validation groups, cached under
    paths.cache_dir unless data.cache is false); `validation=False` skips carving the validation
    part (a fit on everything, or ranking only)."""
    cache_dir = cfg.paths.cache_dir if cfg.data.get("cache", True) else None
    return prepare_data(cfg.data, cfg.split, cfg.confidence, cache_dir, cfg.get("validation") if validation else None)
