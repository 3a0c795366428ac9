"""Neighbourhood models: item-based k-nearest neighbours."""
from __future__ import annotations

import numpy as np
import torch

from recmovie.data.prepare import PreparedData
from recmovie.models.base import check
from recmovie.models.linear import ItemItemModel
from recmovie.models.ops import gram


class ItemKNN(ItemItemModel):
    """Cosine item-item similarity with shrinkage, each item's `k` nearest neighbours kept:
    score(u, j) = sum over the user's items i among j's neighbours of w_ui * sim(i, j)."""

    name = "itemknn"

    def __init__(self, k: int = 200, shrink: float = 10.0):
        super().__init__(k=k, shrink=shrink)
        check(isinstance(k, int) and k >= 1, "k", f"must be an integer >= 1, got {k!r}")
        check(shrink >= 0, "shrink", f"must be >= 0, got {shrink}")
        self.k, self.shrink = k, float(shrink)

    def fit(self, data: PreparedData) -> None:
        g = torch.from_numpy(gram(data.train_matrix))
        norms = g.diagonal().clone().sqrt_()
        sim = g.div_(norms[:, None] * norms[None, :] + self.shrink + 1e-12)
        sim.diagonal().zero_()
        k = min(self.k, sim.shape[0])
        top = torch.topk(sim, k, dim=0)  # neighbours of each target item j: column j
        pruned = torch.zeros_like(sim).scatter_(0, top.indices, top.values)
        self.set_matrix(pruned)
