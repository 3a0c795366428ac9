"""S3-Rec (Zhou et al. 2020): SASRec's encoder pre-trained by four self-supervised objectives on
the items' attributes and the users' sequences, then fine-tuned as SASRec (recmovie/models/sequential.py).

Pre-training runs before the fine-tuning epochs, when the model is set up to fit, bidirectionally
(no causal mask) on the `sequences` view's windows, with every item masked with `mask_prob`:

- AAP (item-attribute): each unmasked position's hidden state predicts its item's attributes;
- MIP (sequence-item): each masked position's state tells its item from a sampled one;
- MAP (sequence-attribute): each masked position's state predicts its item's attributes;
- SP (sequence-segment): the state at the end of the sequence with a random segment masked tells
  that segment (encoded alone) from a segment of another sequence of the same length.

As in the authors' code (the competition's baseline), AAP and MAP score attribute embeddings
against linear maps of the positions' hidden states (multi-label, binary cross-entropy; here plus a
per-attribute bias, see PretrainHeads), MIP and SP
are pairwise (-log sigmoid(pos - neg)), and the four are weighted 0.2 / 1 / 1 / 0.5.

`aux_weight` > 0 (not in the paper) keeps AAP, MIP and MAP beside the next-item loss while
fine-tuning, weighted by it: the fine-tuning then cannot trade what pre-training taught for the
next item alone.

The attribute table and the heads exist only while pre-training (and fine-tuning, with
`aux_weight`): the fitted model (and its checkpoint) is a SASRec, so predict.py needs no
attributes. The pre-trained weights (encoder and heads) are cached beside the prepared data, keyed
by the training rows, the attributes, the settings and the seed: a sweep over the fine-tuning
settings pre-trains once.
"""
from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recmovie.data.cache import cache_key, load_arrays, save_arrays
from recmovie.data.features import ITEM_FIELDS, FeatureSet, field_size, item_field_codes
from recmovie.data.views import sequences
from recmovie.errors import ConfigError
from recmovie.models.base import check
from recmovie.models.lightning import adam
from recmovie.models.sequential import SASRec

log = logging.getLogger(__name__)

PRETRAIN_KEYS = ("max_len", "dim", "layers", "heads", "ff_mult", "dropout", "weight_decay", "attributes",
                 "pretrain_epochs", "pretrain_lr", "pretrain_batch_size", "mask_prob", "aap_weight",
                 "mip_weight", "map_weight", "sp_weight")


def attribute_fields(attributes: str | list[str], side: set[str]) -> list[str]:
    """The item fields S3-Rec reads as attributes: `auto` = the data's `attribute` field (S3-Rec's own
    item2attributes file, or attributes.tsv) where it has one, else its genres."""
    if attributes == "auto":
        fields = ["attribute"] if "attribute" in side else ["genre"]
    else:
        fields = list(attributes)
    for f in fields:
        if f not in ITEM_FIELDS or f == "title":
            raise ConfigError("model.attributes", f"unknown attribute field {f!r}; known: "
                              f"{sorted(set(ITEM_FIELDS) - {'title'})} or auto")
        if ITEM_FIELDS[f] not in side:
            raise ConfigError("model.attributes", f"names {f!r}, but the data has no such side file "
                              f"(side fields here: {sorted(side) or 'none'})")
    return fields


def item_attributes(data, fields: list[str], schema) -> torch.Tensor:
    """[n_items, A] multi-hot of every item's values of the fields (A = their values, side by side)."""
    fs = FeatureSet(name="s3rec", item=tuple(fields))
    blocks = []
    for f, codes in item_field_codes(data.dataset, fs, schema).items():
        known = field_size(f, fs, schema) - 1  # codes >= this one are "unknown" and padding
        hot = np.zeros((len(codes), known), np.float32)
        rows, cols = np.nonzero(codes < known)
        hot[rows, codes[rows, cols]] = 1.0
        blocks.append(hot)
    return torch.from_numpy(np.concatenate(blocks, 1))


