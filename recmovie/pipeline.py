"""One run: config -> data -> fit -> rank -> metrics -> submission + candidates -> MLflow."""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from recmovie.config import check_run_config
from recmovie.data.prepare import PreparedData, prepare_data
from recmovie.errors import ConfigError
from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import TopK, rank
from recmovie.models.base import Recommender, build_model, load_checkpoint, save_checkpoint
from recmovie.submission import write_candidates, write_submission
from recmovie.tracking import flatten, resolve_tracking_uri, start_run

log = logging.getLogger(__name__)


def load_data(cfg: DictConfig, split: DictConfig | None = None) -> PreparedData:
    cache_dir = cfg.paths.cache_dir if cfg.data.get("cache", True) else None
    return prepare_data(cfg.data, split or cfg.split, cfg.confidence, cache_dir)


def fit_model(model: Recommender, data: PreparedData, cfg: DictConfig, run) -> float | None:
    """Fit; returns the best validation Recall@k of a gradient model (None without a holdout).

    With `refit.enabled` (split=none), a copy of the untrained model first early-stops on the
    holdout of `refit.split` carved from the training data; the model then trains on everything for
    that copy's best number of epochs."""
    if not model.trained:
        model.fit(data)
        for step, metrics in model.fit_log:
            run.log_metrics(metrics, step=step)
        return None
    from recmovie.models.lightning import fit_lightning

    if not cfg.refit.enabled:
        found = fit_lightning(model, data, cfg, run)
        return found["best_score"] if len(data.holdout) else None
    probe = copy.deepcopy(model)  # same initial weights as the final model
    found = fit_lightning(probe, load_data(cfg, cfg.refit.split), cfg, run)
    epochs = max(found["best_epoch"] + 1, 1)
    log.info("refit: the holdout's best epoch is %d; training on everything for %d epochs", found["best_epoch"], epochs)
    run.log_metrics({"refit_epochs": epochs})
    fit_lightning(model, data, cfg, run, max_epochs=epochs, prefix="refit_")
    return found["best_score"]


