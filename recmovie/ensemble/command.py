"""`python ensemble.py`: load the members -> combine them -> publish the ensemble as its own run.

Members must share the data, the split and the validation part, so the ensemble is scored on the
same test part as its members. Whatever is learned (weights, the re-ranker) is learned on the
VALIDATION part: each member's `val_candidates.csv` (ranked by the member as fitted without the
validation part); the test part is only scored, with what was learned.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from recmovie.candidates import write_candidates
from recmovie.cli import say
from recmovie.config import check_ranking_config, check_value
from recmovie.data.prepare import PreparedData
from recmovie.ensemble.fusion import METHODS, FullScoreRows, ScoreBlend, fuse, pool_objective
from recmovie.ensemble.members import (
    check_members, find_members, member_lists, member_models, member_table, member_weights, members_data,
)
from recmovie.ensemble.guard import Verdict, compare_lists, held_out_folds, judge, pool_recall, verdict_metrics
from recmovie.ensemble.pool import Pool, build_pool, ranked_lists
from recmovie.ensemble.rerank import Ranker, check_rerank_config, fit_ranker_on, save_ranker
from recmovie.ensemble.search import check_search_config, search_folds
from recmovie.errors import ConfigError
from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import TopK, rank, release_year_filter
from recmovie.io import atomic_path
from recmovie.runs import PER_MODEL, model_of
from recmovie.submission import write_submission
from recmovie.tracking import flatten, resolve_tracking_uri, setup_mlflow, start_run

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    k = check_value(cfg, "eval.k", int, 1)
    if cfg.method not in METHODS:
        raise ConfigError("method", f"unknown method {cfg.method!r}; choose from {list(METHODS)}")
    if not isinstance(cfg.top_n, int) or cfg.top_n < k:  # before candidates.n, which defaults to it
        raise ConfigError("top_n", f"must be an integer >= eval.k ({k}), got {cfg.top_n!r}")
    check_ranking_config(cfg)
    if not isinstance(cfg.rrf_k, (int, float)) or cfg.rrf_k < 0:
        raise ConfigError("rrf_k", f"must be a number >= 0, got {cfg.rrf_k!r}")
    if not cfg.runs and not cfg.query.experiment:
        raise ConfigError("runs", "name the members: runs=[<run id>,<run id>] and/or query.experiment=<name>")
    if cfg.query.per_model not in PER_MODEL:
        raise ConfigError("query.per_model", f"must be one of {list(PER_MODEL)}, got {cfg.query.per_model!r}")
    if cfg.method == "rerank":
        if cfg.search.method is not None or cfg.weights is not None:
            raise ConfigError("search.method" if cfg.search.method is not None else "weights",
                              "rerank learns how to combine the members: no weights, no weight search")
        check_rerank_config(cfg.rerank)
    for key in ("search.fallback", "rerank.fallback"):
        if not isinstance(OmegaConf.select(cfg, key), bool):
            raise ConfigError(key, f"must be true or false, got {OmegaConf.select(cfg, key)!r}")
    share = cfg.search.held_share
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share < 1:
        raise ConfigError("search.held_share", f"must be a number in (0, 1), got {share!r}")
    if cfg.get("full_scores") and cfg.method != "score_blend":
        raise ConfigError("full_scores", f"only score_blend blends full score rows, got method={cfg.method}")
    head = cfg.get("full_scores_head")
    if head is not None and (not isinstance(head, int) or isinstance(head, bool) or head < 2):
        raise ConfigError("full_scores_head", f"must be null or an integer >= 2, got {head!r}")
    check_search_config(cfg)


@dataclass
class Loaded:
    """The members and what combining them reads."""

    uri: str
    members: list
    base_cfg: DictConfig
    data: PreparedData
    lists: list  # each member's candidates (read_candidates)
    val_data: PreparedData | None = None  # the fit part, whose holdout is the validation part
    val_lists: list = field(default_factory=list)  # each member's validation candidates
    weights: np.ndarray | None = None  # given weights (None: learned)


def load(cfg: DictConfig) -> Loaded:
    uri = resolve_tracking_uri(cfg.tracking.uri)
    client = setup_mlflow(uri).MlflowClient()
    members = find_members(client, cfg)
    if not isinstance(cfg.weights, (list, ListConfig)):  # list weights follow the order the members were named in
        members = reference_first(members, int(cfg.eval.k))
    top_n = int(cfg.top_n)
    check_members(members, top_n)
    weights = None if learns(cfg) else member_weights(cfg.weights, members)
    base_cfg, data = members_data(uri, members[0], cfg.paths.cache_dir)
    loaded = Loaded(uri, members, base_cfg, data, member_lists(uri, members, data, top_n), weights=weights)
    if learns(cfg):
        key = "method" if cfg.method == "rerank" else "search.method"
        loaded.val_data = data.fit_part()
        if not len(loaded.val_data.holdout):
            raise ConfigError(key, "the members hold no validation part (validation=none): train them with "
                                   "split@validation=competition to learn from it")
        if not cfg.get("full_scores"):  # full scores: the members' models instead
            loaded.val_lists = member_lists(uri, members, loaded.val_data, top_n, validation=True, key=key)
    elif not cfg.get("full_scores") and data.val_mask is not None and data.val_mask.any():
        # nothing is learned, but the summary still says how the given weights do against each member
        # on the validation users, where the members' validation candidates allow it
        val_data = data.fit_part()
        try:
            loaded.val_lists = member_lists(uri, members, val_data, top_n, validation=True)
            loaded.val_data = val_data
        except ConfigError as e:
            log.info("the combination is not judged on validation: %s", e)
    return loaded


def reference_first(members: list, k: int) -> list:
    """Members ordered by their own validation figure, best first (runs without one last, in the
    order given): the first member is the reference, whose ranks break the combinations' ties."""
    def figure(run) -> float:
        value = run.data.metrics.get(f"val_recall_at_{k}")
        return -np.inf if value is None else value

    return sorted(members, key=figure, reverse=True)


