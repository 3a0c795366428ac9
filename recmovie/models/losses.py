"""Losses of the `loss` config group, shared by every gradient-trained family.

Reconstruction losses (autoencoders) take logits [B, n_items] and the batch's weighted history
`x` [B, n_items] (x > 0 on the user's items, the value being the confidence weight):
  multinomial: -sum_i x_i log softmax(logits)_i             (Liang et al. 2018)
  logistic:    sum_i c_i BCE(logits_i, 1[x_i > 0]), c_i = x_i on items, 1 elsewhere
  gaussian:    sum_i c_i (logits_i - 1[x_i > 0])^2, same c_i (a Gaussian likelihood, i.e. weighted MSE)
Pairwise losses (BPR-MF and friends) take positive scores [B], negative scores [B, n_neg], weights [B]:
  bpr: -log sigmoid(pos - neg), averaged over negatives
  bce: BCE(pos, 1) + mean over negatives of BCE(neg, 0)
  sampled_softmax: cross-entropy of the positive against its own negatives, each negative's logit
       shifted by log((n_items - 1) / n_neg) (uniform sampling: each stands for that many items), so
       the hardest negatives get most of the gradient, as in WARP; needs sampling=uniform
Sequence losses (SASRec, GRU4Rec, BERT4Rec) take hidden states h [N, d] at the N target
positions, the output table E [n_items, d] (tied to the item embeddings) and the targets [N]:
  ce:   full softmax cross-entropy over every item, -log softmax(h E^T)_target, computed in chunks
        of positions with each chunk's gradients in the same pass (at most one chunk of
        [rows, n_items] logits is alive: memory stays flat at any catalogue size)
  gbce: gSASRec's generalised BCE (Petrov & Macdonald 2023) over `negatives` items drawn uniformly
        (shared by the batch's positions, a negative equal to a position's target left out of its
        sum): beta * softplus(-s+) + sum_neg softplus(s-), beta = alpha (t (1 - 1/alpha) + 1/alpha),
        alpha = negatives / (n_items - 1) the sampling rate, t in [0, 1] the calibration
  bce:  the same with beta = 1 (t = 0): SASRec's original sampled binary cross-entropy
  bpr_max: GRU4Rec's BPR-max (Hidasi & Karatzoglou 2018) over the same shared negatives:
        -log sum_j s_j sigmoid(s+ - s_j) + bpreg * sum_j s_j s_j^2, s_j = softmax of the negatives'
        scores (the hardest negatives weigh most; the second term keeps their scores near 0)
  sampled_softmax: cross-entropy of the target against the shared negatives only, each logit
        corrected by -log(its sampling probability) (uniform sampling: a constant shift of the
        negatives by log(k / (n_items - 1))): the full softmax's estimate at k + 1 columns
Every loss returns the mean over the batch's users (or pairs, or target positions, weighted by
the target's confidence weight where given).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recmovie.data.batches import UserBatch

RECONSTRUCTION = ("multinomial", "logistic", "gaussian")
PAIRWISE = ("bpr", "bce", "sampled_softmax")
SEQUENCE = ("ce", "gbce", "bce", "bpr_max", "sampled_softmax")
SAMPLED = ("gbce", "bce", "bpr_max", "sampled_softmax")  # sequence losses over `negatives` shared items
CE_CHUNK_ELEMENTS = 1 << 24  # logits kept alive at once by the chunked cross-entropy (64 MB of float32)


def _confidence(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    target = (x > 0).to(x.dtype)
    return target, torch.where(x > 0, x, torch.ones_like(x))


def reconstruction_loss(name: str, logits: torch.Tensor, x) -> torch.Tensor:
    """`x`: the dense [B, n_items] weights, or the UserBatch itself, whose sparse rows the
    multinomial loss reads directly (it only needs the log-probabilities at the user's items: no
    [B, n_items] target built, multiplied and summed every step)."""
    if name == "multinomial":
        logp = F.log_softmax(logits, dim=1)
        if isinstance(x, UserBatch):
            return -(logp[x.row_ids(), x.indices] * x.values).sum() / len(x)
        return -(logp * x).sum(dim=1).mean()
    if isinstance(x, UserBatch):
        x = x.dense()
    target, conf = _confidence(x)
    if name == "logistic":
        return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * conf).sum(dim=1).mean()
    if name == "gaussian":
        return ((logits - target) ** 2 * conf).sum(dim=1).mean()
    raise ValueError(f"unknown reconstruction loss {name!r}; choose from {RECONSTRUCTION}")


def pairwise_loss(name: str, pos: torch.Tensor, neg: torch.Tensor, weight: torch.Tensor | None = None,
                  n_items: int = 0) -> torch.Tensor:
    """Mean loss of positive scores [B] against their negatives' scores [B, n_neg]; `n_items` (the
    catalogue size) is what sampled_softmax's correction needs."""
    if name == "bpr":
        per = -F.logsigmoid(pos[:, None] - neg).mean(dim=1)
    elif name == "bce":
        per = F.softplus(-pos) + F.softplus(neg).mean(dim=1)
    elif name == "sampled_softmax":
        shift = math.log(max(1, n_items - 1) / neg.shape[1])
        per = -torch.log_softmax(torch.cat([pos[:, None], neg + shift], 1), 1)[:, 0]
    else:
        raise ValueError(f"unknown pairwise loss {name!r}; choose from {PAIRWISE}")
    if weight is not None:
        per = per * weight
    return per.mean()


