"""The one LightningDataModule: every gradient-trained family gets its view of the same prepared data."""
from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from recmovie.data.batches import Batch
from recmovie.data.prepare import PreparedData
from recmovie.data.views import VIEWS, evaluation_users
from recmovie.errors import ConfigError


class RecDataModule(pl.LightningDataModule):
    """`train`: the data a model fits on (its view's batches); `val`: data whose holdout the model
    is validated on (users ranked with `val`'s training part as their history), or None."""

    def __init__(self, train: PreparedData, view: str, batch_size: int, val: PreparedData | None = None,
                 eval_chunk_size: int = 4096, seed: int = 0, num_workers: int = 0, view_options: dict | None = None):
        super().__init__()
        if view not in VIEWS:
            raise ConfigError("model.view", f"unknown data view {view!r}; known: {sorted(VIEWS)}")
        self.train = train
        self.val = val if val is not None and len(val.holdout) else None
        self.view = view
        self.batch_size = batch_size
        self.eval_chunk_size = eval_chunk_size
        self.seed = seed
        self.num_workers = num_workers
        self.view_options = view_options or {}

    def _shard(self) -> dict:
        trainer = self.trainer
        return {"rank": trainer.global_rank, "world": trainer.world_size} if trainer is not None else {}

    def train_dataloader(self) -> DataLoader:
        return VIEWS[self.view](self.train, self.batch_size, seed=self.seed, num_workers=self.num_workers,
                                **self.view_options, **self._shard())

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if isinstance(batch, Batch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def val_dataloader(self) -> DataLoader | list:
        if self.val is None:
            return []
        return evaluation_users(self.val, self.eval_chunk_size, **self._shard())