def learns(cfg: DictConfig) -> bool:
    """Whether the ensemble learns (weights or a ranker) from the members' validation part."""
    return cfg.search.method is not None or cfg.method == "rerank"


@dataclass
class Combined:
    topk: TopK
    weights: np.ndarray  # what the submission used: after a fallback, the member's own (one-hot)
    search: dict = field(default_factory=dict)  # validation figures of what was learned, and the guard's
    ranker: Ranker | None = None
    filled: int = 0  # users the members left short of k items, filled by popularity
    lines: list = field(default_factory=list)  # what the summary says beyond the table (pool recall, guard)
    fallback: str | None = None  # the member whose list was submitted instead, when the guard refused
    searched: np.ndarray | None = None  # the weights a search found, whether the guard kept them or not


def combine(cfg: DictConfig, m: Loaded) -> Combined:
    """The ensemble's ranked lists, by `cfg.method`; what is learned is checked by the guard."""
    if cfg.get("full_scores"):
        return full_score_blend(cfg, m)
    k, top_n, depth = int(cfg.eval.k), int(cfg.top_n), int(cfg.candidates.n)
    pool = build_pool(m.lists, m.data.n_items, top_n)
    if not m.val_lists:  # nothing to learn from, nothing to judge on
        topk, filled = ranked_lists(pool, fuse(pool, cfg.method, m.weights, float(cfg.rrf_k)), m.data, depth, k)
        return Combined(topk, m.weights, filled=filled)
    val_pool = build_pool(m.val_lists, m.data.n_items, top_n)
    ranker, search_figures = None, {}
    if cfg.method == "rerank":
        ranker, val_values, fused = fit_ranker_on(val_pool, m.val_data, pool, m.data, cfg.rerank, k)
        weights, held, fallback = np.ones(len(m.members)), ranker.held_users, bool(cfg.rerank.fallback)
    elif learns(cfg):
        weights, held, val_values, search_figures = searched_weights(cfg, val_pool, m.val_data, len(m.members), k)
        fallback = bool(cfg.search.fallback)
    else:  # weights given: judged on every validation user (nothing learned from them), said, not acted on
        weights, held, fallback = m.weights, np.unique(val_pool.users), False
        val_values = fuse(val_pool, cfg.method, weights, float(cfg.rrf_k))
    if ranker is None:
        fused = fuse(pool, cfg.method, weights, float(cfg.rrf_k))
    verdict = judge(val_pool, val_values, m.val_data, held, k)
    figures = {**verdict_metrics(verdict, k), f"val_recall_at_{k}": verdict.combined, **search_figures,
               "val_pool_recall": pool_recall(val_pool, m.val_data), "pool_recall": pool_recall(pool, m.data)}
    c = Combined(None, weights, figures, ranker, searched=weights if search_figures else None)
    names = member_names(m.members)
    if learns(cfg):
        c.lines = pool_lines(c.search) + verdict_lines(verdict, cfg.method, k, names)
    else:
        c.lines = pool_lines(c.search) + verdict_lines(verdict, f"{cfg.method} (weights given)", k, names,
                                                       "validation users", "better than the best member")
        if not verdict.passed:
            c.lines.append(f"  {names[verdict.best]} alone may do better: search.method=optuna searches the weights "
                           f"(and falls back to the best member when the search does not beat it)")
    if not verdict.passed and fallback:
        fall_back(c, m.members, verdict.best, names, "list",
                  f"{'rerank' if cfg.method == 'rerank' else 'search'}.fallback=false submits the combination")
        fused = -pool.ranks[:, verdict.best]
    c.topk, c.filled = ranked_lists(pool, fused, m.data, depth, k)
    return c


