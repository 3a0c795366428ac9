"""Feature sets of the context-aware models (FM, DeepFM, Wide&Deep, AutoInt): the `features` config group.

A feature set names the fields a model reads beside the user and item ids:

- item fields: `genre`, `director`, `writer`, `attribute` (the side files' values; `attribute` from
  attributes.tsv or S3-Rec's `*_item2attributes.json`), `era` (the seed team's six
  release eras: before 1920, 1920-49, 1950-69, 1970-79, 1980-99, 2000 on), `decade` (release year
  in 10-year buckets, 1910s .. 2020s) and `title` (the title's words, hashed into `title_buckets`
  codes: a title vocabulary would grow with every new film, a hashed one has a fixed size, so a
  checkpoint rebuilds from its parameters alone);
- user fields, derived from the user's training history so that any history can be scored:
  `top_genres` (the user's `top_genres_n` most frequent genres) and `activity` (log2 bucket of the
  history's length).

Every field is a bag of codes (one code for single-valued fields); a model embeds a bag as the
mean of its codes' embeddings. Codes 0 .. V-1 are the field's values (the schema's side
vocabulary, or the fixed buckets above), V is reserved for "no value / unknown" (an item without a
side row gets it) and V + 1 pads a bag to the table's width.

The fields are resolved against the data before any work: a field whose side file the data lacks
stops the run naming the file and the feature set, unless the set lists it as `optional` (then it
is dropped with a warning; `all` does this for directors and writers, which MovieLens lacks).
"""
from __future__ import annotations

import logging
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from recmovie.data.batches import FieldBatch, PairBatch
from recmovie.data.dataset import ATTRIBUTES_JSON, SIDE_FILES, Dataset
from recmovie.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# field -> the side field (file) it is derived from
ITEM_FIELDS = {"genre": "genre", "director": "director", "writer": "writer", "attribute": "attribute",
               "era": "year", "decade": "year", "title": "title"}
BAG_FIELDS = ("genre", "director", "writer", "attribute")  # a side file's values, coded as they are
USER_FIELDS = {"top_genres": "genre", "activity": None}
ERA_EDGES = [1920, 1950, 1970, 1980, 2000]  # six eras: before 1920, 1920-49, 1950-69, 1970-79, 1980-99, 2000+
FIRST_DECADE, LAST_DECADE = 1910, 2020
ACTIVITY_BUCKETS = 16  # floor(log2(history length + 1)), the last bucket open-ended
MAX_BAG = 16  # a longer bag keeps its first values (only writers/genres of a few films are that long)
MAX_TITLE_WORDS = 8
# the side fields each data format provides, where it can be told without reading the data
MOVIELENS_SIDE = {"title", "year", "genre"}


@dataclass(frozen=True)
class FeatureSet:
    name: str = "ids"
    item: tuple[str, ...] = ()
    user: tuple[str, ...] = ()
    title_buckets: int = 4096
    top_genres_n: int = 3

    @classmethod
    def from_config(cls, cfg) -> "FeatureSet":
        """From the `features` group (or a model's checkpointed params); None = ids only."""
        if cfg is None:
            return cls()
        cfg = dict(cfg)
        item, user = list(cfg.get("item") or []), list(cfg.get("user") or [])
        for key, names, known in (("item", item, ITEM_FIELDS), ("user", user, USER_FIELDS)):
            bad = [n for n in names if n not in known]
            if bad:
                raise ConfigError(f"features.{key}", f"unknown field(s) {bad}; known: {sorted(known)}")
            if len(set(names)) != len(names):
                raise ConfigError(f"features.{key}", f"a field is listed twice: {names}")
        buckets, top = cfg.get("title_buckets", 4096), cfg.get("top_genres_n", 3)
        if not isinstance(buckets, int) or buckets < 1:
            raise ConfigError("features.title_buckets", f"must be an integer >= 1, got {buckets!r}")
        if not isinstance(top, int) or top < 1:
            raise ConfigError("features.top_genres_n", f"must be an integer >= 1, got {top!r}")
        return cls(str(cfg.get("name", "custom")), tuple(item), tuple(user), buckets, top)

    def to_dict(self) -> dict:
        return {**asdict(self), "item": list(self.item), "user": list(self.user)}

    @property
    def side_fields(self) -> dict[str, str]:
        """Field -> the side field it reads."""
        out = {f: ITEM_FIELDS[f] for f in self.item}
        out.update({f: USER_FIELDS[f] for f in self.user if USER_FIELDS[f]})
        return out

    @property
    def item_tables(self) -> tuple[str, ...]:
        """Item fields a model must look up: its own, and genre for the user's top genres."""
        extra = ("genre",) if "top_genres" in self.user and "genre" not in self.item else ()
        return self.item + extra


