"""Ensembles of tracked runs: fuse the members' saved top-N candidates into one ranking.

Methods (w = a member's weight, r = the rank it gave the item, from 1):
  rank_vote    items ordered by sum(w * r), lowest first; an item a member did not list in its top_n
               counts as rank top_n + 1 (the seed team's hard voting)
  rrf          reciprocal-rank fusion (Cormack et al. 2009): sum(w / (rrf_k + r)), unlisted items add 0
  score_blend  sum(w * s): s = the member's score min-max normalised over the user's top_n, unlisted 0
  score_blend with full_scores=true: the same over every item, from the members' reloaded models
               (their checkpoints), each member's scores standardised per user over the unseen items
  rerank       a LightGBM LambdaRank model over every member's score and rank plus item, user and
               pair features (recmovie/rerank.py), learned on the members' validation candidates
Ties: the first member's rank, then the item id. Members must share the data, the split and the
validation part, so the ensemble is scored on the same test part as its members. Weights are
searched on the VALIDATION part: each member's `val_candidates.csv` (ranked by the member as fitted
without the validation part); the test part is only scored, with the weights found.
"""
from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from recmovie.data.prepare import PreparedData
from recmovie.errors import ConfigError, DataError
from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import TopK
from recmovie.io import atomic_path
from recmovie.submission import CANDIDATE_COLUMNS, write_candidates, write_submission
from recmovie.tracking import download_run_file, flatten, get_run, resolve_tracking_uri, setup_mlflow, start_run

log = logging.getLogger(__name__)

METHODS = ("rank_vote", "rrf", "score_blend", "rerank")
SEARCHES = ("grid", "optuna")
PER_MODEL = ("best", "latest", "all")
NOT_MEMBERS = ("ensemble", "report")  # run kinds a query skips unless asked for by name


# ------------------------------------------------------------------ choosing runs
def model_of(run) -> str:
    return run.data.tags.get("model", "?")


def select_runs(runs: list, per_model: str, metric: str, models=None, exclude=NOT_MEMBERS) -> list:
    """Keep runs of `models` (default: all but `exclude`), then one per model (`best` by `metric`,
    runs without it last, ties to the newest; or the `latest`) or `all`; best `metric` first."""
    if models:
        runs = [r for r in runs if model_of(r) in set(models)]
    else:
        runs = [r for r in runs if model_of(r) not in exclude]

    def by_metric(r):
        value = r.data.metrics.get(metric)
        return (value is not None, -np.inf if value is None else value, r.info.start_time)

    if per_model != "all":
        key = by_metric if per_model == "best" else (lambda r: r.info.start_time)
        chosen = {}
        for r in runs:
            m = model_of(r)
            if m not in chosen or key(r) > key(chosen[m]):
                chosen[m] = r
        runs = list(chosen.values())
    return sorted(runs, key=by_metric, reverse=True)


def search_experiment(client, experiment: str, filter_string: str = "", split: str | None = None,
                      key: str = "query") -> list:
    """Every FINISHED run of an experiment that matches an MLflow filter string (and split); `key`
    is the config section named in errors."""
    prefix = f"{key}." if key else ""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"{prefix}experiment", f"no MLflow experiment named {experiment!r}")
    conditions = ["attributes.status = 'FINISHED'"] + ([f"tags.split = '{split}'"] if split else [])
    flt = " and ".join(conditions + ([filter_string] if filter_string else []))
    runs, token = [], None
    while True:
        try:
            page = client.search_runs([exp.experiment_id], flt, max_results=1000, page_token=token)
        except Exception as e:  # MLflow's parser: "Invalid clause(s) in filter string ..."
            raise ConfigError(f"{prefix}filter", f"MLflow cannot search with {flt!r}: {e}") from None
        runs += list(page)
        token = page.token
        if not token:
            return runs


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


