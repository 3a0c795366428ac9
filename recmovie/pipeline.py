"""One run: config -> data -> fit (selecting on validation) -> rank -> metrics -> outputs -> MLflow.

The three parts of the data (recmovie/data/prepare.py): the model fits on the FIT part, selects
(early stopping, epoch count) on the VALIDATION part, and is scored on the TEST part, which
nothing that selects ever sees. A run logs the validation figures as `val_*` and the test figures
under their plain names (`recall_at_10`, ...).
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from recmovie.config import check_run_config
from recmovie.data.prepare import PreparedData, prepare_data
from recmovie.errors import ConfigError
from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import ReleaseYearFilter, TopK, rank
from recmovie.models.base import Recommender, build_model, load_checkpoint, plain, save_checkpoint
from recmovie.schema import Schema
from recmovie.submission import check_recommendable, write_candidates, write_submission
from recmovie.tracking import flatten, resolve_tracking_uri, run_name, start_run

log = logging.getLogger(__name__)

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_global_zero() -> bool:
    """Whether this process is DDP's global rank zero (or no DDP at all). Read from the launchers'
    environment variables, before any Trainer exists: Lightning's `ddp` strategy, torchrun and
    SLURM start the other ranks as copies of the command, which must train but not track or write."""
    return all(int(os.environ.get(v, "0") or 0) == 0 for v in RANK_VARIABLES)


def load_data(cfg: DictConfig, validation: bool = True) -> PreparedData:
    """The run's data; `validation=False` skips carving the validation part (a fit on everything,
    or ranking only)."""
    cache_dir = cfg.paths.cache_dir if cfg.data.get("cache", True) else None
    return prepare_data(cfg.data, cfg.split, cfg.confidence, cache_dir, cfg.get("validation") if validation else None)


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


def run_features(cfg: DictConfig) -> dict | None:
    """The `features` group checked against the data config (a side file it needs and the data
    lacks stops the run here, before any work), as the model's `features` argument."""
    from recmovie.data.features import resolve_features

    features = cfg.get("features")
    return None if features is None else resolve_features(OmegaConf.to_container(features, resolve=True), cfg.data)


@dataclass
class Fitted:
    """What fitting produced: the final model, and the validation ranking it was selected by."""

    model: Recommender
    val_topk: TopK | None = None
    val_metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # epochs, best_epoch, refit_epochs


def checkpoint_dir(cfg: DictConfig) -> Path:
    """Where gradient trainings keep their state after every epoch (what `resume=<run id>` continues
    from); removed when the run finishes."""
    return Path(cfg.paths.output_dir) / "checkpoints"


def _fit_once(model: Recommender, train: PreparedData, val: PreparedData | None, cfg: DictConfig, run,
              max_epochs: int | None = None, prefix: str = "") -> dict:
    if not model.trained:
        model.fit(train)
        for step, metrics in model.fit_log:
            run.log_metrics({(f"{prefix}-{k}" if prefix else k): v for k, v in metrics.items()}, step=step)
        return {}
    from recmovie.training import fit_lightning, run_logger

    logger = run_logger(run.run_id, resolve_tracking_uri(cfg.tracking.uri), prefix)
    # one state file per training of the run (the probe and the refit), so a resumed run
    # continues the one that was interrupted and skips those that had finished
    return fit_lightning(model, train, val, cfg, logger, max_epochs=max_epochs,
                         checkpoint=checkpoint_dir(cfg) / f"{prefix or 'fit'}.ckpt", resume=bool(cfg.get("resume")))


def ranking_filter(cfg: DictConfig, data: PreparedData) -> ReleaseYearFilter | None:
    """The `filter` section's item filter for ranking `data` (None: nothing filtered)."""
    f = cfg.get("filter") or {}
    if not f.get("release_year", False):
        return None
    if "year" not in data.dataset.side:
        raise ConfigError("filter.release_year", "needs the items' release years (years.tsv in the data folder, or "
                          "years in MovieLens titles); this data has none")
    slack = f.get("slack_years", 0)
    if not isinstance(slack, int) or isinstance(slack, bool):
        raise ConfigError("filter.slack_years", f"must be an integer, got {slack!r}")
    return ReleaseYearFilter(data, slack)


