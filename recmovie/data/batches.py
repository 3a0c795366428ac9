"""The batches the data views hand to models, one dataclass per kind.

Each batch is a dataclass of tensors (plus plain sizes) with `len()` and `to(device)`; the data
module moves any of them to the model's device the same way. A new view (sequence windows,
feature rows) adds its batch here.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


class Batch:
    """`to(device)` and `len()` for a dataclass whose first field is the batch's users."""

    def to(self, device):
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device) for k, v in moved.items() if isinstance(v, torch.Tensor)})

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))


@dataclass
class UserBatch(Batch):
    """Users and their training histories as CSR rows (values = confidence weights)."""

    users: torch.Tensor  # int64 [B], dense user ids
    indptr: torch.Tensor  # int64 [B + 1]
    indices: torch.Tensor  # int64 [nnz], dense item ids
    values: torch.Tensor  # float32 [nnz]
    n_items: int

    def row_ids(self) -> torch.Tensor:
        """Batch row of each stored entry."""
        return torch.repeat_interleave(torch.arange(len(self.users), device=self.indptr.device), self.indptr.diff())

    def csr(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(
            self.indptr, self.indices, self.values, size=(len(self.users), self.n_items), check_invariants=False
        )

    def dense(self) -> torch.Tensor:
        """[B, n_items]; only ever one batch at a time."""
        x = torch.zeros(len(self.users), self.n_items, device=self.values.device)
        x[self.row_ids(), self.indices] = self.values
        return x


@dataclass
class PairBatch(Batch):
    """(user, positive item, sampled negative items) triples; weight = the positive's confidence."""

    users: torch.Tensor  # int64 [B]
    pos: torch.Tensor  # int64 [B]
    neg: torch.Tensor  # int64 [B, n_negatives]
    weight: torch.Tensor  # float32 [B]


@dataclass
class SequenceBatch(Batch):
    """Users and their training histories as item sequences in time order, newest LAST, padded on
    the LEFT with `pad_item` (= schema.pad_item) to the batch's width (at most the view's `max_len`);
    `weights` holds each position's confidence weight (0 on padding)."""

    users: torch.Tensor  # int64 [B]
    items: torch.Tensor  # int64 [B, L]
    weights: torch.Tensor | None  # float32 [B, L] or None
    pad_item: int

    def valid(self) -> torch.Tensor:
        """[B, L] bool: True where a position holds an item."""
        return self.items != self.pad_item


@dataclass
class FieldBatch(Batch):
    """The pairs view's rows with their feature-field codes (recmovie/data/features.py): `items`
    holds the positive first, then the sampled negatives; `user_fields[f]` [B, W] and
    `item_fields[f]` [B, 1 + n_negatives, W] are bags of codes, padded with the field's pad code."""

    users: torch.Tensor  # int64 [B]
    items: torch.Tensor  # int64 [B, 1 + n_negatives]
    weight: torch.Tensor  # float32 [B], the positive's confidence weight
    user_fields: dict[str, torch.Tensor]
    item_fields: dict[str, torch.Tensor]

    def to(self, device):
        moved = super().to(device)
        moved.user_fields = {k: v.to(device) for k, v in self.user_fields.items()}
        moved.item_fields = {k: v.to(device) for k, v in self.item_fields.items()}
        return moved
