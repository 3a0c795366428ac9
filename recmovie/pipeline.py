"""One run: config -> data -> fit (selecting on validation) -> rank -> metrics -> outputs -> MLflow;
and `predict`, which reloads a finished run's model to rank again.

The three parts of the data (recmovie/data/prepare.py): the model fits on the FIT part, selects
(early stopping, epoch count, `tune`; recmovie/selection.py) on the VALIDATION part, and is scored
on the TEST part, which nothing that selects ever sees. A run logs the validation figures as
`val_*` and the test figures under their plain names (`recall_at_10`, ...).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from recmovie.candidates import load_candidate_grid, write_candidates
from recmovie.cli import say
from recmovie.config import check_ranking_config, check_run_config
from recmovie.data.features import run_features
from recmovie.data.prepare import PreparedData, load_run_data
from recmovie.errors import ConfigError
from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import ReleaseYearFilter, TopK, rank, release_year_filter
from recmovie.models.base import Recommender, build_model, load_checkpoint, plain, save_checkpoint
from recmovie.runs import get_run, model_of, run_file
from recmovie.schema import Schema
from recmovie.selection import Fitted, available_memory, checkpoint_dir, fit_mode, fit_model, tune_grid, tune_model
from recmovie.submission import check_recommendable, write_submission
from recmovie.provenance import process_gone
from recmovie.tracking import flatten, resolve_tracking_uri, run_name, start_run

log = logging.getLogger(__name__)

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
# overrides a resumed run may take: where things are, not what is trained
RESUME_OVERRIDES = ("resume=", "tracking.", "hydra.", "hydra/")


def is_global_zero() -> bool:
    """Whether this process is DDP's global rank zero (or no DDP at all). Read from the launchers'
    environment variables, before any Trainer exists: Lightning's `ddp` strategy, torchrun and
    SLURM start the other ranks as copies of the command, which must train but not track or write."""
    return all(int(os.environ.get(v, "0") or 0) == 0 for v in RANK_VARIABLES)


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


def resumed_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """The config of the run `cfg.resume` (an interrupted training: KILLED, FAILED, or RUNNING with
    its process gone), to continue it in the same MLflow run and output folder; and the tags that
    count the resumptions. Other overrides are refused: they would change what was trained."""
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


# ------------------------------------------------------------------ train, in phases
@dataclass
class Job:
    """A training run as planned before any data is read."""

    cfg: DictConfig
    model: Recommender
    overrides: list[str]
    grid: dict[str, list]  # the `tune` grid still to search
    mode: str  # fit_mode
    tags: dict[str, str]
    log_file: str | None = None
    resumed: bool = False
    prefitted: bool = False  # the model is fitted on the fit part already (tune's chosen point)
    resolved: dict = field(default_factory=dict)  # the config as logged (tuned values filled in)

    def build(self, values: dict | None = None) -> Recommender:
        """The model of the config, with `values` over its hyper-parameters."""
        cfg = self.cfg
        loss = cfg.loss.name if cfg.get("loss") and cfg.loss.name != "default" else None
        spec = {**OmegaConf.to_container(cfg.model, resolve=True), **(values or {})}
        return build_model(spec, loss=loss, features=run_features(cfg))


def plan(cfg: DictConfig) -> Job:
    """Resume, check and build before any work: a wrong value stops the run here."""
    ctx = hydra_context()
    log_file, overrides = ctx.pop("log_file", None), ctx.pop("overrides", [])
    resume_tags = {}
    if cfg.get("resume"):
        cfg, resume_tags = resumed_config(cfg, overrides)
        overrides = []
    check_run_config(cfg)
    job = Job(cfg, None, overrides, {}, "", {}, log_file, bool(resume_tags))  # type: ignore[arg-type]
    job.model = job.build()
    if job.model.trained:
        from recmovie.training import trainer_arguments  # Lightning: only gradient runs pay its import

        trainer_arguments(cfg.trainer)  # an unknown Trainer key fails now, not after the data is read
    job.grid, job.mode = tune_grid(cfg, job.model, overrides), fit_mode(cfg, job.model)
    kinds = list(cfg.confidence.get("kinds") or [])
    job.tags = {"model": cfg.model.name, "data": cfg.data.name, "split": cfg.split.name,
                "validation": cfg.validation.name, "fit_mode": job.mode, "loss": job.model.params.get("loss", "none"),
                "confidence": "+".join(kinds) or "none", "output_dir": str(Path(cfg.paths.output_dir).resolve()),
                **ctx, **resume_tags}
    job.resolved = OmegaConf.to_container(cfg, resolve=True)
    return job


def open_data(job: Job, run) -> tuple[PreparedData, ReleaseYearFilter | None]:
    """Log the config, read the data and check that a submission can be made from it; the data
    and the ranking's item filter."""
    # locations are tags, not params: a comparison view should not plot them (and a resumed run
    # may find its store elsewhere: MLflow refuses a param that changes)
    tuned_keys = tuple(f"model.{key}" for key in job.grid)  # logged once chosen
    run.log_params({k: v for k, v in flatten(job.resolved).items()
                    if not k.startswith(("paths.", "tracking.uri", "resume")) and k not in tuned_keys})
    run.log_text(OmegaConf.to_yaml(job.resolved), "config.yaml")
    data = load_run_data(job.cfg, validation=job.mode != "everything" or bool(job.grid))
    check_recommendable(data, int(job.cfg.eval.k))  # before the fit: a submission it could not make
    item_filter = release_year_filter(job.cfg.get("filter"), data)  # and a filter it could not apply
    if not run.store_checked:  # a store not checked in advance stops the run here, before the fit
        run.opened()
    run.log_params({"data_fingerprint": data.fingerprint})
    run.set_tags({"data_fingerprint": data.fingerprint, "data_cache": data.info["cache"]})
    return data, item_filter


