"""The candidates contract: every run's ranked top-N per user, `candidates.csv`.

Columns `user,item,score,rank` (raw ids, rank from 1, best first). A training run writes one for
the test ranking (or the submission) and, with a validation part, `val_candidates.csv` for the
validation users as ranked by the model fitted without it. Ensembles fuse and re-rank them
(recmovie/ensemble/), and `predict.py candidates_from=` lets a model re-rank another run's list.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recmovie.data.prepare import PreparedData
from recmovie.errors import DataError
from recmovie.evaluation.ranking import TopK
from recmovie.io import write_csv
from recmovie.runs import get_run, run_file

CANDIDATE_COLUMNS = ("user", "item", "score", "rank")


def write_candidates(path: str | Path, topk: TopK, data: PreparedData) -> Path:
    """Every ranked user's list (places without an item, score -inf, are left out)."""
    n, depth = topk.items.shape
    finite = np.isfinite(topk.scores).ravel()
    path = Path(path)
    write_csv(path, {
        "user": np.repeat(data.dataset.user_ids[topk.users], depth)[finite],
        "item": data.dataset.item_ids[topk.items].ravel()[finite],
        "score": topk.scores.ravel()[finite],
        "rank": np.tile(np.arange(1, depth + 1), n)[finite],
    })
    return path


def read_candidates(path: Path, data: PreparedData, top_n: int, label: str) -> pd.DataFrame:
    """A candidates.csv as dense ids: each user's top_n rows, sorted by user then rank, with the
    scores as written. `label` says whose file it is in errors."""
    df = pd.read_csv(path)
    if list(df.columns) != list(CANDIDATE_COLUMNS):
        raise DataError(path, f"{label}: columns {list(df.columns)}, expected {list(CANDIDATE_COLUMNS)}")
    df = df[df["rank"] <= top_n]
    user = pd.Index(data.dataset.user_ids).get_indexer(df["user"].to_numpy())
    item = pd.Index(data.dataset.item_ids).get_indexer(df["item"].to_numpy())
    if (user < 0).any() or (item < 0).any():
        raise DataError(path, f"{label}: lists users or items that the members' data does not have")
    rank = df["rank"].to_numpy(np.int64)
    order = np.lexsort((rank, user))
    return pd.DataFrame({"user": user[order], "item": item[order], "rank": rank[order],
                         "score": df["score"].to_numpy(np.float64)[order]})


def candidate_grid(candidates: pd.DataFrame, n_users: int) -> np.ndarray:
    """[n_users, C] dense item ids of read candidates (-1: none), best first: the items a model
    re-ranks through `score_items` instead of scoring the whole catalogue."""
    rank = candidates["rank"].to_numpy(np.int64)
    grid = np.full((n_users, int(rank.max(initial=1))), -1, np.int64)
    grid[candidates["user"].to_numpy(), rank - 1] = candidates["item"].to_numpy()
    return grid


def load_candidate_grid(source: str, data: PreparedData, uri: str, key: str = "candidates_from") -> np.ndarray:
    """candidate_grid of `source`: a candidates.csv path, or the MLflow run id that wrote one."""
    if Path(source).is_file():
        return candidate_grid(read_candidates(Path(source), data, 1 << 30, source), data.n_users)
    run = get_run(uri, source, key=key)
    with run_file(uri, run, "candidates.csv", key=key) as path:
        return candidate_grid(read_candidates(path, data, 1 << 30, f"run {source}"), data.n_users)
