"""Gradient-trained models: the Lightning side of the Recommender contract, and the Trainer loop.

Validation ranks the users with hidden interactions through the same engine and metric as the
final evaluation, so early stopping watches the competition's Recall@K; the best epoch's weights
are kept in memory and restored at the end.
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping

from recmovie.data.datamodule import RecDataModule
from recmovie.data.prepare import PreparedData, UserBatch
from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import topk_unseen
from recmovie.models.base import Recommender, check

log = logging.getLogger(__name__)


class LitRecommender(Recommender, pl.LightningModule):
    """Base of gradient-trained models. Subclasses implement `build`, `score` and `training_step`
    (returning the loss), and pass the shared training settings through to this constructor."""

    trained = True

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.0, batch_size: int = 500,
                 max_epochs: int = 50, patience: int = 10, **params):
        super().__init__(lr=lr, weight_decay=weight_decay, batch_size=batch_size, max_epochs=max_epochs,
                         patience=patience, **params)
        check(lr > 0, "lr", f"must be > 0, got {lr}")
        check(weight_decay >= 0, "weight_decay", f"must be >= 0, got {weight_decay}")
        check(isinstance(batch_size, int) and batch_size >= 1, "batch_size", f"must be an integer >= 1, got {batch_size!r}")
        check(isinstance(max_epochs, int) and max_epochs >= 1, "max_epochs", f"must be an integer >= 1, got {max_epochs!r}")
        check(isinstance(patience, int) and patience >= 1, "patience", f"must be an integer >= 1, got {patience!r}")
        self.eval_k = 10
        self.eval_holdout = None
        self._val_users: list[np.ndarray] = []
        self._val_items: list[np.ndarray] = []

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.params["lr"], weight_decay=self.params["weight_decay"])

    # -- validation: the ranking engine's top-k, the competition metric at epoch end
    def validation_step(self, batch: UserBatch, batch_idx: int) -> None:
        _, items = topk_unseen(self.score(batch), batch, self.eval_k)
        self._val_users.append(batch.users.cpu().numpy())
        self._val_items.append(items.cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        if not self._val_users:
            return
        users, items = np.concatenate(self._val_users), np.concatenate(self._val_items)
        self._val_users, self._val_items = [], []
        metrics = evaluate(items, users, self.eval_holdout, self.n_users, self.eval_k)
        for key, value in metrics.items():
            self.log(f"val_{key}", value, prog_bar=key == f"recall_at_{self.eval_k}")


class BestWeights(Callback):
    """Keep the best validation epoch's weights in memory (no checkpoint files) and its score."""

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.best_score = -float("inf")
        self.best_epoch = -1
        self.state: dict | None = None

    # on_validation_end, not on_validation_epoch_end: Lightning calls callbacks' epoch-end hooks
    # before the module's (which computes the metric), so there they would see the previous epoch's
    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) > self.best_score:
            self.best_score, self.best_epoch = float(value), trainer.current_epoch
            self.state = copy.deepcopy({k: v.detach().cpu() for k, v in pl_module.state_dict().items()})


class MlflowEpochLogger(Callback):
    """Per-epoch curves into the MLflow run: training loss and validation metrics."""

    def __init__(self, run):
        self.run = run
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train_")}
        m["epoch_seconds"] = time.perf_counter() - self.t0
        self.t0 = time.perf_counter()
        self.run.log_metrics(m, step=trainer.current_epoch)

    def on_validation_end(self, trainer, pl_module) -> None:  # after the metric exists (see BestWeights)
        if trainer.sanity_checking:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        self.run.log_metrics(m, step=trainer.current_epoch)


def fit_lightning(model: LitRecommender, data: PreparedData, cfg, run, max_epochs: int | None = None) -> dict:
    """Train with a Lightning Trainer; with a holdout, early-stop on validation Recall@k and restore
    the best epoch. Returns {"best_epoch", "best_score", "epochs"}."""
    k = int(cfg.eval.k)
    model.eval_k, model.eval_holdout = k, data.holdout
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    dm = RecDataModule(data, model.view, int(model.params["batch_size"]), int(cfg.eval.chunk_size),
                       seed=int(cfg.seed), num_workers=int(cfg.trainer.num_workers),
                       view_options=getattr(model, "view_options", lambda: {})())
    has_val = len(data.holdout) > 0
    monitor = f"val_recall_at_{k}"
    callbacks: list[Callback] = [MlflowEpochLogger(run)]
    best = BestWeights(monitor)
    if has_val:
        callbacks += [best, EarlyStopping(monitor=monitor, mode="max", patience=int(model.params["patience"]))]
    trainer = pl.Trainer(
        max_epochs=int(max_epochs or model.params["max_epochs"]),
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, precision=cfg.trainer.precision,
        deterministic=cfg.trainer.deterministic, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=1.0 if has_val else 0, callbacks=callbacks,
    )
    trainer.fit(model, datamodule=dm)
    model.cpu()
    result = {"epochs": trainer.current_epoch, "best_epoch": best.best_epoch, "best_score": best.best_score}
    if has_val and best.state is not None:
        model.load_state_dict(best.state)
        log.info("restored the best epoch %d (%s %.4f)", best.best_epoch, monitor, best.best_score)
        run.log_metrics({"best_epoch": best.best_epoch, f"best_{monitor}": best.best_score})
    return result