def check_memory(model: Recommender, data: PreparedData, keeps_probe: bool = False) -> None:
    """Say it before the work: a model whose matrices cannot fit in the memory left stops here, in
    one line, with the figure and what helps; one that takes more than half of it is warned about.
    `keeps_probe`: the model fitted without the validation part is held through the refit
    (save_val_model), one more items x items matrix."""
    need = model.memory_needed(Schema.from_data(data))
    free = available_memory()
    if need is None or free is None:
        return
    if keeps_probe:
        need = (need[0] + data.n_items ** 2 * 4, f"save_val_model=false, {need[1]}")
    gb = f"about {need[0] / 2**30:.1f} GB for its {data.n_items:,} x {data.n_items:,} item matrices, " \
         f"{free / 2**30:.1f} GB available"
    if need[0] > free:
        raise ConfigError("model", f"{type(model).__name__} needs {gb}: try {need[1]}")
    if need[0] > free / 2:
        log.warning("%s needs %s", type(model).__name__, gb)


def tune(job: Job, data: PreparedData, run) -> None:
    """Search the `tune` grid on the validation part; the chosen values become the job's model."""
    if job.grid and len(data.validation):
        extendable = list(job.cfg.model.get("tune_extend") or [])
        # a `validate` fit is on the fit part, as the tune's were: its chosen model is kept, not refitted
        chosen, kept = tune_model(job.cfg, job.grid, data, run, job.build, extendable, keep=job.mode == "validate")
        job.model, job.prefitted = kept or job.build(chosen), kept is not None
        job.resolved["model"].update(chosen)
    elif job.grid:
        log.warning("tune: no validation part (validation=none): the YAML's values are used")
    run.log_params({f"model.{key}": job.resolved["model"][key] for key in job.grid})