class PretrainHeads(nn.Module):
    """The attribute embeddings and the four objectives' linear maps (pre-training only). The
    attribute logits have a bias, started at each attribute's log-odds among the items: without it
    (the authors' code) the products must first learn the base rates, which 10 epochs on ml-100k
    or Amazon Beauty do not reach (benchmarks/RESULTS.md#s3rec)."""

    def __init__(self, dim: int, attrs: torch.Tensor):
        super().__init__()
        self.attribute = nn.Embedding(attrs.shape[1], dim)
        nn.init.normal_(self.attribute.weight, std=0.02)
        rate = attrs.mean(0).clamp(1e-4, 1 - 1e-4)
        self.attribute_bias = nn.Parameter((rate / (1 - rate)).log())
        self.aap, self.mip, self.map, self.sp = (nn.Linear(dim, dim) for _ in range(4))


class S3Rec(SASRec):
    """SASRec pre-trained by S3-Rec's four objectives, three of them kept on while fine-tuning
    (`pretrain_epochs` = 0 and `aux_weight` = 0: plain SASRec). The attributes are `attributes`, or
    the `features` group's item fields where it names some (`features=ids_genre`,
    `features.item=[attribute]`)."""

    def __init__(self, *, features: dict | None = None, attributes: str | list[str] = "auto", pretrain_epochs: int = 10,
                 pretrain_lr: float = 0.001, pretrain_batch_size: int = 256, mask_prob: float = 0.2,
                 aap_weight: float = 0.2, mip_weight: float = 1.0, map_weight: float = 1.0, sp_weight: float = 0.5,
                 aux_weight: float = 0.2, **params):
        if features is not None and features.get("user"):
            raise ConfigError("features.user", f"S3-Rec reads item attributes only, got user fields {features['user']}")
        if features is not None and features.get("item"):
            attributes = list(features["item"])
        attributes = attributes if isinstance(attributes, str) else list(attributes)
        super().__init__(attributes=attributes, pretrain_epochs=pretrain_epochs, pretrain_lr=pretrain_lr,
                         pretrain_batch_size=pretrain_batch_size, mask_prob=mask_prob, aap_weight=aap_weight,
                         mip_weight=mip_weight, map_weight=map_weight, sp_weight=sp_weight, aux_weight=aux_weight, **params)
        check(attributes == "auto" or (isinstance(attributes, list) and len(attributes) >= 1), "attributes",
              f"must be auto or a non-empty list of item fields (genre, attribute, ...), got {attributes!r}")
        check(isinstance(pretrain_epochs, int) and pretrain_epochs >= 0, "pretrain_epochs",
              f"must be an integer >= 0, got {pretrain_epochs!r}")
        check(pretrain_lr > 0, "pretrain_lr", f"must be > 0, got {pretrain_lr}")
        check(isinstance(pretrain_batch_size, int) and pretrain_batch_size >= 1, "pretrain_batch_size",
              f"must be an integer >= 1, got {pretrain_batch_size!r}")
        check(0.0 < mask_prob < 1.0, "mask_prob", f"must be in (0, 1), got {mask_prob}")
        for key, w in (("aap_weight", aap_weight), ("mip_weight", mip_weight), ("map_weight", map_weight),
                       ("sp_weight", sp_weight)):
            check(w >= 0, key, f"must be >= 0, got {w}")
        check(aux_weight >= 0, "aux_weight", f"must be >= 0, got {aux_weight}")

    def setup(self, stage: str) -> None:
        if stage != "fit" or (self.params.pretrain_epochs == 0 and self.params.aux_weight == 0):
            return
        self.to(self.trainer.strategy.root_device)
        data = self.trainer.datamodule.train
        if self.params.pretrain_epochs > 0:
            # pre-training draws from a fork of the random state: the fine-tuning then draws the same
            # numbers whether the encoder was pre-trained now or read from the cache
            device = self.item_emb.weight.device
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                heads, attrs = self.pretrain(data)
        else:
            _, attrs = self.attributes(data)
            heads = PretrainHeads(self.params.dim, attrs).to(attrs.device)
        if self.params.aux_weight > 0:
            # registered while fitting, so the optimizer, DDP and a resumed fit see the heads; gone at
            # the end of the fit (on_fit_end), so the fitted model stays a SASRec
            del heads.sp  # unused while fine-tuning (SP is left out), and DDP refuses parameters without gradients
            self.pretrain_heads = heads
            self.pretrain_attrs = attrs

    def on_fit_end(self) -> None:
        if hasattr(self, "pretrain_heads"):
            del self.pretrain_heads
            del self.pretrain_attrs

    # -- pre-training
    def attributes(self, data) -> tuple[list[str], torch.Tensor]:
        """The attribute fields and the items' multi-hot table of them, on the model's device."""
        fields = attribute_fields(self.params.attributes, set(data.dataset.side))
        return fields, item_attributes(data, fields, self.schema).to(self.item_emb.weight.device)

    def pretrain(self, data) -> tuple[PretrainHeads, torch.Tensor]:
        """Load the cached pre-trained encoder and heads for this data and these settings, or pre-train
        them; returns the heads and the attribute table."""
        p = self.params
        fields, attrs = self.attributes(data)
        heads = PretrainHeads(p.dim, attrs).to(attrs.device)
        cache_dir = data.info.get("cache_dir")
        if cache_dir is not None:
            m = data.train_matrix
            digest = hashlib.blake2b(digest_size=16)
            for a in (m.indptr, m.indices, attrs.cpu().numpy()):
                digest.update(np.ascontiguousarray(a).tobytes())
            name = "s3rec-" + cache_key(digest.hexdigest(), fields, {k: p[k] for k in PRETRAIN_KEYS}, torch.initial_seed())
            # the prepared data's cache (recmovie/data/cache.py): atomic writes, unreadable entries rebuilt
            cached = load_arrays(cache_dir, name, (*self.net.state_dict(), *("heads." + k for k in heads.state_dict())))
            if cached is not None:
                state = {k: torch.from_numpy(v) for k, v in cached.items()}
                self.net.load_state_dict({k: v for k, v in state.items() if not k.startswith("heads.")})
                heads.load_state_dict({k[len("heads."):]: v for k, v in state.items() if k.startswith("heads.")})
                log.info("S3-Rec: pre-trained encoder loaded from the cache (%s/%s.npz)", cache_dir, name)
                return heads, attrs
        self.run_pretraining(data, attrs, fields, heads)
        if cache_dir is not None:
            state = {**self.net.state_dict(), **{"heads." + k: v for k, v in heads.state_dict().items()}}
            save_arrays(cache_dir, name, {k: v.detach().cpu().numpy() for k, v in state.items()})
        return heads, attrs

    def run_pretraining(self, data, attrs: torch.Tensor, fields: list[str], heads: PretrainHeads) -> None:
        p = self.params
        device = self.item_emb.weight.device
        opt = adam([*self.net.parameters(), *heads.parameters()], p.pretrain_lr, p.weight_decay, decoupled=True)
        loader = sequences(data, p.pretrain_batch_size, seed=torch.initial_seed() % 2**32, max_len=p.max_len,
                           min_length=2)
        log.info("S3-Rec: pre-training %d epochs on %d sequences, %d attributes (%s)", p.pretrain_epochs,
                 loader.sampler.n, attrs.shape[1], ", ".join(fields))
        self.train()
        start = time.perf_counter()
        for epoch in range(p.pretrain_epochs):
            loader.sampler.set_epoch(epoch)
            sums = torch.zeros(4, device=device)
            for batch in loader:
                losses = self.pretrain_losses(heads, attrs, batch.items.to(device))
                total = self.weighted(losses)
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                sums += torch.stack(losses).detach()
            elapsed = time.perf_counter() - start
            left = elapsed / (epoch + 1) * (p.pretrain_epochs - epoch - 1)
            aap, mip, map_, sp = (sums / len(loader)).tolist()
            logger = self._trainer.logger if self._trainer is not None else None
            if logger:  # curves beside the fine-tuning's, per pre-training epoch
                logger.log_metrics({"pretrain_aap": aap, "pretrain_mip": mip, "pretrain_map": map_, "pretrain_sp": sp,
                                    "pretrain_epoch_seconds": elapsed / (epoch + 1)}, step=epoch + 1)
            log.info("S3-Rec pre-training epoch %d/%d  aap %.4f  mip %.4f  map %.4f  sp %.4f  %.1f s  about %.0f min "
                     "left", epoch + 1, p.pretrain_epochs, aap, mip, map_, sp, elapsed / (epoch + 1), left / 60)

    # -- fine-tuning
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if not hasattr(self, "pretrain_heads"):
            return loss
        # AAP, MIP and MAP on the same sequences, bidirectionally: they keep what pre-training taught
        # (the items' attributes, an item from both sides of it) while the next-item loss tunes the
        # encoder; SP is left out, its three extra encodings per sequence would triple the step
        aux = self.weighted(self.pretrain_losses(self.pretrain_heads, self.pretrain_attrs, batch.items, with_sp=False))
        self.log_train(len(batch), aux=aux)
        return loss + self.params.aux_weight * aux

    def weighted(self, losses: list[torch.Tensor]) -> torch.Tensor:
        """The objectives' weighted sum (AAP, MIP, MAP[, SP], as pretrain_losses returns them)."""
        p = self.params
        return sum(w * v for w, v in zip((p.aap_weight, p.mip_weight, p.map_weight, p.sp_weight), losses))

    def pretrain_losses(self, heads: PretrainHeads, attrs: torch.Tensor, items: torch.Tensor,
                        with_sp: bool = True) -> list[torch.Tensor]:
        """AAP, MIP, MAP (and SP, with `with_sp`) losses of a batch of left-padded sequences [B, W] (the
        newest max_len items)."""
        items = items[:, -self.params.max_len:]
        pad, mask = self.schema.pad_item, self.schema.mask_item
        valid = items != pad
        masked = valid & (torch.rand(items.shape, device=items.device) < self.params.mask_prob)
        segments = self.segments(items, valid) if with_sp else []
        h = self.net(torch.cat([items.masked_fill(masked, mask), *segments]), causal=False)
        if with_sp:
            h, h_context, h_pos, h_neg = h.split(len(items))
        table = heads.attribute.weight

        def attribute_loss(head: nn.Linear, where: torch.Tensor) -> torch.Tensor:
            logits = head(h[where]) @ table.T + heads.attribute_bias
            bce = F.binary_cross_entropy_with_logits(logits, attrs[items[where]], reduction="none")
            return bce.sum(-1).sum() / where.sum().clamp_min(1)

        hm = heads.mip(h[masked])
        negatives = torch.randint(0, self.n_items, (len(hm),), device=items.device)
        gap = (hm * (self.item_emb(items[masked]) - self.item_emb(negatives))).sum(-1)
        mip = -F.logsigmoid(gap).sum() / masked.sum().clamp_min(1)
        losses = [attribute_loss(heads.aap, valid & ~masked), mip, attribute_loss(heads.map, masked)]
        if not with_sp:
            return losses
        context = heads.sp(h_context[:, -1])
        return [*losses, -F.logsigmoid((context * (h_pos[:, -1] - h_neg[:, -1])).sum(-1)).mean()]

    def segments(self, items: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
        """SP's three inputs: the sequences with a random segment (1 .. half their length) masked,
        that segment alone, and a segment as long from elsewhere in the batch (all other items
        masked, padding kept)."""
        b, w = items.shape
        mask, dev = self.schema.mask_item, items.device
        n = valid.sum(1)
        length = 1 + (torch.rand(b, device=dev) * (n // 2).clamp_min(1)).long()
        start = w - n + (torch.rand(b, device=dev) * (n - length + 1)).long()
        col = torch.arange(w, device=dev)[None]
        inside = (col >= start[:, None]) & (col < (start + length)[:, None])
        flat = items[valid]  # the batch's sequences end to end
        other = (torch.rand(b, device=dev) * (len(flat) - length + 1)).long()
        take = (other[:, None] + col - start[:, None]).clamp(0, len(flat) - 1)
        outside = torch.where(valid, torch.full_like(items, mask), items)  # masks, padding left as it is
        return [items.masked_fill(inside, mask), torch.where(inside, items, outside),
                torch.where(inside, flat[take], outside)]
