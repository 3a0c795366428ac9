"""The one LightningDataModule: every gradient-trained family gets its view of the same prepared data."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from recmovie.data.prepare import PreparedData
from recmovie.data.views import VIEWS, evaluation_users
from recmovie.errors import ConfigError


class RecDataModule(pl.LightningDataModule):
    def __init__(self, data: PreparedData, view: str, batch_size: int, eval_chunk_size: int = 4096,
                 seed: int = 0, num_workers: int = 0, view_options: dict | None = None):
        super().__init__()
        if view not in VIEWS:
            raise ConfigError("model.view", f"unknown data view {view!r}; known: {sorted(VIEWS)}")
        self.data = data
        self.view = view
        self.batch_size = batch_size
        self.eval_chunk_size = eval_chunk_size
        self.seed = seed
        self.num_workers = num_workers
        self.view_options = view_options or {}

    def train_dataloader(self) -> DataLoader:
        # the sampler's seeded generator moves on each epoch: new orders, same for the same seed
        return VIEWS[self.view](self.data, self.batch_size, seed=self.seed, num_workers=self.num_workers,
                                **self.view_options)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if hasattr(batch, "to") and not isinstance(batch, torch.Tensor):  # UserBatch and other view batches
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def val_dataloader(self) -> DataLoader | list:
        if len(self.data.holdout) == 0:
            return []
        return evaluation_users(self.data, self.eval_chunk_size)
