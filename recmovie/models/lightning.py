"""The Lightning side of the Recommender contract: gradient-trained models subclass LitRecommender.

Validation ranks the users with hidden validation interactions through the same engine and metric
as the final evaluation, so early stopping watches the competition's Recall@K. Under DDP each
process ranks its share of the users and the shares are gathered before the metric is computed,
so every process sees the same figure over every validation user. The Trainer, its callbacks and
its logger are built in recmovie/training.py.
"""
from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch

from recmovie.data.batches import UserBatch
from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import topk_unseen
from recmovie.models.base import Recommender, check


# which part of the validation holdout early stopping and the best epoch watch (the callbacks'
# `monitor: null`): `all`, or only each user's newest (`last`) or middle (`random`) items
SELECT_ON = ("all", "last", "random")


def adam(params, lr: float, weight_decay: float, decoupled: bool = False) -> torch.optim.Optimizer:
    """Adam (AdamW with `decoupled`) on one fused kernel where the device has one: the plain loop
    runs about ten passes over every parameter per step, which at the catalogue sizes here (a
    6,807 x 400 input table, say) is as long as the model's own forward and backward
    (benchmarks/RESULTS.md#code-choices)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def selection_metric(select_on: str, k: int) -> str:
    return f"val_recall_at_{k}" + ("" if select_on == "all" else f"_{select_on}")


class LitRecommender(Recommender, pl.LightningModule):
    """Base of gradient-trained models. Subclasses implement `build`, `score` and `training_step`
    (returning the loss), and pass the shared training settings through to this constructor."""

    trained = True

    def __init__(self, *, lr: float, weight_decay: float, batch_size: int, max_epochs: int, patience: int,
                 select_on: str, **params):
        super().__init__(lr=lr, weight_decay=weight_decay, batch_size=batch_size, max_epochs=max_epochs,
                         patience=patience, select_on=select_on, **params)
        check(lr > 0, "lr", f"must be > 0, got {lr}")
        check(weight_decay >= 0, "weight_decay", f"must be >= 0, got {weight_decay}")
        check(isinstance(batch_size, int) and batch_size >= 1, "batch_size", f"must be an integer >= 1, got {batch_size!r}")
        check(isinstance(max_epochs, int) and max_epochs >= 1, "max_epochs", f"must be an integer >= 1, got {max_epochs!r}")
        check(isinstance(patience, int) and patience >= 1, "patience", f"must be an integer >= 1, got {patience!r}")
        check(select_on in SELECT_ON, "select_on", f"must be one of {list(SELECT_ON)}, got {select_on!r}")
        self.eval_k = 10
        self.eval_holdout = None  # the validation part, set by recmovie.training before fitting
        self._val_users: list[np.ndarray] = []
        self._val_items: list[np.ndarray] = []
        self._train_sums: dict[str, torch.Tensor] = {}
        self._train_rows = 0

    def configure_optimizers(self):
        return adam(self.parameters(), self.params.lr, self.params.weight_decay)

    # -- training curves: epoch means of per-step values
    def log_train(self, n: int, **values) -> None:
        """Add a step's values (`loss=...`, weighted by the batch's `n` rows) to the epoch's means,
        logged as train_<name> once, after the epoch's last batch. Lightning's own epoch mean
        (`self.log(on_epoch=True)` every step) gives the same figures but costs a fraction of a
        millisecond per value per step, a visible share of a small model's epoch."""
        for key, value in values.items():
            value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            self._train_sums[key] = self._train_sums.get(key, 0.0) + value * n
        self._train_rows += n

    def on_train_epoch_start(self) -> None:
        self._train_sums, self._train_rows = {}, 0

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        trainer = self.trainer
        if self._train_rows and (trainer.is_last_batch or batch_idx + 1 >= trainer.num_training_batches):
            for key, total in self._train_sums.items():
                # one value an epoch, already a mean: batch_size=1 keeps Lightning from guessing one from the batch
                self.log(f"train_{key}", total / self._train_rows, on_epoch=True, on_step=False, batch_size=1)
            self._train_sums, self._train_rows = {}, 0

    # -- validation: the ranking engine's top-k, the competition metric at epoch end
    def validation_step(self, batch: UserBatch, batch_idx: int) -> None:
        _, items = topk_unseen(self.score(batch), batch, self.eval_k)
        self._val_users.append(batch.users.cpu().numpy())
        self._val_items.append(items.cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        k = min(self.eval_k, self.n_items)
        users = np.concatenate(self._val_users) if self._val_users else np.zeros(0, np.int64)
        items = np.concatenate(self._val_items) if self._val_items else np.zeros((0, k), np.int64)
        self._val_users, self._val_items = [], []
        users, items = self._gather(users, items)
        if not len(users):
            return
        metrics = evaluate(items, users, self.eval_holdout, self.n_users, self.eval_k)
        metrics["users"] = float(len(np.unique(users)))
        distributed = self.trainer.world_size > 1  # equal on every process: the reduce is only Lightning's bookkeeping
        for key, value in metrics.items():
            self.log(f"val_{key}", value, prog_bar=key == f"recall_at_{self.eval_k}", sync_dist=distributed)

    def _gather(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every process's ranked users, padded to the longest share for all_gather."""
        if self.trainer.world_size == 1:
            return users, items
        counts = self.all_gather(torch.tensor([len(users)], device=self.device)).flatten()
        n = int(counts.max())
        padded_users = torch.full((n,), -1, dtype=torch.int64)
        padded_users[: len(users)] = torch.from_numpy(users)
        padded_items = torch.full((n, items.shape[1]), -1, dtype=torch.int64)
        padded_items[: len(items)] = torch.from_numpy(items)
        all_users = self.all_gather(padded_users.to(self.device)).reshape(-1).cpu().numpy()
        all_items = self.all_gather(padded_items.to(self.device)).reshape(-1, items.shape[1]).cpu().numpy()
        keep = all_users >= 0
        return all_users[keep], all_items[keep]
