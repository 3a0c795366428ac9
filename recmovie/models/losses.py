"""Losses of the `loss` config group, shared by every gradient-trained family.

Reconstruction losses (autoencoders) take logits [B, n_items] and the batch's weighted history
`x` [B, n_items] (x > 0 on the user's items, the value being the confidence weight):
  multinomial: -sum_i x_i log softmax(logits)_i             (Liang et al. 2018)
  logistic:    sum_i c_i BCE(logits_i, 1[x_i > 0]), c_i = x_i on items, 1 elsewhere
  gaussian:    sum_i c_i (logits_i - 1[x_i > 0])^2, same c_i (a Gaussian likelihood, i.e. weighted MSE)
Pairwise losses (BPR-MF and friends) take positive scores [B], negative scores [B, n_neg], weights [B]:
  bpr: -log sigmoid(pos - neg), averaged over negatives
  bce: BCE(pos, 1) + mean over negatives of BCE(neg, 0)
Every loss returns the mean over the batch's users (or pairs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

RECONSTRUCTION = ("multinomial", "logistic", "gaussian")
PAIRWISE = ("bpr", "bce")


def _confidence(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    target = (x > 0).to(x.dtype)
    return target, torch.where(x > 0, x, torch.ones_like(x))


def reconstruction_loss(name: str, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if name == "multinomial":
        return -(F.log_softmax(logits, dim=1) * x).sum(dim=1).mean()
    target, conf = _confidence(x)
    if name == "logistic":
        return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * conf).sum(dim=1).mean()
    if name == "gaussian":
        return ((logits - target) ** 2 * conf).sum(dim=1).mean()
    raise ValueError(f"unknown reconstruction loss {name!r}; choose from {RECONSTRUCTION}")


def pairwise_loss(name: str, pos: torch.Tensor, neg: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    if name == "bpr":
        per = -F.logsigmoid(pos[:, None] - neg).mean(dim=1)
    elif name == "bce":
        per = F.softplus(-pos) + F.softplus(neg).mean(dim=1)
    else:
        raise ValueError(f"unknown pairwise loss {name!r}; choose from {PAIRWISE}")
    if weight is not None:
        per = per * weight
    return per.mean()