def publish(job: Job, data: PreparedData, fitted: Fitted, topk: TopK, metrics: dict, timings: dict, run) -> None:
    """Outputs, checkpoint, metrics and artifacts of a finished training, and its console summary."""
    cfg, model, k = job.cfg, fitted.model, int(job.cfg.eval.k)
    out_dir = Path(cfg.paths.output_dir)
    paths = write_outputs(out_dir, data, topk, k)
    if fitted.val_topk is not None:
        paths["val_candidates"] = write_candidates(out_dir / "val_candidates.csv", fitted.val_topk, data)
    # large (an EASE matrix is n_items^2 floats): written once, straight into a local store
    model_dir = run.local_artifact_dir()
    model_path = (model_dir / "model" if model_dir else out_dir) / "model.pt"
    saved = [(model, model_path)]
    if fitted.val_model is not None:  # what a full-score ensemble searches its weights on
        saved.append((fitted.val_model, model_path.with_name("val_model.pt")))
        run.set_tags({"val_model": "true"})
    for fitted_model, path in saved:
        ckpt = fitted_model.checkpoint()
        ckpt.update(config=job.resolved, data_fingerprint=data.fingerprint,
                    item_ids=plain(data.dataset.item_ids), user_ids=plain(data.dataset.user_ids))
        save_checkpoint(ckpt, path)
    epochs = {key: float(v) for key, v in fitted.info.items() if v is not None and key != "best_score"}
    # the selection figures one step past the training curves (epochs count from 1), so MLflow's
    # latest value of val_recall_at_k is the kept model's
    run.log_metrics(fitted.val_metrics, step=int(fitted.info.get("epochs") or 0) + 1)
    run.log_metrics({**metrics, **timings, **epochs})
    for path in paths.values():
        run.log_artifact(path)
    if model_dir is None:
        for _, path in saved:
            run.log_artifact(path, "model")
    run.set_tags({"checkpoint": str(model_path)})
    report(cfg.model.name, data, k, fitted.val_metrics, metrics, timings, out_dir, run.run_id, model_path)


def train(cfg: DictConfig) -> float | None:
    """Run one training job; returns the validation Recall@k (what sweepers select on; None
    without a validation part). With `resume=<run id>`, continue that interrupted run."""
    job = plan(cfg)
    cfg, k, rank_zero = job.cfg, int(job.cfg.eval.k), is_global_zero()
    name = cfg.tracking.get("run_name") or run_name(str(cfg.model.name), job.overrides)
    # the store opens while the data is read and, when it is a sqlite store checked writable first,
    # while a closed-form model fits (2-3 s of MLflow import and store set-up otherwise added to
    # every run; a gradient model's logger waits for it); a broken store stops the run before the fit
    with start_run(resolve_tracking_uri(cfg.tracking.uri), str(cfg.tracking.experiment), name, job.tags,
                   bool(cfg.tracking.enabled) and rank_zero, overlap=True, resume=cfg.get("resume")) as run:
        try:
            data, item_filter = open_data(job, run)
            check_memory(job.model, data, job.mode == "refit" and bool(cfg.get("save_val_model")))
            tune(job, data, run)
            torch.manual_seed(int(cfg.seed))  # initial weights of gradient models
            if job.prefitted:
                job.model.schema = Schema.from_data(data)  # what a fit here would have been built with
            else:
                job.model.build(Schema.from_data(data))
            t0 = time.perf_counter()
            fitted = fit_model(job.model, data, cfg, run, prefitted=job.prefitted)
            fit_seconds = time.perf_counter() - t0
            if not rank_zero:  # another DDP process: it has trained its share; rank zero writes
                return None
            run.opened()  # a store that failed after its check stops the run here, before anything is written
            t0 = time.perf_counter()
            topk = rank(fitted.model, data, k=int(cfg.candidates.n), chunk_size=int(cfg.eval.chunk_size),
                        item_filter=item_filter)
            timings = {"fit_seconds": fit_seconds, "predict_seconds": time.perf_counter() - t0,
                       "data_seconds": data.info["seconds"]}
            metrics = evaluate(topk.items, topk.users, data.holdout, data.n_users, k)
            publish(job, data, fitted, topk, metrics, timings, run)
            shutil.rmtree(checkpoint_dir(cfg), ignore_errors=True)  # the run is complete: nothing to resume
        except KeyboardInterrupt:
            if run.run_id and job.model.trained and checkpoint_dir(cfg).is_dir():
                print(f"the training can go on from its last epoch: python train.py resume={run.run_id}",
                      file=sys.stderr, flush=True)
            raise
        finally:
            if job.log_file and Path(job.log_file).is_file():  # a resumption's own log beside the first one's
                run.log_artifact(job.log_file, "resumed" if job.resumed else None)
    return fitted.val_metrics.get(f"val_recall_at_{k}")