def _weighted_mean(per: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if not len(per):
        return per.sum()  # 0, still attached to the graph
    return (per * weights).sum() / len(per) if weights is not None else per.mean()


def full_softmax_ce(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                    chunk_elements: int = CE_CHUNK_ELEMENTS) -> torch.Tensor:
    """The (weighted) mean cross-entropy of softmax(h @ table.T) against `targets`, in chunks of rows."""
    if not len(h):
        return (h.sum() + table.sum()) * 0.0  # 0, still attached to the graph
    rows = max(1, chunk_elements // max(1, table.shape[0]))
    scale = (weights if weights is not None else torch.ones(len(h), device=h.device)) / len(h)
    grads = torch.is_grad_enabled() and (h.requires_grad or table.requires_grad)  # not when validating
    return _FusedSoftmaxCE.apply(h, table, targets, scale.float(), rows, grads)


class _FusedSoftmaxCE(torch.autograd.Function):
    """sum_i scale_i * CE(softmax(h_i table^T), target_i), with its gradients computed in the
    forward pass, one chunk of rows at a time: the chunk's softmax minus the one-hot target, times
    scale, gives d/dlogits, whose products with the table and with h are the gradients of h and of
    the table. So no [rows, n_items] logits outlive their chunk and none are recomputed: three
    logit-sized products in all, where autograd's cross-entropy on checkpointed chunks needs four
    and several more passes over the logits. Hand-written because torch has no fused
    linear + cross-entropy on CPU. The loss is a scalar, so backward only scales them. In float32
    whatever the inputs' precision (a softmax over every item is no place for half precision)."""

    @staticmethod
    def forward(ctx, h, table, targets, scale, rows, grads):
        with torch.autocast(h.device.type, enabled=False):
            hf, tf = h.float(), table.float()
            grad_h = torch.empty_like(hf) if grads else None
            grad_table = torch.zeros_like(tf) if grads else None
            total = hf.new_zeros(())
            for s in range(0, len(hf), rows):
                hc, tc, sc = hf[s : s + rows], targets[s : s + rows], scale[s : s + rows]
                logits = hc @ tf.T
                lse = torch.logsumexp(logits, 1)
                picked = logits.gather(1, tc[:, None])[:, 0]
                total = total + ((lse - picked) * sc).sum()
                if grads:
                    dlogits = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' memory
                    dlogits.scatter_add_(1, tc[:, None], -torch.ones_like(picked)[:, None])
                    dlogits.mul_(sc[:, None])
                    grad_h[s : s + rows] = dlogits @ tf
                    grad_table.addmm_(dlogits.T, hc)
        if grads:
            ctx.save_for_backward(grad_h.to(h.dtype), grad_table.to(table.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_table = ctx.saved_tensors
        return grad_h * grad_out, grad_table * grad_out, None, None, None, None


def gbce_beta(negatives: int, n_items: int, t: float) -> float:
    """gSASRec's calibrated exponent of the positive's probability (t = 0: plain BCE, beta = 1)."""
    alpha = negatives / max(1, n_items - 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def sampled_bce(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                beta: float = 1.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """beta * softplus(-s+) + sum over the shared `negatives` [k] of softplus(s-), a negative
    equal to the row's target left out."""
    pos = (h * table[targets]).sum(-1)
    neg = h @ table[negatives].T  # [N, k]
    neg_terms = F.softplus(neg).masked_fill(negatives[None, :] == targets[:, None], 0.0)
    per = beta * F.softplus(-pos) + neg_terms.sum(-1)
    return _weighted_mean(per, weights)


def _shared_negatives(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                      negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positive scores [N], negative scores [N, k], [N, k] True where a negative is the row's target)."""
    pos = (h * table[targets]).sum(-1)
    return pos, h @ table[negatives].T, negatives[None, :] == targets[:, None]


def bpr_max(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
            bpreg: float = 1.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    pos, neg, same = _shared_negatives(h, table, targets, negatives)
    s = torch.softmax(neg.masked_fill(same, -torch.inf), -1)
    ranked = (s * torch.sigmoid(pos[:, None] - neg)).sum(-1)
    per = -torch.log(ranked + 1e-24) + bpreg * (s * neg**2).sum(-1)
    return _weighted_mean(per, weights)


def sampled_softmax(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                    n_items: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    pos, neg, same = _shared_negatives(h, table, targets, negatives)
    # uniform sampling of k of the n - 1 other items: each negative stands for (n - 1) / k items
    neg = neg + math.log(max(1, n_items - 1) / max(1, negatives.numel()))
    logits = torch.cat([pos[:, None], neg.masked_fill(same, -torch.inf)], 1)
    per = -torch.log_softmax(logits, -1)[:, 0]
    return _weighted_mean(per, weights)