def available_side_fields(data_cfg) -> set[str] | None:
    """The side fields the configured data has, told from its config and folder alone (None: unknown)."""
    fmt = data_cfg.get("format")
    if fmt == "synthetic":
        return set(SIDE_FILES) - {"attribute"}
    if fmt == "movielens":
        return set(MOVIELENS_SIDE)
    if fmt == "competition" and data_cfg.get("dir") not in (None, "", "???"):
        folder = Path(str(data_cfg.dir))
        have = {name for name, file in SIDE_FILES.items() if (folder / file).is_file()}
        return have | ({"attribute"} if any(folder.glob(ATTRIBUTES_JSON)) else set())
    return None


def _missing_message(fs: FeatureSet, field: str, side: str, where: str) -> str:
    return (f"features={fs.name} reads field {field!r} from {SIDE_FILES[side]}, which {where} does not have "
            f"(choose another feature set, e.g. features=ids, or add the file)")


def resolve_features(features_cfg, data_cfg) -> dict | None:
    """The `features` group checked against the data config before any work: a required field whose
    side file is absent is a DataError naming the file and the feature set; an `optional` one is
    dropped with a warning. Returns the feature set actually used, as plain values (None: no group)."""
    if features_cfg is None:
        return None
    cfg = dict(features_cfg)
    optional = set(cfg.pop("optional", None) or [])
    fs = FeatureSet.from_config(cfg)
    have = available_side_fields(data_cfg)
    if have is None:
        return fs.to_dict()
    where = data_cfg.get("dir") or f"data={data_cfg.get('name')}"
    keep = {"item": list(fs.item), "user": list(fs.user)}
    for key in keep:
        for field in list(keep[key]):
            side = (ITEM_FIELDS if key == "item" else USER_FIELDS)[field]
            if side is None or side in have:
                continue
            if field not in optional:
                raise DataError(Path(str(where)) / SIDE_FILES[side] if data_cfg.get("dir") else where,
                                _missing_message(fs, field, side, str(where)))
            log.warning("features=%s: %s has no %s, field %r left out", fs.name, where, SIDE_FILES[side], field)
            keep[key].remove(field)
    return {**fs.to_dict(), **keep}


def run_features(cfg) -> dict | None:
    """A run config's `features` group resolved against its data config (resolve_features), as
    the model's `features` argument; None when the run has no features group."""
    features = cfg.get("features")
    return None if features is None else resolve_features(OmegaConf.to_container(features, resolve=True), cfg.data)


def check_side_data(fs: FeatureSet, ds: Dataset) -> None:
    """The same check on data already read (a model fitted outside the pipeline)."""
    for field, side in fs.side_fields.items():
        if side not in ds.side:
            raise DataError(SIDE_FILES[side], _missing_message(fs, field, side, "the data"))


# ------------------------------------------------------------------ codes
def field_size(field: str, fs: FeatureSet, schema) -> int:
    """Codes of a field, the reserved "unknown" one included; the table holds one more, for padding."""
    if field in (*BAG_FIELDS, "top_genres"):
        return schema.side_size("genre" if field == "top_genres" else field) or 1
    if field == "era":
        return len(ERA_EDGES) + 2
    if field == "decade":
        return (LAST_DECADE - FIRST_DECADE) // 10 + 2
    if field == "title":
        return fs.title_buckets + 1
    if field == "activity":
        return ACTIVITY_BUCKETS + 1
    raise ConfigError("features", f"unknown field {field!r}")


def padded_bags(n_rows: int, rows: np.ndarray, codes: np.ndarray, unknown: int, cap: int = MAX_BAG) -> np.ndarray:
    """(row, code) pairs -> [n_rows, W] int64, each row's codes first (in the given order), padded
    with unknown + 1; a row without codes holds `unknown`. W = the longest bag (capped), at least 1."""
    order = np.argsort(rows, kind="stable")
    rows, codes = rows[order], codes[order]
    counts = np.bincount(rows, minlength=n_rows)
    width = int(min(cap, counts.max(initial=0))) or 1
    out = np.full((n_rows, width), unknown + 1, np.int64)
    pos = np.arange(len(rows)) - np.repeat(np.r_[0, np.cumsum(counts)[:-1]], counts)
    keep = pos < width
    out[rows[keep], pos[keep]] = codes[keep]
    out[counts == 0, 0] = unknown
    return out