def check_config(cfg: DictConfig) -> None:
    k = cfg.eval.k
    if not isinstance(k, int) or k < 1:
        raise ConfigError("eval.k", f"must be an integer >= 1, got {k!r}")
    if cfg.method not in METHODS:
        raise ConfigError("method", f"unknown method {cfg.method!r}; choose from {list(METHODS)}")
    if not isinstance(cfg.top_n, int) or cfg.top_n < k:
        raise ConfigError("top_n", f"must be an integer >= eval.k ({k}), got {cfg.top_n!r}")
    n = cfg.candidates.n
    if not isinstance(n, int) or n < k:
        raise ConfigError("candidates.n", f"must be an integer >= eval.k ({k}), got {n!r}")
    if not isinstance(cfg.rrf_k, (int, float)) or cfg.rrf_k < 0:
        raise ConfigError("rrf_k", f"must be a number >= 0, got {cfg.rrf_k!r}")
    if not cfg.runs and not cfg.query.experiment:
        raise ConfigError("runs", "name the members: runs=[<run id>,<run id>] and/or query.experiment=<name>")
    if cfg.query.per_model not in PER_MODEL:
        raise ConfigError("query.per_model", f"must be one of {list(PER_MODEL)}, got {cfg.query.per_model!r}")
    s = cfg.search
    if cfg.method == "rerank":
        if s.method is not None or cfg.weights is not None:
            raise ConfigError("search.method" if s.method is not None else "weights",
                              "rerank learns how to combine the members: no weights, no weight search")
        check_rerank_config(cfg.rerank)
    if cfg.get("full_scores") and cfg.method != "score_blend":
        raise ConfigError("full_scores", f"only score_blend blends full score rows, got method={cfg.method}")
    if s.method is not None:
        if s.method not in SEARCHES:
            raise ConfigError("search.method", f"must be null or one of {list(SEARCHES)}, got {s.method!r}")
        if cfg.weights is not None:
            raise ConfigError("weights", "give weights or search.method, not both")
        if s.method == "grid" and (not s.grid or any(not isinstance(v, (int, float)) or v < 0 for v in s.grid)
                                   or not any(v > 0 for v in s.grid)):
            raise ConfigError("search.grid", f"must be a list of numbers >= 0, one of them > 0, got {s.grid}")
        if s.method == "optuna" and (not isinstance(s.trials, int) or s.trials < 1):
            raise ConfigError("search.trials", f"must be an integer >= 1, got {s.trials!r}")


