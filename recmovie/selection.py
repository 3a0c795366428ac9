"""How a run fits and selects: fit modes, the validation probe and refit, and `tune`.

The three parts of the data (recmovie/data/prepare.py): the model fits on the FIT part, selects
(early stopping, epoch count, a `tune` grid point) on the VALIDATION part, and is scored on the
TEST part, which nothing here ever sees.
"""
from __future__ import annotations

import copy
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig

from recmovie.data.prepare import PreparedData
from recmovie.errors import ConfigError
from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import TopK, rank, release_year_filter
from recmovie.models.base import Recommender
from recmovie.schema import Schema
from recmovie.tracking import resolve_tracking_uri

log = logging.getLogger(__name__)


def available_memory() -> int | None:
    """Bytes the kernel reports as available (Linux's MemAvailable); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fit_mode(cfg: DictConfig, model: Recommender) -> str:
    """`validate`: fit on the fit part, select on validation, keep that model; `refit`: then fit a
    fresh copy on the whole training part (for the epoch count found); `everything`: fit once on the
    whole training part, no validation (closed-form models with split=none: nothing to select)."""
    has_val = cfg.validation.name != "none"
    if cfg.refit == "auto":
        if cfg.split.name == "none":
            return "refit" if model.trained and has_val else "everything"
        return "validate" if has_val else "everything"
    return "refit" if cfg.refit else ("validate" if has_val else "everything")


@dataclass
class Fitted:
    """What fitting produced: the final model, and the validation ranking it was selected by."""

    model: Recommender
    val_topk: TopK | None = None
    val_metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # epochs, best_epoch, refit_epochs
    val_model: Recommender | None = None  # refit with save_val_model: the model fitted without the validation part


def checkpoint_dir(cfg: DictConfig) -> Path:
    """Where gradient trainings keep their state after every epoch (what `resume=<run id>` continues
    from); removed when the run finishes."""
    return Path(cfg.paths.output_dir) / "checkpoints"


def fit_once(model: Recommender, train: PreparedData, val: PreparedData | None, cfg: DictConfig, run,
             max_epochs: int | None = None, prefix: str = "", prefitted: bool = False) -> dict:
    """One fit of `model` on `train` (closed form, or Lightning selecting on `val`); the training
    curves go to the run, prefixed for a refit. `prefitted`: a closed-form model fitted on `train`
    already, whose curves only are logged."""
    if not model.trained:
        if not prefitted:
            model.fit(train)
        for step, metrics in model.fit_log:
            run.log_metrics({(f"{prefix}-{k}" if prefix else k): v for k, v in metrics.items()}, step=step)
        return {}
    # Lightning costs about 5 s of import: only runs of gradient models pay it
    from recmovie.training import fit_lightning, run_logger

    logger = run_logger(run.run_id, resolve_tracking_uri(cfg.tracking.uri), prefix)
    # one state file per training of the run (the probe and the refit), so a resumed run
    # continues the one that was interrupted and skips those that had finished
    return fit_lightning(model, train, val, cfg, logger, max_epochs=max_epochs,
                         checkpoint=checkpoint_dir(cfg) / f"{prefix or 'fit'}.ckpt", resume=bool(cfg.get("resume")))


def validation_ranking(model: Recommender, fit_data: PreparedData, cfg: DictConfig, depth: int,
                       users: np.ndarray | None = None) -> tuple[TopK, float]:
    """The validation users' (or the given ones') top `depth` by `model` (fitted on the fit part),
    and their Recall@k."""
    hidden = fit_data.holdout if users is None else fit_data.holdout.of_users(users)
    users = np.unique(hidden.user).astype(np.int64) if users is None else users
    k = int(cfg.eval.k)
    top = rank(model, fit_data, k=depth, chunk_size=int(cfg.eval.chunk_size), users=users,
               item_filter=release_year_filter(cfg.get("filter"), fit_data))
    return top, evaluate(top.items, top.users, hidden, fit_data.n_users, k)[f"recall_at_{k}"]


def tune_data(data: PreparedData, model_class: type, cfg: DictConfig) -> PreparedData:
    """The fit part, with only its `tune_items` most popular items for a model whose every grid
    point costs items^3 (`tune_on_popular_items`): the grid is searched on the items that carry
    most of the interactions, and the chosen values then fit the whole catalogue."""
    fit_data, cap = data.fit_part(), cfg.get("tune_items")
    if not model_class.tune_on_popular_items or cap is None or fit_data.n_items <= int(cap):
        return fit_data
    top = np.sort(np.argsort(-fit_data.item_popularity, kind="stable")[: int(cap)])
    share = fit_data.item_popularity[top].sum() / max(fit_data.item_popularity.sum(), 1)
    log.info("tune: searching on the %d most popular of %d items (%.1f%% of the fit part's interactions; "
             "tune_items)", len(top), fit_data.n_items, 100 * share)
    return fit_data.of_items(top)


def tune_users(fit_data: PreparedData, cfg: DictConfig) -> np.ndarray:
    """The validation users every grid point is scored on: all of them, or a fixed random
    `tune_users` of them (the same for every point, so the points' figures stay paired)."""
    users = np.unique(fit_data.holdout.user).astype(np.int64)
    cap = cfg.get("tune_users")
    if cap is None or len(users) <= int(cap):
        return users
    rng = np.random.default_rng(int(cfg.validation.seed))
    return np.sort(rng.choice(users, int(cap), replace=False))


def fit_model(model: Recommender, data: PreparedData, cfg: DictConfig, run, prefitted: bool = False) -> Fitted:
    """Fit as `fit_mode` says; rank the validation users with the selected model. `prefitted`: a
    closed-form model fitted on the fit part already, which a `validate` fit keeps as it is."""
    mode = fit_mode(cfg, model)
    if mode == "everything":
        return Fitted(model, info=fit_once(model, data, None, cfg, run))
    fit_data = data.fit_part()
    if model.trained:
        log.info("plan: train on the fit part for up to %d epochs, early-stopping on the validation part%s",
                 int(cfg.trainer.get("max_epochs") or model.params.max_epochs),
                 "; then train a fresh copy on the whole training part for the best epoch count" if mode == "refit" else "")
    fresh = copy.deepcopy(model) if mode == "refit" else None  # same initial weights as the probe
    info = fit_once(model, fit_data, fit_data, cfg, run, prefitted=prefitted and mode == "validate")
    val_topk, _ = validation_ranking(model, fit_data, cfg, int(cfg.candidates.n))
    k = int(cfg.eval.k)
    val_metrics = {f"val_{key}": v for key, v in evaluate(val_topk.items, val_topk.users, fit_data.holdout,
                                                          data.n_users, k).items()}
    if mode == "refit":
        epochs = None
        if model.trained:
            epochs = info["best_epoch"] or info["epochs"]
            log.info("refit: %d epochs (the validation part's best); training on the whole training part", epochs)
            info["refit_epochs"] = epochs
        fit_once(fresh, data, None, cfg, run, max_epochs=epochs, prefix="refit")  # curves: refit-train_loss, ...
        probe, model = model, fresh
        return Fitted(model, val_topk, val_metrics, info, probe if cfg.get("save_val_model") else None)
    return Fitted(model, val_topk, val_metrics, info)


def tune_grid(cfg: DictConfig, model: Recommender, overrides: list[str]) -> dict[str, list]:
    """The model YAML's `tune` grid, without the keys the command line set (empty: no tuning)."""
    grid = cfg.model.get("tune") if cfg.get("tune", False) else None
    if not grid or model.trained:
        return {}
    if not isinstance(grid, DictConfig) or not all(isinstance(v, ListConfig) and len(v) for v in grid.values()):
        raise ConfigError("model.tune", f"must map hyper-parameters to non-empty lists of values, got {grid}")
    given = {o.split("=", 1)[0].lstrip("+~").removeprefix("model.") for o in overrides if o.lstrip("+~").startswith("model.")}
    return {key: list(values) for key, values in grid.items() if key not in given}


def outward_point(grid: dict[str, list], best: dict, extendable: list[str], tried: list[dict]) -> dict | None:
    """A point one geometric step past the grid's edge, for the first `extendable` key whose best
    value is the largest (or smallest, above 0) tried: the grid's own ratio between its two outermost
    values is the step. None when the best is inside the grid on every extendable key."""
    for key in extendable:
        values = sorted(v for v in grid[key] if isinstance(v, (int, float)) and not isinstance(v, bool))
        if len(values) < 2 or best[key] not in (values[0], values[-1]):
            continue
        if best[key] == values[-1] and values[-2] > 0:
            new = values[-1] * values[-1] / values[-2]
        elif best[key] == values[0] and values[0] > 0:
            new = values[0] * values[0] / values[1]
        else:
            continue
        new = max(1, round(new)) if all(isinstance(v, int) for v in values) else float(f"{new:.3g}")
        point = {**best, key: new}
        if new not in grid[key] and point not in tried:
            grid[key] = [*grid[key], new]
            return point
    return None


def tune_model(cfg: DictConfig, grid: dict[str, list], data: PreparedData, run, build,
               extendable: list[str] = (), keep: bool = False) -> tuple[dict, Recommender | None]:
    """Every combination of `grid` fitted on the fit part (a model that `tune_on_popular_items`: on
    its `tune_items` most popular items) and scored on the validation part; while
    the best lies on the grid's edge for an `extendable` key, one more point outward (at most
    `tune_extra_points`). Returns the first best (grid order) and, with `keep`, its fitted model
    where memory allows holding it beside the next point's (else None). `build(values)` makes the
    model."""
    fit_data, k = tune_data(data, type(build({key: values[0] for key, values in grid.items()})), cfg), int(cfg.eval.k)
    keep = keep and fit_data.n_items == data.n_items  # a model of the popular items alone is not the run's
    users = tune_users(fit_data, cfg)
    rows, tried, shared, kept = [], [], [], [None]
    t_start = time.perf_counter()

    def score(chosen: dict) -> None:
        model = build(chosen)
        model.build(Schema.from_data(fit_data))
        t0 = time.perf_counter()
        if not shared:  # the work every point shares (EASE: the Gram matrix), once
            shared.append(model.shared_work(fit_data, set(grid)))
        model.fit(fit_data, **shared[0])
        _, recall = validation_ranking(model, fit_data, cfg, k, users)
        rows.append({**chosen, f"val_recall_at_{k}": recall, "seconds": round(time.perf_counter() - t0, 2)})
        tried.append(chosen)
        previous = [r[f"val_recall_at_{k}"] for r in rows[:-1]]
        if keep and (not previous or recall > max(previous)):  # the first best, as `best` below
            # held while the next points fit: only where the memory left holds another of it
            need, free = model.memory_needed(model.schema), available_memory()
            kept[0] = model if need is None or free is None or 2 * need[0] < free else None
        log.info("tune: %s -> val_recall_at_%d %.4f", " ".join(f"{a}={b}" for a, b in chosen.items()), k, recall)

    grid = {key: list(values) for key, values in grid.items()}
    for values in itertools.product(*grid.values()):
        score(dict(zip(grid, values)))
    best = max(rows, key=lambda r: r[f"val_recall_at_{k}"])
    for _ in range(int(cfg.get("tune_extra_points", 0))):
        point = outward_point(grid, {key: best[key] for key in grid}, [e for e in extendable if e in grid], tried)
        if point is None:
            break
        log.info("tune: the best lies on the grid's edge; trying %s", " ".join(f"{a}={b}" for a, b in point.items()))
        score(point)
        best = max(rows, key=lambda r: r[f"val_recall_at_{k}"])
    chosen = {key: best[key] for key in grid}
    shared.clear()
    run.log_metrics({"tune_seconds": time.perf_counter() - t_start})
    log.info("tune: chose %s (val_recall_at_%d %.4f of %d tried, on %d validation users) in %.1f s", chosen, k,
             best[f"val_recall_at_{k}"], len(rows), len(users), time.perf_counter() - t_start)
    run.log_text(pd.DataFrame(rows).to_csv(index=False), "tune.csv")
    run.set_tags({"tuned": " ".join(f"{a}={b}" for a, b in chosen.items())})
    return chosen, kept[0]
