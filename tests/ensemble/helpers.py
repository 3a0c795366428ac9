from __future__ import annotations

"""Hand-made data, candidate lists and run stand-ins shared by the ensemble tests."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
from omegaconf import open_dict

from recmovie.data.dataset import Dataset
from recmovie.data.prepare import PreparedData
from recmovie.data.split import Holdout
from recmovie.ensemble.fusion import fuse
from recmovie.ensemble.pool import build_pool, ranked_lists
from tests.conftest import make_config


def tiny_data(seen: dict[int, list[int]], n_items: int = 8) -> PreparedData:
    """Users 0..len(seen)-1 with the given training items (item popularity = how often seen)."""
    users = np.array([u for u, items in seen.items() for _ in items], np.int32)
    items = np.array([i for its in seen.values() for i in its], np.int32)
    ds = Dataset(users, items, np.zeros(len(users), np.int64), np.arange(len(seen)) + 100, np.arange(n_items) + 1000)
    return PreparedData(ds, np.ones(len(users), bool), np.ones(len(users), np.float32), Holdout.empty(), "fp")


def lists(*members: dict[int, list[int]], scores: list[dict[int, list[float]]] | None = None) -> list[pd.DataFrame]:
    """Each member as {user: [items best first]}, in the dense form read_candidates returns."""
    out = []
    for m, member in enumerate(members):
        rows = [(u, i, r + 1, scores[m][u][r] if scores else 0.0)
                for u, items in member.items() for r, i in enumerate(items)]
        out.append(pd.DataFrame(rows, columns=["user", "item", "rank", "score"]))
    return out


def order(data, members, method="rank_vote", weights=None, top_n=3, k=2, **kw) -> list[list[int]]:
    pool = build_pool(members, data.n_items, top_n)
    w = np.ones(len(members)) if weights is None else np.asarray(weights, float)
    topk, filled = ranked_lists(pool, fuse(pool, method, w, **kw), data, depth=top_n * len(members), k=k)
    assert filled == 0
    return [[int(i) for i, s in zip(items, scores) if np.isfinite(s)] for items, scores in zip(topk.items, topk.scores)]


def fake_run(run_id, model, metric=None, start=0, **params):
    metrics = {} if metric is None else {"recall_at_10": metric}
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, start_time=start),
                           data=SimpleNamespace(tags={"model": model}, metrics=metrics, params=params))


def ensemble_config(tmp_path, members, overrides=()):
    cfg = make_config(tmp_path, list(overrides), config_name="ensemble")
    with open_dict(cfg):
        cfg.tracking.uri = members.cfg.tracking.uri
        cfg.paths.cache_dir = members.cfg.paths.cache_dir
    return cfg
