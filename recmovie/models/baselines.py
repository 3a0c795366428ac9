"""Rule-based baselines: most popular items, and the seed team's genre rule."""
from __future__ import annotations

import numpy as np
import torch

from recmovie.data.batches import UserBatch
from recmovie.data.prepare import PreparedData
from recmovie.errors import DataError
from recmovie.models.base import Recommender, check


def _popularity(data: PreparedData, half_life_days: float | None) -> np.ndarray:
    """Weighted training interactions per item; with a half-life, older ones count less."""
    w = data.weight.astype(np.float64)
    if half_life_days:
        age_days = (data.train_time.max() - data.train_time) / 86_400.0
        w = w * 0.5 ** (age_days / half_life_days)
    return np.bincount(data.train_item, weights=w, minlength=data.n_items)


class Popularity(Recommender):
    """Every user gets the most popular items they have not seen."""

    def __init__(self, half_life_days: float | None = None):
        super().__init__(half_life_days=half_life_days)
        check(half_life_days is None or half_life_days > 0, "half_life_days", "must be > 0 or null")
        self.register_buffer("popularity", torch.zeros(0))

    def fit(self, data: PreparedData) -> None:
        self.popularity = torch.from_numpy(_popularity(data, self.params.half_life_days).astype(np.float32))

    def score(self, batch: UserBatch) -> torch.Tensor:
        return self.popularity.expand(len(batch), -1).clone()


class GenreRule(Recommender):
    """The user's top genres by share of their history; within them the most popular unseen items
    first, then the rest by popularity."""

    def __init__(self, n_genres: int = 3, half_life_days: float | None = None):
        super().__init__(n_genres=n_genres, half_life_days=half_life_days)
        check(isinstance(n_genres, int) and n_genres >= 1, "n_genres", f"must be an integer >= 1, got {n_genres!r}")
        check(half_life_days is None or half_life_days > 0, "half_life_days", "must be > 0 or null")
        self.register_buffer("popularity", torch.zeros(0))
        self.register_buffer("item_genre", torch.zeros(0, 0))

    def fit(self, data: PreparedData) -> None:
        genre = data.side_matrix("genre")
        if genre is None or genre.nnz == 0:
            raise DataError("genres.tsv", "genre_rule needs item genres, and this dataset has none")
        pop = _popularity(data, self.params.half_life_days)
        # popularity squeezed into [0, 1) so that "in a top genre" (+1) always ranks first
        self.popularity = torch.from_numpy((pop / (pop.max() + 1.0)).astype(np.float32))
        self.item_genre = torch.from_numpy(genre.toarray().astype(np.float32))

    def score(self, batch: UserBatch) -> torch.Tensor:
        profile = batch.csr() @ self.item_genre  # [B, genres]: weighted genre counts of the history
        k = min(self.params.n_genres, profile.shape[1])
        top = torch.topk(profile, k, dim=1).indices
        chosen = torch.zeros_like(profile).scatter_(1, top, 1.0) * (profile > 0)
        in_top = (chosen @ self.item_genre.T) > 0
        return self.popularity + in_top.float()