def tune_grid(cfg: DictConfig, model: Recommender, overrides: list[str]) -> dict[str, list]:
    """The model YAML's `tune` grid, without the keys the command line set (empty: no tuning)."""
    grid = cfg.model.get("tune") if cfg.get("tune", False) else None
    if not grid or model.trained:
        return {}
    if not isinstance(grid, DictConfig) or not all(isinstance(v, ListConfig) and len(v) for v in grid.values()):
        raise ConfigError("model.tune", f"must map hyper-parameters to non-empty lists of values, got {grid}")
    given = {o.split("=", 1)[0].lstrip("+~").removeprefix("model.") for o in overrides if o.lstrip("+~").startswith("model.")}
    return {key: list(values) for key, values in grid.items() if key not in given}


def tune_model(cfg: DictConfig, grid: dict[str, list], data: PreparedData, run, build) -> dict:
    """Every combination of `grid` fitted on the fit part and scored on the validation part; returns
    the first best (grid order). `build(values)` makes the model with those values."""
    import itertools

    fit_data = data.fit_part()
    users = np.unique(fit_data.holdout.user).astype(np.int64)
    k = int(cfg.eval.k)
    rows = []
    for values in itertools.product(*grid.values()):
        chosen = dict(zip(grid, values))
        model = build(chosen)
        model.build(Schema.from_data(fit_data))
        t0 = time.perf_counter()
        model.fit(fit_data)
        top = rank(model, fit_data, k=k, chunk_size=int(cfg.eval.chunk_size), users=users,
                   item_filter=ranking_filter(cfg, fit_data))
        recall = evaluate(top.items, top.users, fit_data.holdout, data.n_users, k)[f"recall_at_{k}"]
        rows.append({**chosen, f"val_recall_at_{k}": recall, "seconds": round(time.perf_counter() - t0, 2)})
        log.info("tune: %s -> val_recall_at_%d %.4f", " ".join(f"{a}={b}" for a, b in chosen.items()), k, recall)
    best = max(rows, key=lambda r: r[f"val_recall_at_{k}"])
    chosen = {key: best[key] for key in grid}
    log.info("tune: chose %s (val_recall_at_%d %.4f of %d tried)", chosen, k, best[f"val_recall_at_{k}"], len(rows))
    import pandas as pd

    run.log_text(pd.DataFrame(rows).to_csv(index=False), "tune.csv")
    run.set_tags({"tuned": " ".join(f"{a}={b}" for a, b in chosen.items())})
    return chosen


def fit_model(model: Recommender, data: PreparedData, cfg: DictConfig, run) -> Fitted:
    """Fit as `fit_mode` says; rank the validation users with the selected model."""
    mode = fit_mode(cfg, model)
    if mode == "everything":
        return Fitted(model, info=_fit_once(model, data, None, cfg, run))
    fit_data = data.fit_part()
    fresh = copy.deepcopy(model) if mode == "refit" else None  # same initial weights as the probe
    info = _fit_once(model, fit_data, fit_data, cfg, run)
    val_users = np.unique(fit_data.holdout.user).astype(np.int64)
    val_topk = rank(model, fit_data, k=int(cfg.candidates.n), chunk_size=int(cfg.eval.chunk_size), users=val_users,
                    item_filter=ranking_filter(cfg, fit_data))
    k = int(cfg.eval.k)
    val_metrics = {f"val_{key}": v for key, v in evaluate(val_topk.items, val_topk.users, fit_data.holdout,
                                                          data.n_users, k).items()}
    if mode == "refit":
        epochs = None
        if model.trained:
            epochs = info["best_epoch"] or info["epochs"]
            log.info("refit: %d epochs (the validation part's best); training on the whole training part", epochs)
            info["refit_epochs"] = epochs
        _fit_once(fresh, data, None, cfg, run, max_epochs=epochs, prefix="refit")  # curves: refit-train_loss, ...
        model = fresh
    return Fitted(model, val_topk, val_metrics, info)