def _words(title: str) -> list[str]:
    title = re.sub(r"\(\s*\d{4}[^)]*\)\s*$", "", title.strip())  # the release year has its own fields
    return re.findall(r"[a-z0-9]+", title.lower())[:MAX_TITLE_WORDS]


def item_field_codes(ds: Dataset, fs: FeatureSet, schema) -> dict[str, np.ndarray]:
    """Field -> [n_items, W] codes of every item, for the item fields a model looks up."""
    check_side_data(fs, ds)
    n = ds.n_items
    out = {}
    for field in fs.item_tables:
        unknown = field_size(field, fs, schema) - 1
        if field in BAG_FIELDS:
            f = ds.side[field]
            out[field] = padded_bags(n, f.item.astype(np.int64), f.value.astype(np.int64), unknown)
        elif field in ("era", "decade"):
            years = ds.item_years()
            known = ~np.isnan(years)
            if field == "era":
                code = np.digitize(years[known], ERA_EDGES)
            else:
                code = (np.clip(years[known], FIRST_DECADE, LAST_DECADE + 9) // 10 * 10 - FIRST_DECADE) // 10
            out[field] = padded_bags(n, np.flatnonzero(known), code.astype(np.int64), unknown)
        elif field == "title":
            f = ds.side["title"]
            rows, codes = [], []
            for item, value in zip(f.item, f.value):
                for w in _words(str(f.vocab[value])):
                    rows.append(item)
                    codes.append(zlib.crc32(w.encode()) % fs.title_buckets)  # stable across processes
            out[field] = padded_bags(n, np.asarray(rows, np.int64), np.asarray(codes, np.int64), unknown,
                                     MAX_TITLE_WORDS)
    return out


def user_field_codes(indptr: np.ndarray, indices: np.ndarray, fs: FeatureSet, genre_codes: np.ndarray | None,
                     genre_size: int) -> dict[str, np.ndarray]:
    """Field -> [B, W] codes of the users whose histories are the CSR rows (indptr, indices): the
    same function for the training view (every user's training history) and for scoring (the
    ranking engine's UserBatch), so both see the same features."""
    n_rows = len(indptr) - 1
    lengths = np.diff(indptr)
    out = {}
    for field in fs.user:
        if field == "activity":
            bucket = np.minimum(np.floor(np.log2(lengths + 1)), ACTIVITY_BUCKETS - 1).astype(np.int64)
            out[field] = bucket[:, None]
        elif field == "top_genres":
            unknown = genre_size - 1
            rows = np.repeat(np.arange(n_rows), lengths)
            g = genre_codes[indices]  # [nnz, W]
            valid = g < unknown
            counts = np.bincount((rows[:, None] * genre_size + g)[valid], minlength=n_rows * genre_size)
            counts = counts.reshape(n_rows, genre_size)[:, :unknown]
            top = min(fs.top_genres_n, unknown) or 1
            # most frequent first, equal counts by genre code: a total order, chunking-independent
            order = np.argsort(-counts, axis=1, kind="stable")[:, :top]
            held = np.take_along_axis(counts, order, 1) > 0
            codes = np.where(held, order, unknown + 1)
            codes[~held[:, 0], 0] = unknown
            out[field] = codes.astype(np.int64)
    return out


class FieldSampler:
    """The pairs view's sampler (user, positive, negatives, weight) with every row's field codes
    gathered from tables built once: the items' from the side data, the users' from their
    training histories."""

    def __init__(self, pairs, data, fs: FeatureSet, schema):
        self.pairs = pairs
        self.fs = fs
        self.items = {k: torch.from_numpy(v) for k, v in item_field_codes(data.dataset, fs, schema).items()}
        m = data.train_matrix
        genre = self.items.get("genre")
        users = user_field_codes(m.indptr, m.indices, fs, None if genre is None else genre.numpy(),
                                 field_size("genre", fs, schema))
        self.users = {k: torch.from_numpy(v) for k, v in users.items()}

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, rng: np.random.Generator, size: int) -> FieldBatch:
        p: PairBatch = self.pairs.sample(rng, size)
        items = torch.cat([p.pos[:, None], p.neg], 1)  # [B, 1 + n_negatives], the positive first
        return FieldBatch(p.users, items, p.weight, {k: v[p.users] for k, v in self.users.items()},
                          {k: self.items[k][items] for k in self.fs.item})
