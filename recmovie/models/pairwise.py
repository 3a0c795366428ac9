"""The base of models trained on sampled (user, positive, negatives) rows with a pairwise loss:
BPR-MF (recmovie/models/mf.py) and the context-aware family (recmovie/models/context.py)."""
from __future__ import annotations

import torch

from recmovie.data.samplers import SAMPLINGS
from recmovie.models.base import check
from recmovie.models.lightning import LitRecommender
from recmovie.models.losses import PAIRWISE, pairwise_loss


def check_pairwise(dim: int, loss: str, n_negatives: int, sampling: str, reg: float, init_std: float) -> None:
    """The hyper-parameters every model trained on sampled (user, positive, negatives) rows shares
    (BPR-MF, the context-aware family), refused by name."""
    check(isinstance(dim, int) and dim >= 1, "dim", f"must be an integer >= 1, got {dim!r}")
    check(loss in PAIRWISE, "loss", f"must be one of {list(PAIRWISE)}, got {loss!r}")
    check(isinstance(n_negatives, int) and n_negatives >= 1, "n_negatives", f"must be an integer >= 1, got {n_negatives!r}")
    check(sampling in SAMPLINGS, "sampling", f"must be one of {list(SAMPLINGS)}, got {sampling!r}")
    check(loss != "sampled_softmax" or sampling == "uniform", "sampling",
          f"loss sampled_softmax corrects for uniform sampling only, got sampling {sampling!r}")
    check(reg >= 0, "reg", f"must be >= 0, got {reg}")
    check(init_std > 0, "init_std", f"must be > 0, got {init_std}")


class PairwiseRecommender(LitRecommender):
    """Shared hyper-parameters (`dim`, the pairwise `loss`, `n_negatives` drawn by `sampling`, the
    L2 `reg` on the vectors a batch touches, `init_std`), the pairs view's options and the loss step.
    Subclasses score a batch's pairs and call `pairwise_step`."""

    view = "pairs"

    def __init__(self, *, dim: int = 64, loss: str = "bpr", n_negatives: int = 4, sampling: str = "uniform",
                 reg: float = 0.01, init_std: float = 0.1, lr: float = 0.008, weight_decay: float = 0.0,
                 batch_size: int = 4096, patience: int = 5, select_on: str = "all", **params):
        super().__init__(dim=dim, loss=loss, n_negatives=n_negatives, sampling=sampling, reg=reg, init_std=init_std,
                         lr=lr, weight_decay=weight_decay, batch_size=batch_size, patience=patience,
                         select_on=select_on, **params)
        check_pairwise(dim, loss, n_negatives, sampling, reg, init_std)

    def view_options(self) -> dict:
        return {"n_negatives": self.params.n_negatives, "sampling": self.params.sampling}

    def pairwise_step(self, pos: torch.Tensor, neg: torch.Tensor, weight: torch.Tensor | None,
                      squared_norms: torch.Tensor, n: int) -> torch.Tensor:
        """The loss of `n` rows' positive scores [n] against their negatives' [n, n_neg], each row
        weighted by `weight`, plus `reg` x the rows' `squared_norms` / n."""
        loss = pairwise_loss(self.params.loss, pos, neg, weight, self.n_items)
        self.log_train(n, loss=loss)
        if self.params.reg:
            loss = loss + self.params.reg * squared_norms / n
        return loss
