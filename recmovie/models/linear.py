"""Linear item-item models (EASE and the SLIM family): scores = history @ B, B items x items."""
from __future__ import annotations

import numpy as np
import torch

from recmovie.data.prepare import PreparedData, UserBatch
from recmovie.models.base import Recommender, check
from recmovie.models.ops import column_tiles, gram, history_times

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ItemItemModel(Recommender):
    """Holds a dense items x items matrix `B` and scores a history by `x @ B`."""

    def __init__(self, **params):
        super().__init__(**params)
        self.register_buffer("B", torch.zeros(0, 0))
        self._tiles: list[torch.Tensor] | None = None

    def set_matrix(self, b: np.ndarray | torch.Tensor) -> None:
        self.B = torch.as_tensor(b, dtype=torch.float32)
        self._tiles = None

    def score(self, batch: UserBatch) -> torch.Tensor:
        if self._tiles is None:
            self._tiles = column_tiles(self.B)
        return history_times(batch, self._tiles)

    def _load_from_state_dict(self, *args, **kwargs):
        self._tiles = None
        super()._load_from_state_dict(*args, **kwargs)


class EASE(ItemItemModel):
    """Steck 2019, "Embarrassingly Shallow Autoencoders": B = I - P / diag(P), P = (X^T X + l2 I)^-1."""

    name = "ease"

    def __init__(self, l2: float = 500.0, dtype: str = "float32"):
        super().__init__(l2=l2, dtype=dtype)
        check(l2 > 0, "l2", f"must be > 0, got {l2}")
        check(dtype in DTYPES, "dtype", f"must be one of {list(DTYPES)}, got {dtype!r}")
        self.l2, self.dtype = float(l2), DTYPES[dtype]

    def fit(self, data: PreparedData) -> None:
        x = data.train_matrix
        if x.shape[0] < x.shape[1]:
            p = self._inverse_by_users(x)
        else:
            g = torch.from_numpy(gram(x)).to(self.dtype)
            g.diagonal().add_(self.l2)
            p = torch.cholesky_inverse(torch.linalg.cholesky(g))
            del g
        b = p / (-p.diagonal())
        b.diagonal().zero_()
        self.set_matrix(b)

    def _inverse_by_users(self, x) -> torch.Tensor:
        """(X^T X + l2 I)^-1 through the users x users system (Woodbury), cheaper when users < items:
        (1/l2) (I - X^T (l2 I + X X^T)^-1 X)."""
        xd = torch.from_numpy(x.toarray()).to(self.dtype)
        k = xd @ xd.T
        k.diagonal().add_(self.l2)
        kinv_x = torch.cholesky_solve(xd, torch.linalg.cholesky(k))
        p = -(xd.T @ kinv_x)
        p.diagonal().add_(1.0)
        return p.div_(self.l2)