def searched_weights(cfg: DictConfig, val_pool: Pool, val_data: PreparedData, n: int, k: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The weights searched on the validation pool, fold by fold (`search.folds`): (the folds'
    weights averaged, the users the guard judges, one value per validation pool row, each held-out
    user's by the weights of the search that held it out, the search's figures)."""
    def objective_on(learning: np.ndarray):
        return pool_objective(val_pool.subset(learning), with_holdout(val_data, learning), cfg.method,
                              float(cfg.rrf_k), k)

    found = search_folds(objective_on, np.unique(val_pool.users), search_held(val_pool.users, cfg.search), n,
                         cfg.search)
    values = np.zeros(len(val_pool.users))
    for w, out in zip(found.fold_weights, found.held):
        rows = np.isin(val_pool.users, out)
        values[rows] = fuse(val_pool, cfg.method, w, float(cfg.rrf_k))[rows]
    figures = {f"val_search_recall_at_{k}": found.best, "search_trials": found.trials, "search_folds": len(found.held)}
    return found.weights, np.unique(np.concatenate(found.held)), values, figures


def member_name(model: str, run_id: str) -> str:
    """How the summary names a member: its model and the start of its run id."""
    return f"{model} {run_id[:8]}"


def member_names(members: list) -> list[str]:
    """The members' names, in member order."""
    return [member_name(model_of(r), r.info.run_id) for r in members]


def with_holdout(data: PreparedData, users: np.ndarray) -> PreparedData:
    """`data` whose holdout keeps only `users`' rows (the same arrays otherwise)."""
    out = copy.copy(data)
    out.holdout = data.holdout.of_users(users)
    return out


def verdict_lines(verdict: Verdict, name: str, k: int, names: list[str], *how: str) -> list[str]:
    """The guard's line, then (with a hidden part) the parts' figures on the same users, indented."""
    parts = verdict.parts_line(names)
    return [verdict.line(name, k, names, *how)] + ([f"  {parts}"] if parts else [])


def pool_lines(figures: dict) -> list[str]:
    """The candidate pools' recall: the ceiling of any combination of these members' lists."""
    test = figures["pool_recall"]
    line = f"pool: the members' lists hold {figures['val_pool_recall']:.1%} of the validation truth"
    return [line + ("" if np.isnan(test) else f", {test:.1%} of the test truth")]


def full_score_blend(cfg: DictConfig, m: Loaded) -> Combined:
    """score_blend over every item of the members' reloaded models. Weights are searched on the
    validation part with the models fitted without it (a refit member's val_model.pt), then blend
    the final models' scores, as the candidate blends learn on validation candidates."""
    chunk, head = int(cfg.get("chunk_size", 1024)), cfg.get("full_scores_head")
    c = Combined(None, m.weights) if m.weights is not None else full_score_search(cfg, m, chunk, head)
    # the final models, loaded once the search's rows are released (EASE's are n_items^2 floats each)
    c.topk = rank(ScoreBlend(member_models(m.uri, m.members), c.weights, head), m.data, k=int(cfg.candidates.n),
                  chunk_size=chunk, item_filter=release_year_filter(cfg.get("filter"), m.data))
    return c


def full_score_search(cfg: DictConfig, m: Loaded, chunk: int, head: int | None) -> Combined:
    """The full-score blend's weights, searched fold by fold on the validation users' full rows
    from the models fitted without the validation part, and the guard's verdict on them."""
    k = int(cfg.eval.k)
    saw = [f"{r.info.run_id} ({model_of(r)}: {r.data.tags.get('fit_mode')})" for r in m.members
           if r.data.tags.get("fit_mode") != "validate" and r.data.tags.get("val_model") != "true"]
    if saw:
        raise ConfigError("full_scores", "searching weights on full scores needs each member's model fitted "
                          "without the validation part (train them with refit=true save_val_model=true, or split=competition); "
                          "these have none: " + ", ".join(saw))
    users = np.unique(m.val_data.holdout.user).astype(np.int64)
    rows = FullScoreRows(member_models(m.uri, m.members, validation=True), m.val_data, users, chunk, head)
    found = search_folds(lambda learning: rows.objective(np.flatnonzero(np.isin(users, learning)), k), users,
                         search_held(users, cfg.search), len(m.members), cfg.search)
    verdict = full_score_verdict(rows, found.fold_weights,
                                 [np.flatnonzero(np.isin(users, out)) for out in found.held], k)
    names = member_names(m.members)
    search = {**verdict_metrics(verdict, k), f"val_recall_at_{k}": verdict.combined,
              f"val_search_recall_at_{k}": found.best, "search_trials": found.trials, "search_folds": len(found.held)}
    c = Combined(None, found.weights, search, lines=verdict_lines(verdict, "full-score blend", k, names),
                 searched=found.weights)
    if not verdict.passed and bool(cfg.search.fallback):  # the member's own order: its scores alone
        fall_back(c, m.members, verdict.best, names, "ranking", "search.fallback=false submits the blend")
    return c


def fall_back(c: Combined, members: list, best: int, names: list[str], what: str, off: str) -> None:
    """The guard refused the combination: submit member `best`'s own `what` (list or ranking) instead,
    say so (with `off`, how to turn it off) and weigh that member alone."""
    run = members[best]
    c.fallback = f"{run.info.run_id} ({model_of(run)})"
    c.lines.append(f"fallback: submitting {names[best]}'s own {what} (run {run.info.run_id}); {off}")
    c.weights = np.eye(len(members))[best]


def full_score_verdict(rows, fold_weights: list[np.ndarray], held: list[np.ndarray], k: int) -> Verdict:
    """The guard on the held-out validation users (`held`: row indices, one array per fold): each
    fold's blend on the users it held out, against each member's own ranking of them."""
    users = rows.users[np.concatenate(held)]

    def lists(weights: list[np.ndarray]) -> TopK:  # one weight vector per fold
        items = np.concatenate([rows.top(w, at, k) for w, at in zip(weights, held)])
        return TopK(users, items, np.zeros(items.shape, np.float32))

    members = [lists([e] * len(held)) for e in np.eye(len(rows.rows))]
    return compare_lists([lists(fold_weights), *members], rows.data.holdout.of_users(users), rows.data.n_users, k)


def search_held(users: np.ndarray, search: DictConfig) -> list[np.ndarray]:
    """The validation users each fold of the weight search holds out for the guard (`search.folds`)."""
    return held_out_folds(users, search.folds, float(search.held_share), int(search.seed))


def run_ensemble(cfg: DictConfig) -> float | None:
    """Fuse the member runs into a submission, logged as its own MLflow run; returns holdout Recall@k
    (None when the members were trained with split=none)."""
    check_config(cfg)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per member file
    loaded = load(cfg)
    t0 = time.perf_counter()
    combined = combine(cfg, loaded)
    fit_seconds = time.perf_counter() - t0
    k = int(cfg.eval.k)
    metrics = evaluate(combined.topk.items, combined.topk.users, loaded.data.holdout, loaded.data.n_users, k)
    if combined.filled:
        log.warning("%d user(s) had fewer than %d items from the members: filled by popularity", combined.filled, k)
    publish(cfg, loaded, combined, metrics, fit_seconds)
    return metrics.get(f"recall_at_{k}")


def logged_config(cfg: DictConfig, m: Loaded, weights: np.ndarray) -> dict:
    """The ensemble's config as its run logs it: its own `model` section (method, members, weights)
    and the members' data, split, validation and confidence."""
    logged = OmegaConf.to_container(cfg, resolve=True)
    logged.update(
        model={"name": "ensemble", "method": cfg.method, "top_n": int(cfg.top_n),
               **({"rrf_k": cfg.rrf_k} if cfg.method == "rrf" else {}),
               **({"rerank": OmegaConf.to_container(cfg.rerank, resolve=True)} if cfg.method == "rerank" else {}),
               "weights": [round(float(w), 4) for w in weights], "members": [r.info.run_id for r in m.members],
               "member_models": [model_of(r) for r in m.members]},
        **{key: OmegaConf.to_container(m.base_cfg[key], resolve=True)
           for key in ("data", "split", "validation", "confidence") if key in m.base_cfg},
    )
    return logged


def publish(cfg: DictConfig, m: Loaded, c: Combined, metrics: dict, fit_seconds: float) -> None:
    """The ensemble's files, MLflow run and console summary."""
    k, data = int(cfg.eval.k), m.data
    ids, models = [r.info.run_id for r in m.members], [model_of(r) for r in m.members]
    out_dir = Path(cfg.paths.output_dir)
    tags = {"model": "ensemble", "method": cfg.method, "data": m.base_cfg.data.name, "split": m.base_cfg.split.name,
            "members": ",".join(ids), "member_models": ",".join(models), "data_fingerprint": data.fingerprint,
            "output_dir": str(out_dir.resolve())}
    experiment = cfg.tracking.experiment or setup_mlflow(m.uri).MlflowClient().get_experiment(
        m.members[0].info.experiment_id).name
    logged = logged_config(cfg, m, c.weights)
    with start_run(m.uri, str(experiment), cfg.tracking.get("run_name") or f"ensemble-{cfg.method}", tags,
                   cfg.tracking.enabled) as run:
        run.log_params({**flatten(logged), "data_fingerprint": data.fingerprint})
        run.log_text(OmegaConf.to_yaml(logged), "config.yaml")
        table = member_table(m.members, c.weights, k)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "members.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_submission(out_dir / "submission.csv", c.topk, data, k)
        write_candidates(out_dir / "candidates.csv", c.topk, data)
        run.log_metrics({**metrics, **c.search, "fit_seconds": fit_seconds, "filled_users": c.filled})
        for name in ("submission.csv", "candidates.csv", "members.csv"):
            run.log_artifact(out_dir / name)
        if c.ranker is not None:
            run.log_metrics({"ranker_rounds": float(np.mean(c.ranker.rounds)), "val_ranker_ndcg": c.ranker.val_ndcg})
            for path in save_ranker(c.ranker, out_dir / "ranker"):
                run.log_artifact(path, "ranker")
        if c.fallback:
            run.set_tags({"fallback": c.fallback})
        print_summary(cfg, table, metrics, c.search, k, out_dir, run.run_id, c.lines, c.searched)


def print_summary(cfg, table: pd.DataFrame, metrics: dict, search: dict, k: int, out_dir: Path,
                  run_id: str | None, extra: list[str] = (), searched: np.ndarray | None = None) -> None:
    """The console summary; `searched`: the weights a search found, shown even when the guard refused them."""
    cols = [f"recall_at_{k}", f"recall_at_{k}_last", f"recall_at_{k}_random", f"ndcg_at_{k}"]
    head = f"  {'member':<24} {'weight':>7} {'R@' + str(k):>7} {'last':>7} {'random':>7} {'NDCG':>7}"
    lines = [f"ensemble {cfg.method} of {len(table)} runs, top_n {cfg.top_n}", head]
    for row in table.itertuples(index=False):
        vals = " ".join(f"{getattr(row, c):>7.4f}" for c in cols)
        lines.append(f"  {member_name(row.model, row.run_id):<24} {row.weight:>7.3f} {vals}")
    if metrics:
        lines.append(f"  {'ensemble':<24} {'':>7} " + " ".join(f"{metrics.get(c, np.nan):>7.4f}" for c in cols))
    else:
        lines.append("  members trained with split=none: no metrics")
    if "search_trials" in search:
        w = ",".join(f"{x:g}" for x in np.round(searched, 4))  # a search's runs always carry them
        folds = int(search.get("search_folds", 1))
        tried = (f"{search['search_trials']} tried on the validation users the guard does not hold out" if folds == 1 else
                 f"{search['search_trials']} tried in each of {folds} folds, on the validation users the fold does not "
                 f"hold out, the folds' weights averaged")
        lines.append(f"  searched weights ({cfg.search.method}, {tried}, val Recall@{k} "
                     f"{search[f'val_search_recall_at_{k}']:.4f}): weights=[{w}]")
    lines += [f"  {line}" for line in extra]
    lines.append(f"  submission: {out_dir / 'submission.csv'}")
    if run_id:
        lines.append(f"  mlflow run: {run_id}")
    say("\n".join(lines))
