"""Confidence weights: one positive weight per training interaction (the `confidence` config group).

Every kind is normalised so that a user's weights average 1: weighting moves emphasis *within*
a user's history and leaves the overall scale (and so each model's tuned regularisation) alone.
Kinds combine by multiplication (then renormalised):

- time:    recency by position in the user's history, oldest -> newest:
           w = floor + (1 - floor) * (position / (n - 1)) ** power
- itempop: w = (count_i / mean count) ** exponent; exponent < 0 favours the long tail
- genre:   w = (g_ui / mean_u g) ** strength, where g_ui is the mean, over the item's genres,
           of the share of the user's history in that genre (items without genres: w = 1)
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recmovie.errors import ConfigError

KINDS = ("time", "itempop", "genre")


def _per_user_mean_one(w: np.ndarray, user: np.ndarray, n_users: int) -> np.ndarray:
    sums = np.bincount(user, weights=w, minlength=n_users)
    counts = np.bincount(user, minlength=n_users)
    mean = np.divide(sums, counts, out=np.ones(n_users), where=counts > 0)
    return w / np.where(mean > 0, mean, 1.0)[user]


def time_weights(user: np.ndarray, n_users: int, floor: float = 0.7, power: float = 1.0) -> np.ndarray:
    """Rows must be in (user, time) order, as Dataset keeps them."""
    counts = np.bincount(user, minlength=n_users)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    pos = np.arange(len(user)) - starts[user]
    denom = np.maximum(counts[user] - 1, 1)
    return floor + (1.0 - floor) * (pos / denom) ** power


def itempop_weights(item: np.ndarray, n_items: int, exponent: float = -0.15) -> np.ndarray:
    counts = np.bincount(item, minlength=n_items).astype(np.float64)
    rel = counts / counts[counts > 0].mean()
    return rel[item] ** exponent


def genre_weights(user, item, n_users: int, item_genre, strength: float = 0.25) -> np.ndarray:
    """item_genre: binary item x genre csr matrix (or None when the data has no genres)."""
    if item_genre is None or item_genre.nnz == 0:
        return np.ones(len(user))
    genre = item_genre.toarray().astype(np.float32)  # items x genres, small
    n_genres = genre.sum(axis=1)
    x = sp.csr_matrix((np.ones(len(user), np.float32), (user, item)), shape=(n_users, len(genre)))
    profile = x @ genre  # users x genres: how many of the user's items carry each genre
    share = profile / np.maximum(profile.sum(axis=1, keepdims=True), 1e-12)
    # g_ui = mean over the item's genres of share_u(genre), in chunks to bound memory
    g = np.empty(len(user), np.float64)
    for s in range(0, len(user), 1_000_000):
        sl = slice(s, s + 1_000_000)
        g[sl] = (share[user[sl]] * genre[item[sl]]).sum(axis=1)
    has = n_genres[item] > 0
    g = np.where(has, g / np.maximum(n_genres[item], 1), np.nan)
    sums = np.bincount(user[has], weights=g[has], minlength=n_users)
    cnt = np.bincount(user[has], minlength=n_users)
    mean = np.divide(sums, cnt, out=np.ones(n_users), where=cnt > 0)
    w = np.ones(len(user))
    w[has] = (np.maximum(g[has], 1e-6) / mean[user[has]]) ** strength
    return w


def confidence_weights(user, item, n_users: int, n_items: int, item_genre, cfg) -> np.ndarray:
    """Weights for training rows in (user, time) order, from the `confidence` config."""
    kinds = list(cfg.get("kinds") or [])
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError("confidence.kinds", f"unknown kind(s) {unknown}; choose from {list(KINDS)}")
    w = np.ones(len(user))
    for kind in kinds:
        p = _params(cfg, kind)
        if kind == "time":
            part = time_weights(user, n_users, **p)
        elif kind == "itempop":
            part = itempop_weights(item, n_items, **p)
        else:
            part = genre_weights(user, item, n_users, item_genre, **p)
        w *= _per_user_mean_one(part, user, n_users)
    if kinds:
        w = _per_user_mean_one(w, user, n_users)
    return w.astype(np.float32)


_PARAMS = {"time": ("floor", "power"), "itempop": ("exponent",), "genre": ("strength",)}


def _params(cfg, kind: str) -> dict[str, float]:
    """A kind's parameters from the config (missing ones keep the functions' defaults)."""
    p = dict(cfg.get(kind) or {})
    unknown = set(p) - set(_PARAMS[kind])
    if unknown:
        raise ConfigError(f"confidence.{kind}", f"unknown parameter(s) {sorted(unknown)}; known: {list(_PARAMS[kind])}")
    for k, v in p.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"confidence.{kind}.{k}", f"must be a number, got {v!r}")
    return {k: float(v) for k, v in p.items()}


def check_confidence_config(cfg) -> None:
    """Fail fast on a wrong value (called before any data is read)."""
    kinds = list(cfg.get("kinds") or [])
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError("confidence.kinds", f"unknown kind(s) {unknown}; choose from {list(KINDS)}")
    time, genre = _params(cfg, "time"), _params(cfg, "genre")
    _params(cfg, "itempop")
    if not 0.0 <= time.get("floor", 0.5) <= 1.0:
        raise ConfigError("confidence.time.floor", f"must be in [0, 1], got {time['floor']}")
    if time.get("power", 0.0) < 0:
        raise ConfigError("confidence.time.power", f"must be >= 0, got {time['power']}")
    if genre.get("strength", 0.0) < 0:
        raise ConfigError("confidence.genre.strength", f"must be >= 0, got {genre['strength']}")
