"""The member runs of an ensemble: found by id or query, checked to share data and split, and
loaded (their candidate lists, validation candidate lists, or reloaded models)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from recmovie.candidates import read_candidates
from recmovie.data.prepare import PreparedData, load_run_data
from recmovie.errors import ConfigError, DataError
from recmovie.models.base import Recommender, load_checkpoint
from recmovie.runs import get_run, model_of, run_file, search_experiment, select_runs

NO_VALIDATION_CANDIDATES = ("trained without a validation part, by an older version, or closed-form with "
                            "split=none, which fits everything at once: retrain it with refit=true")


def find_members(client, cfg: DictConfig) -> list:
    """The runs named in `runs`, then those the `query` selects (each run once)."""
    members = []
    ids = [cfg.runs] if isinstance(cfg.runs, str) else list(cfg.runs or [])
    for run_id in ids:
        members.append(get_run(client.tracking_uri, str(run_id), key="runs"))
    q = cfg.query
    if q.experiment:
        found = search_experiment(client, str(q.experiment), str(q.filter or ""), q.split)
        members += select_runs(found, str(q.per_model), str(q.metric), q.models)
    unique = list({r.info.run_id: r for r in members}.values())
    if len(unique) < 2:
        raise ConfigError("runs", f"an ensemble needs at least two member runs, got {len(unique)}")
    return unique


def check_members(members: list, top_n: int) -> None:
    """Same data fingerprint and split config for all, and enough saved candidates for top_n."""
    def identity(run):
        split = {k: v for k, v in run.data.params.items() if k.startswith(("split.", "validation."))}
        return run.data.params.get("data_fingerprint"), tuple(sorted(split.items()))

    groups: dict = {}
    for run in members:
        groups.setdefault(identity(run), []).append(run)
    if len(groups) > 1:
        lines = []
        for (fingerprint, split), runs in groups.items():
            names = ", ".join(f"{r.info.run_id} ({model_of(r)})" for r in runs)
            split_s = " ".join(f"{k}={v}" for k, v in split) or "no split params"
            lines.append(f"  data_fingerprint={fingerprint} {split_s}: {names}")
        raise ConfigError("runs", "members were trained on different data or splits:\n" + "\n".join(lines))
    for run in members:
        saved = run.data.params.get("candidates.n")
        if saved is not None and int(saved) < top_n:
            raise ConfigError("top_n", f"run {run.info.run_id} ({model_of(run)}) saved only {saved} candidates per "
                              f"user (candidates.n={saved}); lower top_n to <= {saved} or retrain it with "
                              f"candidates.n={top_n}")


def member_weights(weights, members: list) -> np.ndarray:
    """null -> equal; a list in member order; or a mapping by run id or model name (a model name
    gives every member of that model the weight)."""
    labels = [f"{r.info.run_id} ({model_of(r)})" for r in members]
    if weights is None:
        return np.ones(len(members))
    if isinstance(weights, (list, tuple, ListConfig)):
        if len(weights) != len(members):
            raise ConfigError("weights", f"{len(weights)} weight(s) for {len(members)} members: " + ", ".join(labels))
        values = list(weights)
    else:
        weights = dict(weights)
        missing = [lab for r, lab in zip(members, labels) if r.info.run_id not in weights and model_of(r) not in weights]
        if missing:
            raise ConfigError("weights", "no weight for member(s) " + ", ".join(missing))
        unused = set(weights) - {r.info.run_id for r in members} - {model_of(r) for r in members}
        if unused:
            raise ConfigError("weights", f"{sorted(unused)} match no member; members: " + ", ".join(labels))
        values = [weights.get(r.info.run_id, weights.get(model_of(r))) for r in members]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError("weights", f"must be numbers, got {values}")
    w = np.array(values, dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
        raise ConfigError("weights", f"must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w


def members_data(uri: str, base, cache_dir: str) -> tuple[DictConfig, PreparedData]:
    """The data the members were trained on (the first member's config), checked unchanged."""
    with run_file(uri, base, "config.yaml", key="runs") as path:
        base_cfg = OmegaConf.load(path)
    base_cfg.paths.cache_dir = cache_dir
    data = load_run_data(base_cfg)
    if data.fingerprint != base.data.params.get("data_fingerprint"):
        raise DataError(base_cfg.data.get("dir", base_cfg.data.name),
                        f"the data changed since run {base.info.run_id} was trained (fingerprint differs)")
    return base_cfg, data


def member_lists(uri: str, members: list, data: PreparedData, top_n: int, validation: bool = False,
                 key: str = "runs") -> list[pd.DataFrame]:
    """Each member's top_n candidates (`validation`: of the validation users, val_candidates.csv,
    ranked by the member fitted without the validation part); `key` is named when one is missing."""
    name = "val_candidates.csv" if validation else "candidates.csv"
    lists = []
    for r in members:
        with run_file(uri, r, name, key=key, hint=NO_VALIDATION_CANDIDATES if validation else "") as path:
            label = f"run {r.info.run_id}" + (" (validation)" if validation else "")
            lists.append(read_candidates(path, data, top_n, label))
    return lists


def member_models(uri: str, members: list, validation: bool = False) -> list[Recommender]:
    """Each member's model, reloaded from its checkpoint (for the full-score blend); `validation`:
    the model fitted without the validation part (a refit run's val_model.pt, else its model.pt)."""
    models = []
    for r in members:
        name = "val_model.pt" if validation and r.data.tags.get("fit_mode") == "refit" else "model.pt"
        try:
            with run_file(uri, r, f"model/{name}", key="full_scores") as path:
                ckpt = load_checkpoint(path)
        except DataError as e:
            raise ConfigError("full_scores", f"run {r.info.run_id} ({model_of(r)}) has no reloadable model: {e}") from None
        models.append(Recommender.from_checkpoint(ckpt))
    return models


def member_table(members: list, weights: np.ndarray, k: int) -> pd.DataFrame:
    cols = [f"recall_at_{k}", f"recall_at_{k}_last", f"recall_at_{k}_random", f"ndcg_at_{k}"]
    return pd.DataFrame([
        {"run_id": r.info.run_id, "model": model_of(r), "weight": round(float(w), 4),
         **{c: r.data.metrics.get(c, np.nan) for c in cols}}
        for r, w in zip(members, weights)
    ])
