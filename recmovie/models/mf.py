"""Matrix factorisation: BPR-MF (pairwise, trained by Lightning) and ALS (implicit's own solver).

Both hold one vector per user, so they rank only the users they were trained on (`per_user_state`).
"""
from __future__ import annotations

import numpy as np
import torch

from recmovie.data.batches import PairBatch, UserBatch
from recmovie.data.prepare import PreparedData
from recmovie.models.base import Recommender, check
from recmovie.models.pairwise import PairwiseRecommender


class BPRMF(PairwiseRecommender):
    """Rendle et al. 2009: score(u, i) = p_u . q_i + b_i, trained on (user, positive, sampled
    negatives) with a pairwise loss; each pair weighted by the positive's confidence weight."""

    per_user_state = True

    def __init__(self, *, max_epochs: int = 25, **params):
        super().__init__(max_epochs=max_epochs, **params)

    def build(self, schema) -> None:
        super().build(schema)
        p = self.params
        self.user_emb = torch.nn.Embedding(schema.n_users, p.dim)
        self.item_emb = torch.nn.Embedding(schema.n_items, p.dim)
        self.item_bias = torch.nn.Embedding(schema.n_items, 1)
        torch.nn.init.normal_(self.user_emb.weight, std=p.init_std)
        torch.nn.init.normal_(self.item_emb.weight, std=p.init_std)
        torch.nn.init.zeros_(self.item_bias.weight)

    def training_step(self, batch: PairBatch, batch_idx: int) -> torch.Tensor:
        u = self.user_emb(batch.users)  # [B, d]
        p = self.item_emb(batch.pos)  # [B, d]
        n = self.item_emb(batch.neg)  # [B, n_neg, d]
        pos = (u * p).sum(-1) + self.item_bias(batch.pos).squeeze(-1)
        neg = (u[:, None, :] * n).sum(-1) + self.item_bias(batch.neg).squeeze(-1)
        # L2 on the vectors this batch touches (per pair), as in the BPR paper's SGD updates
        norms = u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum() / n.shape[1]
        return self.pairwise_step(pos, neg, batch.weight, norms, len(batch))

    def score(self, batch: UserBatch) -> torch.Tensor:
        return self.user_emb(batch.users) @ self.item_emb.weight.T + self.item_bias.weight.T

    def score_items(self, batch: UserBatch, items: torch.Tensor) -> torch.Tensor:
        items = items.clamp_min(0)
        u = self.user_emb(batch.users)  # [B, d]
        return (self.item_emb(items) * u[:, None, :]).sum(-1) + self.item_bias(items).squeeze(-1)


class ALS(Recommender):
    """Hu, Koren & Volinsky 2008, weighted matrix factorisation for implicit feedback, fitted by the
    `implicit` library: confidence c_ui = 1 + alpha * w_ui on the user's items (w = the confidence
    group's weight, mean 1 per user) and 1 elsewhere; preference 1 on the user's items, 0 elsewhere."""

    per_user_state = True

    def __init__(self, factors: int = 64, l2: float = 22.0, alpha: float = 1.0, iterations: int = 15,
                 use_cg: bool = True, seed: int = 0):
        super().__init__(factors=factors, l2=l2, alpha=alpha, iterations=iterations, use_cg=use_cg, seed=seed)
        check(isinstance(factors, int) and factors >= 1, "factors", f"must be an integer >= 1, got {factors!r}")
        check(l2 >= 0, "l2", f"must be >= 0, got {l2}")
        check(alpha >= 0, "alpha", f"must be >= 0, got {alpha}")
        check(isinstance(iterations, int) and iterations >= 1, "iterations",
              f"must be an integer >= 1, got {iterations!r}")
        check(isinstance(use_cg, bool), "use_cg", f"must be true or false, got {use_cg!r}")
        check(isinstance(seed, int), "seed", f"must be an integer, got {seed!r}")
        self.register_buffer("user_factors", torch.zeros(0, 0))
        self.register_buffer("item_factors", torch.zeros(0, 0))

    def confidence(self, data: PreparedData):
        """users x items CSR of c_ui = 1 + alpha * w_ui (implicit reads the values as confidences)."""
        c = data.train_matrix.astype(np.float32)
        c.data = 1.0 + np.float32(self.params.alpha) * c.data
        return c

    def fit(self, data: PreparedData) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        p = self.params
        # implicit runs its own OpenMP threads; a multi-threaded BLAS inside them oversubscribes the
        # cores (implicit warns about it). Limited here only, so torch keeps its threads afterwards.
        with threadpool_limits(1, "blas"):
            als = AlternatingLeastSquares(factors=p.factors, regularization=p.l2, alpha=1.0,
                                          iterations=p.iterations, use_cg=p.use_cg,
                                          calculate_training_loss=True, random_state=p.seed)
            self.fit_log = []
            als.fit(self.confidence(data), show_progress=False,
                    callback=lambda it, seconds, loss: self.fit_log.append(
                        (it, {"train_loss": float(loss), "iteration_seconds": seconds})))
        self.user_factors = torch.from_numpy(np.ascontiguousarray(als.user_factors))
        self.item_factors = torch.from_numpy(np.ascontiguousarray(als.item_factors))

    def score(self, batch: UserBatch) -> torch.Tensor:
        return self.user_factors[batch.users] @ self.item_factors.T
