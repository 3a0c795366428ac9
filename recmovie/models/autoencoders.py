"""Autoencoders of user histories: AE, DAE and Multi-DAE (`AutoEncoder`), VAE and Multi-VAE (`VAE`), RecVAE.

A history enters as (item, confidence weight) pairs, L2-normalised per user; while training, entries
are dropped at random (`dropout`: the denoising noise, rescaled by 1 / (1 - dropout)). The first layer
is an embedding bag (a weighted sum of the user's items' rows), so it costs the user's items x width
and no [batch, n_items] input is ever built. The decoder's logits over all items meet the `loss`
group's likelihood (recmovie/models/losses.py) against the batch's weighted history, the one dense
[batch, n_items] tensor: confidence weights thus scale both what the encoder reads and each item's
term of the likelihood.

KL schedule (VAE, Multi-VAE, RecVAE): the KL term's weight is `beta`; with `anneal_steps` > 0 it
rises linearly from 0 to `beta` over that many optimiser steps (Liang et al. 2018), then stays there.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from recmovie.data.batches import UserBatch
from recmovie.models.base import check
from recmovie.models.layers import ACTIVATIONS, init_weights, mlp
from recmovie.models.lightning import LitRecommender, adam
from recmovie.models.losses import RECONSTRUCTION, reconstruction_loss

def kl_weight(step: int, beta: float, anneal_steps: int) -> float:
    """The KL schedule: fixed `beta`, or linear from 0 to `beta` over `anneal_steps` steps."""
    if anneal_steps <= 0:
        return beta
    return beta * min(1.0, step / anneal_steps)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (logvar + math.log(2 * math.pi) + (z - mu) ** 2 / logvar.exp())


class SparseInput(nn.Module):
    """First layer for sparse histories: normalise, drop entries while training, x @ W + b."""

    def __init__(self, n_items: int, width: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(n_items, width, mode="sum", include_last_offset=True)
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, batch: UserBatch, dropout: float) -> torch.Tensor:
        rows = batch.row_ids()
        norm = torch.zeros(len(batch), device=batch.values.device).index_add_(0, rows, batch.values ** 2).sqrt()
        values = batch.values / norm.clamp_min(1e-12)[rows]
        values = F.dropout(values, dropout, training=self.training)
        return self.bag(batch.indices, batch.indptr, per_sample_weights=values) + self.bias


class Encoder(nn.Module):
    """History -> code through layers of `widths` (the first one sparse), activation after each
    layer but, unless `last_activation`, the last."""

    def __init__(self, n_items: int, widths: list[int], activation: str, last_activation: bool):
        super().__init__()
        self.input = SparseInput(n_items, widths[0])
        self.first = ACTIVATIONS[activation]() if len(widths) > 1 or last_activation else nn.Identity()
        self.rest = mlp(widths, activation, activate_output=last_activation)

    def forward(self, batch: UserBatch, dropout: float) -> torch.Tensor:
        return self.rest(self.first(self.input(batch, dropout)))


class AutoEncoder(LitRecommender):
    """AE, DAE, Multi-DAE: [n_items -> *hidden -> latent -> *reversed(hidden) -> n_items], a
    deterministic code; `dropout` > 0 on the input makes it denoising (DAE, Liang et al. 2018's Multi-DAE)."""

    hidden_rule = "a list of integers >= 1 (widths between the items and the code)"

    @staticmethod
    def valid_hidden(hidden) -> bool:
        return isinstance(hidden, (list, tuple)) and all(isinstance(h, int) and h >= 1 for h in hidden)

    def __init__(self, *, hidden: list[int] = (), latent: int = 200, dropout: float, activation: str = "tanh",
                 loss: str, **training):
        check(self.valid_hidden(hidden), "hidden", f"must be {self.hidden_rule}, got {hidden!r}")
        super().__init__(hidden=list(hidden) if isinstance(hidden, (list, tuple)) else hidden, latent=latent, dropout=dropout, activation=activation, loss=loss,
                         **training)
        check(isinstance(latent, int) and latent >= 1, "latent", f"must be an integer >= 1, got {latent!r}")
        check(0.0 <= dropout < 1.0, "dropout", f"must be in [0, 1), got {dropout}")
        check(activation in ACTIVATIONS, "activation", f"must be one of {list(ACTIVATIONS)}, got {activation!r}")
        check(loss in RECONSTRUCTION, "loss", f"must be one of {list(RECONSTRUCTION)}, got {loss!r}")

    def build(self, schema) -> None:
        super().build(schema)
        self.encoder = self._encoder(schema.n_items)
        self.decoder = self._decoder(schema.n_items)
        # Glorot weights and near-zero biases, as Liang et al. 2018 (an embedding bag's default N(0, 1)
        # rows would saturate tanh at once)
        init_weights(self, "xavier", bias_std=0.001, types=(nn.Linear, nn.EmbeddingBag))

    def _encoder(self, n_items: int) -> nn.Module:
        p = self.params
        return Encoder(n_items, [*p.hidden, p.latent], p.activation, last_activation=True)

    def _decoder(self, n_items: int) -> nn.Module:
        p = self.params
        return mlp([p.latent, *reversed(p.hidden), n_items], p.activation)

    def score(self, batch: UserBatch) -> torch.Tensor:
        return self.decoder(self.encoder(batch, 0.0))

    def training_step(self, batch: UserBatch, batch_idx: int) -> torch.Tensor:
        logits = self.decoder(self.encoder(batch, self.params.dropout))
        loss = reconstruction_loss(self.params.loss, logits, batch)
        self.log_train(len(batch), loss=loss)
        return loss


class VAE(AutoEncoder):
    """VAE, Multi-VAE (Liang et al. 2018): the encoder's last layer gives the mean and log-variance
    of q(z | x); training decodes a sample and adds the KL divergence to N(0, I), weighted by the
    KL schedule; ranking decodes the mean."""

    def __init__(self, *, beta: float, anneal_steps: int = 0, **params):
        super().__init__(beta=beta, anneal_steps=anneal_steps, **params)
        check(beta >= 0, "beta", f"must be >= 0, got {beta}")
        check(isinstance(anneal_steps, int) and anneal_steps >= 0, "anneal_steps",
              f"must be an integer >= 0 (0: fixed beta), got {anneal_steps!r}")

    def _encoder(self, n_items: int) -> nn.Module:
        p = self.params
        return Encoder(n_items, [*p.hidden, 2 * p.latent], p.activation, last_activation=False)

    def posterior(self, batch: UserBatch, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(batch, dropout).chunk(2, dim=1)
        return mu, logvar

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu

    def score(self, batch: UserBatch) -> torch.Tensor:
        return self.decoder(self.posterior(batch, 0.0)[0])

    def training_step(self, batch: UserBatch, batch_idx: int) -> torch.Tensor:
        p = self.params
        mu, logvar = self.posterior(batch, p.dropout)
        rec = reconstruction_loss(p.loss, self.decoder(self.sample(mu, logvar)), batch)
        kl = self.kl(mu, logvar)
        beta = kl_weight(self.global_step, p.beta, p.anneal_steps)
        loss = rec + beta * kl
        self.log_train(len(batch), loss=loss, kl=kl, beta=beta)
        return loss

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, e^logvar) || N(0, I)), summed over dimensions, averaged over users."""
        return 0.5 * (mu ** 2 + logvar.exp() - logvar - 1).sum(dim=1).mean()


class RecVAE(VAE):
    """RecVAE (Shenbin et al. 2020): a densely connected encoder (swish + layer norm), a composite
    prior (standard normal, the previous encoder's posterior, and a wide normal, mixed by
    `prior_weights`), a KL weight that grows with the user's history (beta * gamma * |X_u|; gamma = 0:
    beta alone), and alternating updates: per epoch `enc_passes` passes over the users training the
    encoder (with input dropout), then the previous encoder is refreshed, then `dec_passes` passes
    training the decoder (without dropout). The logged train_loss, train_kl are the encoder passes'
    objective (the decoder passes skip the KL term, which does not depend on the decoder)."""

    hidden_rule = "an integer >= 1 (the width of every encoder layer)"

    @staticmethod
    def valid_hidden(hidden) -> bool:
        return isinstance(hidden, int) and not isinstance(hidden, bool) and hidden >= 1

    def __init__(self, *, hidden: int = 600, layers: int = 5, gamma: float = 0.005,
                 prior_weights: list[float] = (0.15, 0.75, 0.1), enc_passes: int = 3, dec_passes: int = 1,
                 beta: float = 1.0, loss: str = "multinomial", **params):
        super().__init__(hidden=hidden, layers=layers, gamma=gamma, prior_weights=list(prior_weights),
                         enc_passes=enc_passes, dec_passes=dec_passes, beta=beta, loss=loss, **params)
        check(isinstance(layers, int) and layers >= 1, "layers", f"must be an integer >= 1, got {layers!r}")
        check(gamma >= 0, "gamma", f"must be >= 0, got {gamma}")
        check(len(prior_weights) == 3 and all(w > 0 for w in prior_weights) and abs(sum(prior_weights) - 1) < 1e-6,
              "prior_weights", f"must be 3 positive weights summing to 1, got {list(prior_weights)}")
        for key, value in (("enc_passes", enc_passes), ("dec_passes", dec_passes)):
            check(isinstance(value, int) and value >= 1, key, f"must be an integer >= 1, got {value!r}")
        self.automatic_optimization = False

    def build(self, schema) -> None:
        super().build(schema)
        self.prior_encoder = copy.deepcopy(self.encoder).requires_grad_(False)

    def _encoder(self, n_items: int) -> nn.Module:
        p = self.params
        return RecVAEEncoder(n_items, p.hidden, p.layers, p.latent)

    def _decoder(self, n_items: int) -> nn.Module:
        return nn.Linear(self.params.latent, n_items)

    def posterior(self, batch: UserBatch, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(batch, dropout)

    def view_options(self) -> dict:
        return {"passes": self.params.enc_passes + self.params.dec_passes}

    def configure_optimizers(self):
        lr, wd = self.params.lr, self.params.weight_decay
        return adam(self.encoder.parameters(), lr, wd), adam(self.decoder.parameters(), lr, wd)

    def log_prior(self, batch: UserBatch, z: torch.Tensor) -> torch.Tensor:
        """log p(z | x) under the composite prior, per latent dimension."""
        with torch.no_grad():
            old_mu, old_logvar = self.prior_encoder(batch, 0.0)
        zero = torch.zeros_like(z)
        parts = [gaussian_log_density(z, zero, zero), gaussian_log_density(z, old_mu, old_logvar),
                 gaussian_log_density(z, zero, zero + 10.0)]
        log_weights = [math.log(w) for w in self.params.prior_weights]
        return torch.logsumexp(torch.stack([p + w for p, w in zip(parts, log_weights)]), dim=0)

    def training_step(self, batch: UserBatch, batch_idx: int) -> None:
        p = self.params
        per_pass = self.trainer.num_training_batches // (p.enc_passes + p.dec_passes)
        encoder_phase = batch_idx < p.enc_passes * per_pass
        if batch_idx == p.enc_passes * per_pass:
            self.prior_encoder.load_state_dict(self.encoder.state_dict())
        optimizer = self.optimizers()[0 if encoder_phase else 1]
        # only the optimised half gets gradients: the other half runs forward only
        self.toggle_optimizer(optimizer)
        mu, logvar = self.posterior(batch, p.dropout if encoder_phase else 0.0)
        z = self.sample(mu, logvar)
        loss = reconstruction_loss(p.loss, self.decoder(z), batch)
        if encoder_phase:
            kl = (gaussian_log_density(z, mu, logvar) - self.log_prior(batch, z)).sum(dim=1)
            beta = kl_weight(self.global_step, p.beta, p.anneal_steps)
            weight = beta * p.gamma * batch.indptr.diff().to(z.dtype) if p.gamma > 0 else beta
            loss = loss + (kl * weight).mean()
            self.log_train(len(batch), loss=loss, kl=kl.mean(), beta=beta)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.untoggle_optimizer(optimizer)


class RecVAEEncoder(nn.Module):
    """Dense connections: layer k reads layer k-1 and adds every earlier layer's output before the
    activation; returns the posterior's mean and log-variance."""

    def __init__(self, n_items: int, width: int, layers: int, latent: int):
        super().__init__()
        self.input = SparseInput(n_items, width)
        self.dense = nn.ModuleList(nn.Linear(width, width) for _ in range(layers - 1))
        self.norms = nn.ModuleList(nn.LayerNorm(width, eps=0.1) for _ in range(layers))
        self.out = nn.Linear(width, 2 * latent)

    def forward(self, batch: UserBatch, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norms[0](F.silu(self.input(batch, dropout)))
        total = h
        for layer, norm in zip(self.dense, self.norms[1:]):
            h = norm(F.silu(layer(h) + total))
            total = total + h
        mu, logvar = self.out(h).chunk(2, dim=1)
        return mu, logvar