def hydra_context() -> dict[str, str]:
    """Sweep membership, overrides and log file of the current Hydra job (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return {}
    out = {"hydra_overrides": " ".join(hc.overrides.task) or "(none)", "overrides": list(hc.overrides.task),
           "log_file": str(Path(hc.runtime.output_dir) / f"{hc.job.name}.log")}
    if str(hc.mode) == "RunMode.MULTIRUN":
        out["sweep_id"] = Path(hc.sweep.dir).name
        out["sweep_dir"] = str(Path(hc.sweep.dir).resolve())
        out["sweep_job"] = str(hc.job.num)
    return out


def write_outputs(out_dir: Path, data: PreparedData, topk: TopK, k: int) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "submission": write_submission(out_dir / "submission.csv", topk, data, k),
        "candidates": write_candidates(out_dir / "candidates.csv", topk, data),
    }


# overrides a resumed run may take: where things are, not what is trained
RESUME_OVERRIDES = ("resume=", "tracking.", "hydra.", "hydra/")


def resumed_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """The config of the run `cfg.resume` (an interrupted training: KILLED, FAILED, or RUNNING with
    its process gone), to continue it in the same MLflow run and output folder; and the tags that
    count the resumptions. Other overrides are refused: they would change what was trained."""
    from recmovie.tracking import get_run, process_gone, run_file

    run_id = str(cfg.resume)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    run = get_run(uri, run_id, key="resume", finished=False)
    status, tags = run.info.status, run.data.tags
    if status == "FINISHED":
        raise ConfigError("resume", f"run {run_id} has FINISHED: nothing to resume")
    if status == "RUNNING" and not process_gone(tags):
        raise ConfigError("resume", f"run {run_id} is RUNNING (process {tags.get('pid', '?')} on "
                          f"{tags.get('host', '?')}); stop it first, or wait")
    extra = [o for o in overrides if not o.lstrip("+").startswith(RESUME_OVERRIDES)]
    if extra:
        raise ConfigError("resume", f"continues run {run_id} with its own config; drop the other overrides "
                          f"({' '.join(extra)})")
    with run_file(uri, run, "config.yaml", key="resume") as path:
        saved = OmegaConf.load(path)
    with open_dict(saved):
        saved.resume = run_id
        saved.tracking.uri = cfg.tracking.uri
    log.info("resuming MLflow run %s (%s, was %s) in %s", run_id, run.info.run_name, status, saved.paths.output_dir)
    return saved, {"resumed": str(int(tags.get("resumed", "0")) + 1), "resumed_from_status": status}


def train(cfg: DictConfig) -> float | None:
    """Run one training job; returns the validation Recall@k (what sweepers select on; None
    without a validation part). With `resume=<run id>`, continue that interrupted run."""
    ctx = hydra_context()
    log_file, overrides = ctx.pop("log_file", None), ctx.pop("overrides", [])
    resume_tags = {}
    if cfg.get("resume"):
        cfg, resume_tags = resumed_config(cfg, overrides)
        overrides = []
    check_run_config(cfg)
    loss = cfg.loss.name if cfg.get("loss") and cfg.loss.name != "default" else None
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), loss=loss, features=run_features(cfg))
    if model.trained:
        from recmovie.training import trainer_arguments

        trainer_arguments(cfg.trainer)  # an unknown Trainer key fails now, not after the data is read
    grid = tune_grid(cfg, model, overrides)
    mode = fit_mode(cfg, model)
    rank_zero = is_global_zero()
    out_dir = Path(cfg.paths.output_dir)
    k = int(cfg.eval.k)
    kinds = list(cfg.confidence.get("kinds") or [])
    tags = {"model": cfg.model.name, "data": cfg.data.name, "split": cfg.split.name,
            "validation": cfg.validation.name, "fit_mode": mode, "loss": model.params.get("loss", "none"),
            "confidence": "+".join(kinds) or "none", "output_dir": str(out_dir.resolve()), **ctx, **resume_tags}
    resolved = OmegaConf.to_container(cfg, resolve=True)
    name = cfg.tracking.get("run_name") or run_name(str(cfg.model.name), overrides)
    # the store opens while the data is read (read-only work; 2-3 s of MLflow import and store
    # set-up otherwise added to every run); a broken store stops the run right after, before the fit
    with start_run(resolve_tracking_uri(cfg.tracking.uri), str(cfg.tracking.experiment), name, tags,
                   bool(cfg.tracking.enabled) and rank_zero, overlap=True, resume=cfg.get("resume")) as run:
        try:
            # locations are tags, not params: a comparison view should not plot them (and a
            # resumed run may find its store elsewhere: MLflow refuses a param that changes)
            tuned_keys = tuple(f"model.{key}" for key in grid)  # logged once chosen
            run.log_params({k_: v for k_, v in flatten(resolved).items()
                            if not k_.startswith(("paths.", "tracking.uri", "resume")) and k_ not in tuned_keys})
            run.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
            data = load_data(cfg, validation=mode != "everything" or bool(grid))
            check_recommendable(data, k)  # before the fit: a submission it could not make
            item_filter = ranking_filter(cfg, data)  # and a filter it could not apply
            run.opened()
            run.log_params({"data_fingerprint": data.fingerprint})
            run.set_tags({"data_fingerprint": data.fingerprint, "data_cache": data.info["cache"]})
            if grid and len(data.validation):
                def build(values: dict) -> Recommender:
                    spec = {**OmegaConf.to_container(cfg.model, resolve=True), **values}
                    return build_model(spec, loss=loss, features=run_features(cfg))

                chosen = tune_model(cfg, grid, data, run, build)
                model = build(chosen)
                resolved["model"].update(chosen)
            elif grid:
                log.warning("tune: no validation part (validation=none): the YAML's values are used")
            run.log_params({f"model.{key}": resolved["model"][key] for key in grid})
            torch.manual_seed(int(cfg.seed))  # initial weights of gradient models
            schema = Schema.from_data(data)
            model.build(schema)

            t0 = time.perf_counter()
            fitted = fit_model(model, data, cfg, run)
            fit_seconds = time.perf_counter() - t0
            if not rank_zero:  # another DDP process: it has trained its share; rank zero writes
                return None
            model = fitted.model
            t0 = time.perf_counter()
            topk = rank(model, data, k=int(cfg.candidates.n), chunk_size=int(cfg.eval.chunk_size), item_filter=item_filter)
            predict_seconds = time.perf_counter() - t0
            metrics = evaluate(topk.items, topk.users, data.holdout, data.n_users, k)

            paths = write_outputs(out_dir, data, topk, k)
            if fitted.val_topk is not None:
                paths["val_candidates"] = write_candidates(out_dir / "val_candidates.csv", fitted.val_topk, data)
            ckpt = model.checkpoint()
            ckpt.update(config=resolved, data_fingerprint=data.fingerprint,
                        item_ids=plain(data.dataset.item_ids), user_ids=plain(data.dataset.user_ids))
            # large (an EASE matrix is n_items^2 floats): written once, straight into a local store
            model_dir = run.local_artifact_dir()
            model_path = (model_dir / "model" if model_dir else out_dir) / "model.pt"
            save_checkpoint(ckpt, model_path)
            timings = {"fit_seconds": fit_seconds, "predict_seconds": predict_seconds,
                       "data_seconds": data.info["seconds"]}
            epochs = {key: float(v) for key, v in fitted.info.items() if v is not None and key != "best_score"}
            # the selection figures one step past the training curves (epochs count from 1), so
            # MLflow's latest value of val_recall_at_k is the kept model's
            run.log_metrics(fitted.val_metrics, step=int(fitted.info.get("epochs") or 0) + 1)
            run.log_metrics({**metrics, **timings, **epochs})
            for path in paths.values():
                run.log_artifact(path)
            if model_dir is None:
                run.log_artifact(model_path, "model")
            run.set_tags({"checkpoint": str(model_path)})
            report(cfg.model.name, data, k, fitted.val_metrics, metrics, timings, out_dir, run.run_id, model_path)
            shutil.rmtree(checkpoint_dir(cfg), ignore_errors=True)  # the run is complete: nothing to resume
        except KeyboardInterrupt:
            if run.run_id and model.trained and checkpoint_dir(cfg).is_dir():
                print(f"the training can go on from its last epoch: python train.py resume={run.run_id}",
                      file=sys.stderr, flush=True)
            raise
        finally:
            if log_file and Path(log_file).is_file():  # a resumption's own log beside the first one's
                run.log_artifact(log_file, "resumed" if resume_tags else None)
    return fitted.val_metrics.get(f"val_recall_at_{k}")


def _metric_rows(metrics: dict, prefix: str, label: str, k: int) -> list[str]:
    parts = sorted({key.rsplit("_", 1)[-1] for key in metrics if key.startswith(prefix + "recall_at_")
                    and not key[-1].isdigit()})
    rows = []
    for part, suffix in [("all", "")] + [(p, f"_{p}") for p in parts]:
        rows.append(f"  {label:<11} {part:<8} {metrics[f'{prefix}recall_at_{k}{suffix}']:>10.4f} "
                    f"{metrics[f'{prefix}ndcg_at_{k}{suffix}']:>9.4f}")
    return rows


def report(name: str, data: PreparedData, k: int, val_metrics: dict, metrics: dict, timings: dict, out_dir: Path,
           run_id: str | None, checkpoint: Path | None = None) -> None:
    """The console summary: validation figures (what selected the model) and test figures (what
    nothing selected on), each overall and per hidden part."""
    lines = [f"model {name}: {data.n_users} users, {data.n_items} items, data cache {data.info['cache']}"]
    if metrics or val_metrics:
        lines.append(f"  {'':<11} {'part':<8} {f'Recall@{k}':>10} {f'NDCG@{k}':>9}")
    if val_metrics:
        lines += _metric_rows(val_metrics, "val_", "validation", k)
    if metrics:
        lines += _metric_rows(metrics, "", "test", k)
    else:
        lines.append("  test: nothing hidden (split=none): no test metrics")
    lines.append("  " + ", ".join(f"{key} {v:.2f}" for key, v in timings.items()))
    lines.append(f"  submission: {out_dir / 'submission.csv'}")
    if checkpoint:
        lines.append(f"  checkpoint: {checkpoint}")
    if run_id:
        lines.append(f"  mlflow run: {run_id}   (python predict.py run_id={run_id})")
    print("\n".join(lines), flush=True)


def candidate_grid(cfg: DictConfig, data: PreparedData) -> np.ndarray:
    """[n_users, C] dense item ids (-1: none) of `candidates_from`, another run's candidates.csv
    (its MLflow run id, or the file's path), best first: the items a model re-ranks through
    `score_items` instead of scoring the whole catalogue (a deep model over a cheap model's top-N)."""
    from recmovie.ensemble import read_candidates
    from recmovie.tracking import get_run, run_file

    source = str(cfg.candidates_from)
    if Path(source).is_file():
        df = read_candidates(Path(source), data, 1 << 30, source)
    else:
        uri = resolve_tracking_uri(cfg.tracking.uri)
        run = get_run(uri, source, key="candidates_from")
        with run_file(uri, run, "candidates.csv", key="candidates_from") as path:
            df = read_candidates(path, data, 1 << 30, f"run {source}")
    rank_ = df["rank"].to_numpy(np.int64)
    grid = np.full((data.n_users, int(rank_.max(initial=1))), -1, np.int64)
    grid[df["user"].to_numpy(), rank_ - 1] = df["item"].to_numpy()
    return grid


def predict(cfg: DictConfig) -> Path:
    """Reload a trained model (MLflow run id or checkpoint path) and write a fresh submission."""
    from recmovie.config import check_value
    from recmovie.tracking import get_run, run_file

    if bool(cfg.run_id) == bool(cfg.checkpoint):
        raise ConfigError("run_id/checkpoint", "give exactly one: run_id=<mlflow run id> or checkpoint=<model.pt>")
    k = check_value(cfg, "eval.k", int, 1)
    check_value(cfg, "eval.chunk_size", int, 1)
    if check_value(cfg, "candidates.n", int, 1) < k:
        raise ConfigError("candidates.n", f"must be >= eval.k ({k}), got {cfg.candidates.n}")
    if cfg.run_id:
        uri = resolve_tracking_uri(cfg.tracking.uri)
        # read in place from a local store (a copy otherwise, removed once loaded)
        with run_file(uri, get_run(uri, str(cfg.run_id)), "model/model.pt") as path:
            ckpt = load_checkpoint(path)
    else:
        ckpt = load_checkpoint(Path(cfg.checkpoint))
    train_cfg = OmegaConf.create(ckpt["config"])
    if cfg.data_dir:
        train_cfg.data.dir = str(cfg.data_dir)
    if cfg.split_name:
        if cfg.split_name != "none" and cfg.split_name != train_cfg.split.name:
            raise ConfigError("split_name", "only `none` (every interaction as history) or the run's own split")
        train_cfg.split = OmegaConf.create({"name": str(cfg.split_name)})
    train_cfg.paths.cache_dir = cfg.paths.cache_dir
    model = Recommender.from_checkpoint(ckpt)
    data = load_data(train_cfg, validation=False)
    check_recommendable(data, k)
    if not np.array_equal(data.dataset.item_ids, ckpt["item_ids"].numpy()):
        raise ConfigError("data_dir", "the data's items differ from the items the model was trained on")
    if model.per_user_state and not np.array_equal(data.dataset.user_ids, ckpt["user_ids"].numpy()):
        raise ConfigError("data_dir", "this model holds per-user parameters; the data's users differ from its own")
    out_dir = Path(cfg.paths.output_dir)
    item_filter = ranking_filter(train_cfg if cfg.get("filter") is None else cfg, data)  # null: the run's own
    grid = candidate_grid(cfg, data) if cfg.get("candidates_from") else None
    # a shorter candidate list pads its ranking with -1: refused below, by the users it leaves short
    depth = int(cfg.candidates.n) if grid is None else max(k, min(int(cfg.candidates.n), grid.shape[1]))
    t0 = time.perf_counter()
    topk = rank(model, data, k=depth, chunk_size=int(cfg.eval.chunk_size), candidates=grid, item_filter=item_filter)
    seconds = {"predict_seconds": time.perf_counter() - t0}
    if grid is not None and (short := np.flatnonzero((topk.items[:, :k] < 0).any(1))).size:
        raise ConfigError("candidates_from", f"{cfg.candidates_from} leaves fewer than {k} unseen candidates for "
                                             f"{len(short)} of {data.n_users} users (e.g. user "
                                             f"{data.dataset.user_ids[short[0]]})")
    metrics = evaluate(topk.items, topk.users, data.holdout, data.n_users, k)
    write_outputs(out_dir, data, topk, k)
    report(train_cfg.model.name, data, k, {}, metrics, seconds, out_dir, cfg.run_id)
    return out_dir / "submission.csv"