def check_rerank_config(r: DictConfig) -> None:
    for key, ok, want in (("recent_share", lambda v: 0 < v <= 1, "a number in (0, 1]"),
                          ("window_days", lambda v: v > 0, "a number > 0"),
                          ("valid_share", lambda v: 0 < v < 1, "a number in (0, 1)"),
                          ("rounds", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
                          ("patience", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
                          ("threads", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
                          ("seed", lambda v: isinstance(v, int), "an integer")):
        value = r.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
            raise ConfigError(f"rerank.{key}", f"must be {want}, got {value!r}")


# ------------------------------------------------------------------ fusing
@dataclass
class Pool:
    """Every (user, item) pair some member listed, with each member's rank and normalised score."""

    users: np.ndarray  # int64 [rows], dense, sorted by user then item
    items: np.ndarray  # int64 [rows], dense
    ranks: np.ndarray  # float64 [rows, members]; top_n + 1 where the member did not list the item
    scores: np.ndarray  # float64 [rows, members]; min-max per user over the member's list, 0 unlisted
    top_n: int


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted array."""
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if len(sorted_keys) else sorted_keys


def _position_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    starts = _group_starts(sorted_keys)
    sizes = np.diff(np.r_[starts, len(sorted_keys)])
    return np.arange(len(sorted_keys)) - np.repeat(starts, sizes)


def read_candidates(path: Path, data: PreparedData, top_n: int, label: str) -> pd.DataFrame:
    """A member's candidates.csv as dense ids, its top_n per user, best first, scores normalised."""
    df = pd.read_csv(path)
    if list(df.columns) != list(CANDIDATE_COLUMNS):
        raise DataError(path, f"{label}: columns {list(df.columns)}, expected {list(CANDIDATE_COLUMNS)}")
    df = df[df["rank"] <= top_n]
    user = pd.Index(data.dataset.user_ids).get_indexer(df["user"].to_numpy())
    item = pd.Index(data.dataset.item_ids).get_indexer(df["item"].to_numpy())
    if (user < 0).any() or (item < 0).any():
        raise DataError(path, f"{label}: lists users or items that the members' data does not have")
    rank = df["rank"].to_numpy(np.int64)
    score = df["score"].to_numpy(np.float64)
    order = np.lexsort((rank, user))
    user, item, rank, score = user[order], item[order], rank[order], score[order]
    starts = _group_starts(user)
    sizes = np.diff(np.r_[starts, len(user)])
    lo = np.repeat(np.minimum.reduceat(score, starts), sizes) if len(user) else score
    span = np.repeat(np.maximum.reduceat(score, starts), sizes) - lo if len(user) else score
    norm = np.where(span > 0, (score - lo) / np.where(span > 0, span, 1.0), 1.0)
    return pd.DataFrame({"user": user, "item": item, "rank": rank, "score": norm})


def build_pool(lists: list[pd.DataFrame], n_items: int, top_n: int) -> Pool:
    keys = [df["user"].to_numpy(np.int64) * n_items + df["item"].to_numpy(np.int64) for df in lists]
    union = np.unique(np.concatenate(keys))
    ranks = np.full((len(union), len(lists)), float(top_n + 1))
    scores = np.zeros((len(union), len(lists)))
    for m, (df, key) in enumerate(zip(lists, keys)):
        pos = np.searchsorted(union, key)
        ranks[pos, m] = df["rank"].to_numpy()
        scores[pos, m] = df["score"].to_numpy()
    return Pool(union // n_items, union % n_items, ranks, scores, top_n)


def fuse(pool: Pool, method: str, weights: np.ndarray, rrf_k: float = 60.0) -> np.ndarray:
    """One value per pool row, higher is better."""
    if method == "rank_vote":
        return -(pool.ranks @ weights)
    if method == "rrf":
        return np.where(pool.ranks <= pool.top_n, 1.0 / (rrf_k + pool.ranks), 0.0) @ weights
    if method == "score_blend":
        return pool.scores @ weights
    raise ValueError(f"unknown method {method!r}")


def ranked_lists(pool: Pool, fused: np.ndarray, data: PreparedData, depth: int, k: int) -> tuple[TopK, int]:
    """Every user's best `depth` pool items (ties: the first member's rank, then item id); users with
    fewer than k are filled with the most popular unseen items. Returns the lists and how many users
    were filled. Unfilled places beyond a user's items hold item 0 with score -inf."""
    order = np.lexsort((pool.items, pool.ranks[:, 0], -fused, pool.users))
    users, items, values = pool.users[order], pool.items[order], fused[order]
    pos = _position_in_group(users)
    keep = pos < depth
    top_items = np.zeros((data.n_users, depth), np.int64)
    top_scores = np.full((data.n_users, depth), -np.inf, np.float32)
    top_items[users[keep], pos[keep]] = items[keep]
    top_scores[users[keep], pos[keep]] = values[keep]
    counts = np.bincount(users[keep], minlength=data.n_users)
    short = np.flatnonzero(counts < k)
    if len(short):
        # only when members listed fewer than k items for a user (or none): popularity, then item id
        by_pop = np.lexsort((np.arange(data.n_items), -data.item_popularity))
        m = data.train_matrix
        for u in short:
            have = counts[u]
            taken = np.r_[m.indices[m.indptr[u]:m.indptr[u + 1]], top_items[u, :have]]
            extra = by_pop[~np.isin(by_pop, taken)][: k - have]
            floor = top_scores[u, have - 1] if have else 0.0
            top_items[u, have:have + len(extra)] = extra
            top_scores[u, have:have + len(extra)] = floor - 1.0 - np.arange(len(extra))
    return TopK(np.arange(data.n_users), top_items, top_scores), len(short)


# ------------------------------------------------------------------ full score rows
def _standardised(scores: torch.Tensor, batch) -> torch.Tensor:
    """Each row standardised over the user's unseen items (seen ones set to 0, masked later)."""
    seen = torch.zeros_like(scores, dtype=torch.bool)
    seen[batch.row_ids(), batch.indices] = True
    keep = ~seen
    n = keep.sum(1, keepdim=True).clamp_min(1)
    mean = (scores * keep).sum(1, keepdim=True) / n
    std = (((scores - mean) * keep) ** 2).sum(1, keepdim=True).div(n).sqrt().clamp_min(1e-12)
    return ((scores - mean) / std).masked_fill(seen, 0.0)


def member_models(uri: str, members: list, tmp: str) -> list:
    from recmovie.models.base import Recommender, load_checkpoint

    models = []
    for r in members:
        try:
            ckpt = load_checkpoint(_artifact(uri, r, "model/model.pt", tmp))
        except (FileNotFoundError, DataError) as e:
            raise ConfigError("full_scores", f"run {r.info.run_id} ({model_of(r)}) has no reloadable model: {e}") from None
        models.append(Recommender.from_checkpoint(ckpt))
    return models


def blended_topk(models: list, weights: np.ndarray, data: PreparedData, users: np.ndarray, depth: int,
                 chunk_size: int) -> TopK:
    """Top `depth` unseen items of sum(w * standardised member scores), `chunk_size` users at once."""
    from recmovie.evaluation.ranking import topk_unseen

    items = np.empty((len(users), depth), np.int64)
    values = np.empty((len(users), depth), np.float32)
    with torch.no_grad():
        for s in range(0, len(users), chunk_size):
            batch = data.user_batch(users[s : s + chunk_size])
            total = sum(float(w) * _standardised(m.score(batch).float(), batch) for m, w in zip(models, weights) if w > 0)
            v, i = topk_unseen(total, batch, depth)
            items[s : s + len(batch)], values[s : s + len(batch)] = i.numpy(), v.numpy()
    return TopK(users, items, values)


def full_score_blend(cfg: DictConfig, uri: str, members: list, data: PreparedData, val_data: PreparedData | None,
                     weights: np.ndarray | None) -> tuple[TopK, dict, np.ndarray]:
    """score_blend over every item. Weights searched on the validation part need members whose
    saved model never saw it (fit_mode `validate`: split=competition and the like)."""
    k, chunk = int(cfg.eval.k), int(cfg.get("chunk_size", 1024))
    with tempfile.TemporaryDirectory(prefix="recmovie-ensemble-models-") as tmp:
        models = member_models(uri, members, tmp)
    search = {}
    if weights is None:
        saw = [f"{r.info.run_id} ({model_of(r)}: {r.data.tags.get('fit_mode')})" for r in members
               if r.data.tags.get("fit_mode") != "validate"]
        if saw:
            raise ConfigError("full_scores", "searching weights on full scores needs members whose saved model was "
                              "fitted without the validation part (fit_mode validate); these saw it: " + ", ".join(saw))
        users = np.unique(val_data.holdout.user).astype(np.int64)
        pools = []
        with torch.no_grad():  # each member's standardised validation rows, computed once
            for m in models:
                rows = [_standardised(m.score(b).float(), b) for b in
                        (val_data.user_batch(users[s : s + chunk]) for s in range(0, len(users), chunk))]
                pools.append(torch.cat(rows))
        weights, best, trials = search_full(pools, val_data, users, cfg)
        search = {f"val_recall_at_{k}": best, "search_trials": trials}
    return blended_topk(models, weights, data, np.arange(data.n_users), int(cfg.candidates.n), chunk), search, weights


def search_full(pools: list, data: PreparedData, users: np.ndarray, cfg: DictConfig) -> tuple[np.ndarray, float, int]:
    """search_weights' grid or Optuna over full standardised score rows of the validation users."""
    from recmovie.evaluation.ranking import topk_unseen

    k = int(cfg.eval.k)
    batch = data.user_batch(users)

    def recall(w: np.ndarray) -> float:
        total = sum(float(x) * p for x, p in zip(w, pools) if x > 0)
        _, items = topk_unseen(total.clone(), batch, k)
        return evaluate(items.numpy(), users, data.holdout, data.n_users, k)[f"recall_at_{k}"]

    return _search(recall, len(pools), cfg)


# ------------------------------------------------------------------ weight search
def grid_vectors(values, n: int) -> list[np.ndarray]:
    """Every combination of `values` for n members; vectors equal up to scale are kept once."""
    out, seen = [], set()
    for combo in itertools.product([float(v) for v in values], repeat=n):
        w = np.array(combo)
        if not (w > 0).any():
            continue
        key = tuple(np.round(w / w.max(), 9))
        if key not in seen:
            seen.add(key)
            out.append(w)
    return out


def search_weights(pool: Pool, data: PreparedData, cfg: DictConfig) -> tuple[np.ndarray, float, int]:
    """Weights that maximise holdout Recall@k; returns (weights scaled to max 1, recall, trials)."""
    k = int(cfg.eval.k)
    n = pool.ranks.shape[1]

    def recall(w: np.ndarray) -> float:
        topk, _ = ranked_lists(pool, fuse(pool, cfg.method, w, float(cfg.rrf_k)), data, k, k)
        return evaluate(topk.items, topk.users, data.holdout, data.n_users, k)[f"recall_at_{k}"]

    return _search(recall, n, cfg)


def _search(recall, n: int, cfg: DictConfig) -> tuple[np.ndarray, float, int]:
    """The weight vector (scaled to max 1) of n members that maximises `recall(w)`, by cfg.search."""
    if cfg.search.method == "grid":
        tried = [(recall(w), w) for w in grid_vectors(cfg.search.grid, n)]
        # first best in grid order: deterministic
        best_recall, best = max(tried, key=lambda t: t[0])
    else:
        try:
            import optuna
        except ImportError:
            raise ConfigError("search.method", "optuna is not installed: pip install optuna") from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=int(cfg.search.seed)))
        with warnings.catch_warnings():  # enqueue_trial is "experimental" in optuna 2.x
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.enqueue_trial({f"w{i}": 1.0 for i in range(n)})

        def objective(trial) -> float:
            w = np.array([trial.suggest_float(f"w{i}", 0.0, 1.0) for i in range(n)])
            return recall(w) if (w > 0).any() else 0.0

        study.optimize(objective, n_trials=int(cfg.search.trials))
        best = np.array([study.best_params[f"w{i}"] for i in range(n)])
        best_recall, tried = study.best_value, study.trials
    return best / best.max(), float(best_recall), len(tried)


# ------------------------------------------------------------------ the command
def run_ensemble(cfg: DictConfig) -> float | None:
    """Fuse the member runs into a submission, logged as its own MLflow run; returns holdout Recall@k
    (None when the members were trained with split=none)."""
    from recmovie.pipeline import load_data

    check_config(cfg)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per member file
    k, top_n = int(cfg.eval.k), int(cfg.top_n)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    client = setup_mlflow(uri).MlflowClient()
    members = find_members(client, cfg)
    check_members(members, top_n)
    learn = cfg.search.method is not None or cfg.method == "rerank"  # from the members' validation candidates
    weights = member_weights(cfg.weights, members) if not learn else None
    base = members[0]
    with tempfile.TemporaryDirectory(prefix="recmovie-ensemble-") as tmp:
        base_cfg = OmegaConf.load(_artifact(uri, base, "config.yaml", tmp))
        base_cfg.paths.cache_dir = cfg.paths.cache_dir
        data = load_data(base_cfg)
        if data.fingerprint != base.data.params.get("data_fingerprint"):
            raise DataError(base_cfg.data.get("dir", base_cfg.data.name),
                            f"the data changed since run {base.info.run_id} was trained (fingerprint differs)")
        lists = [read_candidates(_artifact(uri, r, "candidates.csv", tmp), data, top_n, f"run {r.info.run_id}")
                 for r in members]
        if learn:
            val_data = data.fit_part()
            if not len(val_data.holdout):
                raise ConfigError("method" if cfg.method == "rerank" else "search.method",
                                  "the members hold no validation part (validation=none): train them with "
                                  "split@validation=competition to learn from it")
            val_lists = [] if cfg.get("full_scores") else [  # full scores: the members' models instead
                read_candidates(_validation_candidates(uri, r, tmp, "method" if cfg.method == "rerank" else "search.method"),
                                val_data, top_n, f"run {r.info.run_id} (validation)") for r in members]
    t0 = time.perf_counter()
    pool = build_pool(lists, data.n_items, top_n)
    search, ranker = {}, None
    if cfg.get("full_scores"):
        topk, search, weights = full_score_blend(cfg, uri, members, data, val_data if learn else None, weights)
        n_filled = 0
    elif cfg.method == "rerank":
        from recmovie.rerank import feature_names, fit_ranker, pair_features, validation_recall
        from recmovie.rerank import labels as pair_labels

        r = cfg.rerank
        val_pool = build_pool(val_lists, data.n_items, top_n)
        x_val = pair_features(val_pool, val_data, float(r.recent_share), float(r.window_days))
        y_val = pair_labels(val_pool, val_data)
        ranker = fit_ranker(x_val, y_val, val_pool.users, feature_names(len(members)),
                            {**OmegaConf.to_container(r, resolve=True), "k": k})
        weights = np.ones(len(members))
        search = validation_recall(ranker, val_pool, x_val, val_data, k)
        fused = ranker.predict(pair_features(pool, data, float(r.recent_share), float(r.window_days)))
    else:
        if weights is None:
            weights, best_recall, trials = search_weights(build_pool(val_lists, data.n_items, top_n), val_data, cfg)
            search = {f"val_recall_at_{k}": best_recall, "search_trials": trials}
        fused = fuse(pool, cfg.method, weights, float(cfg.rrf_k))
    if not cfg.get("full_scores"):
        topk, n_filled = ranked_lists(pool, fused, data, int(cfg.candidates.n), k)
    fit_seconds = time.perf_counter() - t0
    metrics = evaluate(topk.items, topk.users, data.holdout, data.n_users, k)
    if n_filled:
        log.warning("%d user(s) had fewer than %d items from the members: filled by popularity", n_filled, k)

    models = [model_of(r) for r in members]
    ids = [r.info.run_id for r in members]
    logged = OmegaConf.to_container(cfg, resolve=True)
    logged.update(
        model={"name": "ensemble", "method": cfg.method, "top_n": top_n,
               **({"rrf_k": cfg.rrf_k} if cfg.method == "rrf" else {}),
               **({"rerank": OmegaConf.to_container(cfg.rerank, resolve=True)} if cfg.method == "rerank" else {}),
               "weights": [round(float(w), 4) for w in weights], "members": ids, "member_models": models},
        **{key: OmegaConf.to_container(base_cfg[key], resolve=True) for key in ("data", "split", "validation", "confidence")
           if key in base_cfg},
    )
    tags = {"model": "ensemble", "method": cfg.method, "data": base_cfg.data.name, "split": base_cfg.split.name,
            "members": ",".join(ids), "member_models": ",".join(models), "data_fingerprint": data.fingerprint}
    experiment = cfg.tracking.experiment or client.get_experiment(base.info.experiment_id).name
    out_dir = Path(cfg.paths.output_dir)
    tags["output_dir"] = str(out_dir.resolve())
    with start_run(uri, str(experiment), cfg.tracking.get("run_name") or f"ensemble-{cfg.method}", tags,
                   cfg.tracking.enabled) as run:
        run.log_params({**flatten(logged), "data_fingerprint": data.fingerprint})
        run.log_text(OmegaConf.to_yaml(logged), "config.yaml")
        table = member_table(members, weights, k)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "members.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_submission(out_dir / "submission.csv", topk, data, k)
        write_candidates(out_dir / "candidates.csv", topk, data)
        run.log_metrics({**metrics, **search, "fit_seconds": fit_seconds, "filled_users": n_filled})
        for name in ("submission.csv", "candidates.csv", "members.csv"):
            run.log_artifact(out_dir / name)
        if ranker is not None:
            from recmovie.rerank import save_ranker

            run.log_metrics({"ranker_rounds": ranker.rounds, "val_ranker_ndcg": ranker.val_ndcg})
            for path in save_ranker(ranker, out_dir / "ranker"):
                run.log_artifact(path, "ranker")
        print_summary(cfg, table, metrics, search, k, out_dir, run.run_id)
    return metrics.get(f"recall_at_{k}")


def _validation_candidates(uri: str, run, dst: str, key: str = "search.method") -> Path:
    names = {a.path for a in setup_mlflow(uri).MlflowClient(uri).list_artifacts(run.info.run_id)}
    if "val_candidates.csv" not in names:
        raise ConfigError(key, f"run {run.info.run_id} ({model_of(run)}) has no val_candidates.csv (trained without "
                          "a validation part, by an older version, or closed-form with split=none, which fits "
                          "everything at once): retrain it with refit=true")
    return _artifact(uri, run, "val_candidates.csv", dst)


def _artifact(uri: str, run, name: str, dst: str) -> Path:
    folder = Path(dst) / run.info.run_id
    try:
        return download_run_file(uri, run.info.run_id, name, folder)
    except LookupError:
        raise
    except Exception as e:
        raise DataError(f"run {run.info.run_id}", f"cannot read its artifact {name}: {e}") from None


def member_table(members: list, weights: np.ndarray, k: int) -> pd.DataFrame:
    cols = [f"recall_at_{k}", f"recall_at_{k}_last", f"recall_at_{k}_random", f"ndcg_at_{k}"]
    return pd.DataFrame([
        {"run_id": r.info.run_id, "model": model_of(r), "weight": round(float(w), 4),
         **{c: r.data.metrics.get(c, np.nan) for c in cols}}
        for r, w in zip(members, weights)
    ])


def print_summary(cfg, table: pd.DataFrame, metrics: dict, search: dict, k: int, out_dir: Path,
                  run_id: str | None) -> None:
    cols = [f"recall_at_{k}", f"recall_at_{k}_last", f"recall_at_{k}_random", f"ndcg_at_{k}"]
    head = f"  {'member':<24} {'weight':>7} {'R@' + str(k):>7} {'last':>7} {'random':>7} {'NDCG':>7}"
    lines = [f"ensemble {cfg.method} of {len(table)} runs, top_n {cfg.top_n}", head]
    for row in table.itertuples(index=False):
        vals = " ".join(f"{getattr(row, c):>7.4f}" for c in cols)
        lines.append(f"  {row.model + ' ' + row.run_id[:8]:<24} {row.weight:>7.3f} {vals}")
    if metrics:
        lines.append(f"  {'ensemble':<24} {'':>7} " + " ".join(f"{metrics.get(c, np.nan):>7.4f}" for c in cols))
    else:
        lines.append("  members trained with split=none: no metrics")
    if search and cfg.method == "rerank":
        lines.append(f"  re-ranked: validation Recall@{k} {search[f'val_recall_at_{k}']:.4f} on the {search['val_users']:.0f} "
                     f"validation users early stopping held out (first member alone: "
                     f"{search[f'val_recall_at_{k}_first_member']:.4f})")
    elif search:
        w = ",".join(f"{x:g}" for x in table["weight"])
        lines.append(f"  searched weights ({cfg.search.method}, {search['search_trials']} tried on the validation "
                     f"part, val Recall@{k} {search[f'val_recall_at_{k}']:.4f}): weights=[{w}]")
    lines.append(f"  submission: {out_dir / 'submission.csv'}")
    if run_id:
        lines.append(f"  mlflow run: {run_id}")
    print("\n".join(lines), flush=True)