def hydra_context() -> dict[str, str]:
    """Sweep membership and overrides of the current Hydra job (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return {}
    out = {"hydra_overrides": " ".join(hc.overrides.task) or "(none)"}
    if str(hc.mode) == "RunMode.MULTIRUN":
        out["sweep_id"] = Path(hc.sweep.dir).name
        out["sweep_dir"] = str(Path(hc.sweep.dir).resolve())
        out["sweep_job"] = str(hc.job.num)
    return out


def write_outputs(out_dir: Path, model: Recommender, data: PreparedData, topk: TopK, k: int) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "submission": write_submission(out_dir / "submission.csv", topk, data, k),
        "candidates": write_candidates(out_dir / "candidates.csv", topk, data),
    }


def train(cfg: DictConfig) -> float | None:
    """Run one training job; returns validation Recall@k (None without a holdout) for sweepers."""
    check_run_config(cfg)
    loss = cfg.loss.name if cfg.get("loss") and cfg.loss.name != "default" else None
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), loss=loss)
    if cfg.refit.enabled and not model.trained:
        raise ConfigError("refit.enabled", f"model {cfg.model.name} is fitted in closed form: it has no epochs to choose")
    out_dir = Path(cfg.paths.output_dir)
    k = int(cfg.eval.k)
    ctx = hydra_context()
    kinds = list(cfg.confidence.get("kinds") or [])
    tags = {"model": cfg.model.name, "data": cfg.data.name, "split": cfg.split.name,
            "loss": model.params.get("loss", "none"),
            "confidence": "+".join(kinds) or "none", "output_dir": str(out_dir.resolve()), **ctx}
    resolved = OmegaConf.to_container(cfg, resolve=True)
    with start_run(resolve_tracking_uri(cfg.tracking.uri), str(cfg.tracking.experiment),
                   cfg.tracking.get("run_name") or f"{cfg.model.name}", tags, cfg.tracking.enabled) as run:
        run.log_params(flatten(resolved))
        run.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
        data = load_data(cfg)
        run.log_params({"data_fingerprint": data.fingerprint})
        run.set_tags({"data_fingerprint": data.fingerprint, "data_cache": data.info["cache"]})
        torch.manual_seed(int(cfg.seed))  # initial weights of gradient models
        model.build(data.n_users, data.n_items)

        t0 = time.perf_counter()
        val_score = fit_model(model, data, cfg, run)
        fit_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        topk = rank(model, data, k=int(cfg.candidates.n), chunk_size=int(cfg.eval.chunk_size))
        predict_seconds = time.perf_counter() - t0
        metrics = evaluate(topk.items, topk.users, data.holdout, data.n_users, k)

        paths = write_outputs(out_dir, model, data, topk, k)
        ckpt = model.checkpoint()
        ckpt.update(config=resolved, data_fingerprint=data.fingerprint,
                    item_ids=data.dataset.item_ids, user_ids=data.dataset.user_ids)
        # large (an EASE matrix is n_items^2 floats): written once, straight into a local store
        model_dir = run.local_artifact_dir()
        model_path = (model_dir / "model" if model_dir else out_dir) / "model.pt"
        save_checkpoint(ckpt, model_path)
        timings = {"fit_seconds": fit_seconds, "predict_seconds": predict_seconds,
                   "data_seconds": data.info["seconds"]}
        run.log_metrics({**metrics, **timings})
        run.log_artifact(paths["submission"])
        run.log_artifact(paths["candidates"])
        if model_dir is None:
            run.log_artifact(model_path, "model")
        run.set_tags({"checkpoint": str(model_path)})
        report(cfg.model.name, data, metrics, timings, out_dir, run.run_id, model_path)
    # the sweepers' objective: the run's Recall@k, or with refit the holdout's best
    return metrics.get(f"recall_at_{k}", val_score)


def report(name: str, data: PreparedData, metrics: dict, timings: dict, out_dir: Path, run_id: str | None,
           checkpoint: Path | None = None) -> None:
    lines = [f"model {name}: {data.n_users} users, {data.n_items} items, data cache {data.info['cache']}"]
    if metrics:
        parts = sorted({key.rsplit("_", 1)[-1] for key in metrics if not key[-1].isdigit()})
        k = next(key for key in metrics if key.startswith("recall_at_")).split("_")[2]
        lines.append(f"  {'part':<8} {'Recall@' + k:>10} {'NDCG@' + k:>9}")
        for part, suffix in [("all", "")] + [(p, f"_{p}") for p in parts]:
            lines.append(f"  {part:<8} {metrics[f'recall_at_{k}{suffix}']:>10.4f} {metrics[f'ndcg_at_{k}{suffix}']:>9.4f}")
    else:
        lines.append("  no hidden interactions (split=none): no metrics")
    lines.append("  " + ", ".join(f"{key} {v:.2f}" for key, v in timings.items()))
    lines.append(f"  submission: {out_dir / 'submission.csv'}")
    if checkpoint:
        lines.append(f"  checkpoint: {checkpoint}")
    if run_id:
        lines.append(f"  mlflow run: {run_id}   (python predict.py run_id={run_id})")
    print("\n".join(lines), flush=True)


def predict(cfg: DictConfig) -> Path:
    """Reload a trained model (MLflow run id or checkpoint path) and write a fresh submission."""
    from recmovie.tracking import download_run_file

    if bool(cfg.run_id) == bool(cfg.checkpoint):
        raise ConfigError("run_id/checkpoint", "give exactly one: run_id=<mlflow run id> or checkpoint=<model.pt>")
    if cfg.run_id:
        path = download_run_file(resolve_tracking_uri(cfg.tracking.uri), str(cfg.run_id), "model/model.pt")
    else:
        path = Path(cfg.checkpoint)
    ckpt = load_checkpoint(path)
    train_cfg = OmegaConf.create(ckpt["config"])
    if cfg.data_dir:
        train_cfg.data.dir = str(cfg.data_dir)
    if cfg.split_name:
        if cfg.split_name != "none" and cfg.split_name != train_cfg.split.name:
            raise ConfigError("split_name", "only `none` (every interaction as history) or the run's own split")
        train_cfg.split = OmegaConf.create({"name": str(cfg.split_name)})
    train_cfg.paths.cache_dir = cfg.paths.cache_dir
    model = Recommender.from_checkpoint(ckpt)
    data = load_data(train_cfg)
    if not np.array_equal(data.dataset.item_ids, ckpt["item_ids"]):
        raise ConfigError("data_dir", "the data's items differ from the items the model was trained on")
    if model.per_user_state and not np.array_equal(data.dataset.user_ids, ckpt["user_ids"]):
        raise ConfigError("data_dir", "this model holds per-user parameters; the data's users differ from its own")
    out_dir = Path(cfg.paths.output_dir)
    k = int(cfg.eval.k)
    topk = rank(model, data, k=int(cfg.candidates.n), chunk_size=int(cfg.eval.chunk_size))
    metrics = evaluate(topk.items, topk.users, data.holdout, data.n_users, k)
    write_outputs(out_dir, model, data, topk, k)
    report(train_cfg.model.name, data, metrics, {}, out_dir, cfg.run_id)
    return out_dir / "submission.csv"