# ------------------------------------------------------------------ outputs and the console
def write_outputs(out_dir: Path, data: PreparedData, topk: TopK, k: int) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "submission": write_submission(out_dir / "submission.csv", topk, data, k),
        "candidates": write_candidates(out_dir / "candidates.csv", topk, data),
    }


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
    say("\n".join(lines))


# ------------------------------------------------------------------ predict
def reload(cfg: DictConfig) -> tuple[Recommender, DictConfig, PreparedData]:
    """The model of `run_id` or `checkpoint`, its training config (with predict's data overrides)
    and the data to rank, checked against the model's items (and users, for per-user models)."""
    if bool(cfg.run_id) == bool(cfg.checkpoint):
        raise ConfigError("run_id/checkpoint", "give exactly one: run_id=<mlflow run id> or checkpoint=<model.pt>")
    if cfg.run_id:
        uri = resolve_tracking_uri(cfg.tracking.uri)
        # read in place from a local store (a copy otherwise, removed once loaded)
        run = get_run(uri, str(cfg.run_id))
        hint = ("an ensemble keeps no model: its submission.csv is among the run's artifacts, and ensemble.py "
                "combines its members again" if model_of(run) == "ensemble" else "")
        with run_file(uri, run, "model/model.pt", hint=hint) as path:
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
    data = load_run_data(train_cfg, validation=False)
    check_recommendable(data, int(cfg.eval.k))
    if not np.array_equal(data.dataset.item_ids, ckpt["item_ids"].numpy()):
        raise ConfigError("data_dir", "the data's items differ from the items the model was trained on")
    if model.per_user_state and not np.array_equal(data.dataset.user_ids, ckpt["user_ids"].numpy()):
        raise ConfigError("data_dir", "this model holds per-user parameters; the data's users differ from its own")
    return model, train_cfg, data


def predict(cfg: DictConfig) -> Path:
    """Reload a trained model (MLflow run id or checkpoint path) and write a fresh submission; with
    `candidates_from`, the model re-ranks another run's candidates instead of the catalogue."""
    k, depth = check_ranking_config(cfg)
    model, train_cfg, data = reload(cfg)
    item_filter = release_year_filter((train_cfg if cfg.get("filter") is None else cfg).get("filter"), data)
    grid = None
    if cfg.get("candidates_from"):
        grid = load_candidate_grid(str(cfg.candidates_from), data, resolve_tracking_uri(cfg.tracking.uri))
        # a shorter candidate list pads its ranking with -1: refused below, by the users it leaves short
        depth = max(k, min(depth, grid.shape[1]))
    t0 = time.perf_counter()
    topk = rank(model, data, k=depth, chunk_size=int(cfg.eval.chunk_size), candidates=grid, item_filter=item_filter)
    seconds = {"predict_seconds": time.perf_counter() - t0}
    if grid is not None and (short := np.flatnonzero((topk.items[:, :k] < 0).any(1))).size:
        raise ConfigError("candidates_from", f"{cfg.candidates_from} leaves fewer than {k} unseen candidates for "
                                             f"{len(short)} of {data.n_users} users (e.g. user "
                                             f"{data.dataset.user_ids[short[0]]})")
    metrics = evaluate(topk.items, topk.users, data.holdout, data.n_users, k)
    out_dir = Path(cfg.paths.output_dir)
    write_outputs(out_dir, data, topk, k)
    report(train_cfg.model.name, data, k, {}, metrics, seconds, out_dir, cfg.run_id)
    return out_dir / "submission.csv"
