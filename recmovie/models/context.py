"""Context-aware models on feature sets (recmovie/data/features.py): FM, DeepFM, Wide&Deep and AutoInt.

Every model reads two sides: the user (id + user fields from the history) and the item (id +
item fields from the side files), each field a bag embedded as the mean of its codes. A model's
score of a (user, item) pair is a factorised part, <u_vec(user), i_vec(item)>, plus optionally a
deep part, mlp(h_user(user) + h_item(item)): the MLP's first layer applied to the concatenated
field embeddings is the sum of one linear map per side, so that each side's share is computed
once per user and once per item. Ranking the catalogue is then one [B, D] x [D, n_items] product
for the factorised part, and for the deep part the rest of the MLP over item blocks sized so that
one block's activations stay within `score_budget_mb` (never a [B x n_items, fields] tensor).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from recmovie.data.batches import FieldBatch, UserBatch
from recmovie.data.features import FeatureSet, field_size, item_field_codes, user_field_codes
from recmovie.models.base import check
from recmovie.models.layers import mlp
from recmovie.models.pairwise import PairwiseRecommender

Codes = dict[str, torch.Tensor]  # field -> [..., W] bags of codes


class FieldEmbeddings(nn.Module):
    """One bag table per field (plus the padding row, kept at zero, left out of the mean)."""

    def __init__(self, sizes: dict[str, int], dim: int, init_std: float):
        super().__init__()
        self.pads = dict(sizes)
        self.tables = nn.ModuleDict({f: nn.EmbeddingBag(n + 1, dim, mode="mean", padding_idx=n)
                                     for f, n in sizes.items()})
        for f, table in self.tables.items():
            if init_std > 0:
                nn.init.normal_(table.weight, std=init_std)
            else:  # linear weights start at zero
                nn.init.zeros_(table.weight)
            with torch.no_grad():
                table.weight[sizes[f]] = 0.0

    def forward(self, codes: Codes, fields: tuple[str, ...], squares: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[..., F, dim] mean embedding of each field's bag, and with `squares` the [...] sum over
        fields of sum_j x_j^2 |v_j|^2 (x_j = 1 / bag size: the FM's self-interactions to remove)."""
        means, sq = [], []
        for f in fields:
            c = codes[f]
            flat = c.reshape(-1, c.shape[-1])
            means.append(self.tables[f](flat).reshape(*c.shape[:-1], -1))
            if squares:
                n = (flat != self.pads[f]).sum(-1).clamp_min(1).to(torch.float32)
                norms = self.tables[f].weight.pow(2).sum(-1)  # zero on the padding row
                sq.append((norms[flat].sum(-1) / n.pow(2)).reshape(c.shape[:-1]))
        return torch.stack(means, -2), torch.stack(sq, -1).sum(-1) if squares else None


class ContextRecommender(PairwiseRecommender):
    """The shared part of the family: feature codes, the fields view, training on sampled
    negatives with a pairwise loss, and the memory-safe full ranking. Subclasses implement
    `factors(codes, side)` and optionally `hidden(codes, side)` + `self.deep`."""

    view = "fields"
    per_user_state = True  # the user id is a feature
    has_deep = False

    def __init__(self, *, features: dict | None = None, score_budget_mb: int = 256, max_epochs: int = 60, **params):
        fs = FeatureSet.from_config(features)
        super().__init__(features=fs.to_dict(), score_budget_mb=score_budget_mb, max_epochs=max_epochs, **params)
        check(isinstance(score_budget_mb, int) and score_budget_mb >= 1, "score_budget_mb",
              f"must be an integer >= 1, got {score_budget_mb!r}")
        self.fs = fs
        self.sides = {"user": ("user", *fs.user), "item": ("item", *fs.item)}

    def view_options(self) -> dict:
        return {**super().view_options(), "features": self.params.features, "schema": self.schema}

    def build(self, schema) -> None:
        super().build(schema)
        self.sizes = {"user": schema.n_users, "item": schema.n_items,
                      **{f: field_size(f, self.fs, schema) for f in (*self.fs.user, *self.fs.item_tables)}}
        # the items' field codes, filled from the data when fitting (setup) or from a checkpoint
        for f in self.fs.item_tables:
            self.register_buffer(f"codes_{f}", torch.zeros(0, 1, dtype=torch.int64))
        self.bias = nn.Parameter(torch.zeros(()))

    def field_sizes(self, side: str) -> dict[str, int]:
        return {f: self.sizes[f] for f in self.sides[side]}

    def setup(self, stage: str) -> None:
        if stage == "fit":
            data = self.trainer.datamodule.train
            for f, codes in item_field_codes(data.dataset, self.fs, self.schema).items():
                setattr(self, f"codes_{f}", torch.from_numpy(codes).to(self.bias.device))

    # -- codes of each side
    def user_codes(self, batch: UserBatch) -> Codes:
        genre = getattr(self, "codes_genre", None)
        fields = user_field_codes(batch.indptr.cpu().numpy(), batch.indices.cpu().numpy(), self.fs,
                                  None if genre is None else genre.cpu().numpy(), self.sizes.get("top_genres", 1))
        users = batch.users.to(self.bias.device)
        return {"user": users[:, None], **{k: torch.from_numpy(v).to(users.device) for k, v in fields.items()}}

    def item_codes(self, items: torch.Tensor) -> Codes:
        items = items.to(self.bias.device)
        return {"item": items[..., None], **{f: getattr(self, f"codes_{f}")[items] for f in self.fs.item}}

    # -- to implement: the factorised part (and the deep part's first layer) of one side
    def factors(self, codes: Codes, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., D] vectors whose dot product across the sides is the factorised score, and the
        [...] squared norms of the side's pooled embeddings (what `reg` penalises)."""
        raise NotImplementedError

    def hidden(self, codes: Codes, side: str) -> torch.Tensor:
        """[..., H] this side's share of the deep part's first layer."""
        raise NotImplementedError

    # -- scoring
    def pair_scores(self, user: Codes, item: Codes) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [B, C] of users [B] x their items [B, C], and the regulariser's squared norms."""
        u, u_sq, hu = self.side_parts(user, "user")  # [B, D], [B], [B, H]
        i, i_sq, hi = self.side_parts(item, "item")  # [B, C, D], [B, C], [B, C, H]
        s = (u[:, None, :] * i).sum(-1)
        if self.has_deep:
            s = s + self.deep_scores(hu[:, None], hi)
        return s, u_sq.sum() + i_sq.sum() / i_sq.shape[1]

    def side_parts(self, codes: Codes, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """factors(), and hidden() for the deep models, of a side's rows: computed once per distinct
        id (a batch of 4096 x 5 pairs holds each item many times), then spread back."""
        ids = codes[side][..., 0]
        uniq, inverse = torch.unique(ids, return_inverse=True)
        first = torch.empty(len(uniq), dtype=torch.int64, device=ids.device)
        first.scatter_(0, inverse.flatten(), torch.arange(ids.numel(), device=ids.device))
        rows = {f: c.reshape(-1, c.shape[-1])[first] for f, c in codes.items()}
        vec, sq = self.factors(rows, side)
        hidden = self.hidden(rows, side)[inverse] if self.has_deep else None
        return vec[inverse], sq[inverse], hidden

    def training_step(self, batch: FieldBatch, batch_idx: int) -> torch.Tensor:
        user = {"user": batch.users[:, None], **batch.user_fields}
        item = {"item": batch.items[..., None], **batch.item_fields}
        s, sq = self.pair_scores(user, item)
        return self.pairwise_step(s[:, 0], s[:, 1:], batch.weight, sq, len(batch))

    def score(self, batch: UserBatch) -> torch.Tensor:
        user = self.user_codes(batch)
        item = self.item_codes(torch.arange(self.n_items, device=self.bias.device))
        out = self.factors(user, "user")[0] @ self.factors(item, "item")[0].T  # [B, n_items]
        if self.has_deep:
            self.add_deep_scores(out, self.hidden(user, "user"), self.hidden(item, "item"))
        return out

    def add_deep_scores(self, out: torch.Tensor, hu: torch.Tensor, hi: torch.Tensor) -> None:
        """out [B, n_items] += the deep part of every user x item, from the sides' shares hu [B, ...]
        and hi [n_items, ...], in item blocks within score_budget_mb."""
        block = self.item_block(len(hu))
        for s in range(0, self.n_items, block):
            out[:, s : s + block] += self.deep_scores(hu[:, None], hi[None, s : s + block])

    def deep_scores(self, hu: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """The deep part's scores of user shares hu [B, 1, ...] x item shares hi [B or 1, C, ...]: [B, C]."""
        return self.deep(hu + hi).squeeze(-1)

    def floats_per_pair(self) -> int:
        """float32 activations the deep part holds per (user, item) pair: each layer's input and output."""
        return 2 * sum(m.in_features + m.out_features for m in self.deep if isinstance(m, nn.Linear))

    def item_block(self, n_users: int) -> int:
        """Items per block of the deep part so that its activations for n_users x block pairs stay
        within score_budget_mb."""
        return max(1, (self.params.score_budget_mb << 20) // (4 * self.floats_per_pair() * max(1, n_users)))

    def score_items(self, batch: UserBatch, items: torch.Tensor) -> torch.Tensor:
        return self.pair_scores(self.user_codes(batch), self.item_codes(items.clamp_min(0)))[0]


class FM(ContextRecommender):
    """Rendle 2010: w0 + sum_j w_j x_j + sum_{j<j'} x_j x_j' <v_j, v_j'> over every feature of the
    pair (x_j = 1 / bag size for the values of a bag). The pairwise sum splits into
    <S_user, S_item> + within(user) + within(item), within(side) = (|S_side|^2 - Q_side) / 2 with
    S = sum_j x_j v_j and Q = sum_j x_j^2 |v_j|^2 over the side's features, so a side's vector is
    [S, linear + within, 1] (user) or [S, 1, linear + within] (item): D = dim + 2."""

    def build(self, schema) -> None:
        super().build(schema)
        p = self.params
        self.emb = nn.ModuleDict({side: FieldEmbeddings(self.field_sizes(side), p.dim, p.init_std)
                                  for side in self.sides})
        self.lin = nn.ModuleDict({side: FieldEmbeddings(self.field_sizes(side), 1, 0.0) for side in self.sides})

    def fm_side(self, codes: Codes, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """S [..., dim], linear + within-side interactions [...], pooled embeddings [..., F, dim]."""
        e, q = self.emb[side](codes, self.sides[side], squares=True)
        w, _ = self.lin[side](codes, self.sides[side])
        s = e.sum(-2)
        return s, w.sum((-1, -2)) + 0.5 * (s.pow(2).sum(-1) - q), e

    def factors(self, codes: Codes, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        s, rest, e = self.fm_side(codes, side)
        one = torch.ones_like(rest)
        parts = [s, (rest + self.bias)[..., None], one[..., None]] if side == "user" else [s, one[..., None], rest[..., None]]
        return torch.cat(parts, -1), e.pow(2).sum((-1, -2))


class DeepFM(FM):
    """Guo et al. 2017: the FM above plus an MLP over the concatenated pooled field embeddings,
    which it shares with the FM part."""

    has_deep = True

    def __init__(self, hidden: list[int] | tuple[int, ...] = (128, 64), dropout: float = 0.0, **params):
        super().__init__(hidden=list(hidden), dropout=dropout, **params)
        check(len(hidden) >= 1 and all(isinstance(h, int) and h >= 1 for h in hidden), "hidden",
              f"must be a non-empty list of integers >= 1, got {hidden!r}")
        check(0 <= dropout < 1, "dropout", f"must be in [0, 1), got {dropout}")

    def build(self, schema) -> None:
        super().build(schema)
        p = self.params
        h = p.hidden[0]
        self.first = nn.ModuleDict({side: nn.Linear(len(self.sides[side]) * p.dim, h, bias=side == "user")
                                    for side in self.sides})
        # the MLP after its first (split) layer, whose output is always a fresh sum: ReLU in place
        self.deep = mlp([*p.hidden, 1], "relu", p.dropout, activate_input=True, inplace=True)

    def deep_embeddings(self, codes: Codes, side: str) -> torch.Tensor:
        return self.emb[side](codes, self.sides[side])[0]

    def hidden(self, codes: Codes, side: str) -> torch.Tensor:
        return self.first[side](self.deep_embeddings(codes, side).flatten(-2))


class WideDeep(DeepFM):
    """Cheng et al. 2016: a wide linear model over every feature plus the cross-product of the
    user's top genres and the item's genres (with both fields in the feature set), and a deep MLP
    over the concatenated pooled field embeddings (its own tables); their logits add up. One Adam
    optimiser trains both (the paper uses FTRL for the wide part and AdaGrad for the deep one)."""

    def build(self, schema) -> None:
        super().build(schema)
        del self.emb  # the wide part has no factors; the deep part's tables:
        p = self.params
        self.deep_emb = nn.ModuleDict({side: FieldEmbeddings(self.field_sizes(side), p.dim, p.init_std)
                                       for side in self.sides})
        self.crossed = "top_genres" in self.fs.user and "genre" in self.fs.item
        if self.crossed:
            g = self.sizes["genre"]
            self.cross = nn.Embedding(g + 1, g, padding_idx=g)  # row a: weights of user genre a x item genres
            nn.init.zeros_(self.cross.weight)

    def deep_embeddings(self, codes: Codes, side: str) -> torch.Tensor:
        return self.deep_emb[side](codes, self.sides[side])[0]

    def factors(self, codes: Codes, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        w, _ = self.lin[side](codes, self.sides[side])
        w = w.sum((-1, -2))
        one = torch.ones_like(w)[..., None]
        parts = [(w + self.bias)[..., None], one] if side == "user" else [one, w[..., None]]
        if self.crossed:  # user: mean cross row over its top genres; item: its genres as a mean one-hot
            g = self.sizes["genre"]
            if side == "user":
                c = codes["top_genres"]
                n = (c != g).sum(-1, keepdim=True).clamp_min(1)
                parts.append(self.cross(c).sum(-2) / n)
            else:
                c = codes["genre"]
                hot = torch.nn.functional.one_hot(c, g + 1)[..., :g].sum(-2).float()
                parts.append(hot / (c != g).sum(-1, keepdim=True).clamp_min(1))
        sq = self.deep_emb[side](codes, self.sides[side])[0].pow(2).sum((-1, -2))
        return torch.cat(parts, -1), sq


class AutoInt(FM):
    """Song et al. 2019: `att_layers` layers of multi-head self-attention over the pair's pooled
    field embeddings (user side and item side together), each field's output ReLU(attention +
    a residual projection of its input), then one linear map of the concatenated outputs; plus the
    FM's linear part (and its second-order part with `second_order`). The first layer's query /
    key / value / residual projections are per field, so each side's share is computed once per
    user and once per item (`hidden`); the attention itself mixes both sides and runs per pair, in
    item blocks when ranking the catalogue. Attention scores are scaled by 1/sqrt(att_dim) (torch's
    attention kernel; the paper does not scale)."""

    has_deep = True

    def __init__(self, *, att_layers: int = 1, heads: int = 2, att_dim: int = 32, second_order: bool = True,
                 **params):
        super().__init__(att_layers=att_layers, heads=heads, att_dim=att_dim, second_order=second_order, **params)
        for key, v in (("att_layers", att_layers), ("heads", heads), ("att_dim", att_dim)):
            check(isinstance(v, int) and v >= 1, key, f"must be an integer >= 1, got {v!r}")
        check(isinstance(second_order, bool), "second_order", f"must be true or false, got {second_order!r}")

    def build(self, schema) -> None:
        super().build(schema)
        p = self.params
        width = p.heads * p.att_dim
        self.first = nn.Linear(p.dim, 4 * width, bias=False)  # query, key, value, residual of each field
        self.deeper = nn.ModuleList(nn.Linear(width, 4 * width, bias=False) for _ in range(p.att_layers - 1))
        self.out = nn.Linear((len(self.sides["user"]) + len(self.sides["item"])) * width, 1, bias=False)

    def factors(self, codes: Codes, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.params.second_order:
            return super().factors(codes, side)
        e, _ = self.emb[side](codes, self.sides[side])
        w = self.lin[side](codes, self.sides[side])[0].sum((-1, -2))
        one = torch.ones_like(w)[..., None]
        parts = [(w + self.bias)[..., None], one] if side == "user" else [one, w[..., None]]
        return torch.cat(parts, -1), e.pow(2).sum((-1, -2))

    def hidden(self, codes: Codes, side: str) -> torch.Tensor:
        """[..., F_side, 4 x heads x att_dim]: the first layer's projections of the side's fields."""
        return self.first(self.emb[side](codes, self.sides[side])[0])

    def deep_scores(self, hu: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        lead = torch.broadcast_shapes(hu.shape[:-2], hi.shape[:-2])
        if not self.deeper:
            return self.first_layer_scores(hu, hi)
        x = torch.cat([hu.expand(*lead, *hu.shape[-2:]), hi.expand(*lead, *hi.shape[-2:])], -2)
        h = self.attend(x.reshape(-1, *x.shape[-2:]))
        for layer in self.deeper:
            h = self.attend(layer(h))
        return self.out(h.flatten(-2)).reshape(lead)

    def add_deep_scores(self, out: torch.Tensor, hu: torch.Tensor, hi: torch.Tensor) -> None:
        if self.deeper or torch.is_grad_enabled() or out.device.type != "cpu":
            return super().add_deep_scores(out, hu, hi)
        # ranking on CPU: one fused kernel per (user, item) holds nothing per pair (recmovie/models/ops.py)
        from recmovie.models.ops import attention_scores

        heads, a = self.params.heads, self.params.att_dim

        def layout(x: torch.Tensor) -> np.ndarray:  # [N, F, 4 x width] -> [N, 4, heads, F, a]
            return x.unflatten(-1, (4, heads, a)).permute(0, 2, 3, 1, 4).contiguous().numpy()

        w = self.out.weight.detach().view(-1, heads, a).transpose(0, 1).contiguous().numpy()
        attention_scores(layout(hu.float()), layout(hi.float()), w, a**-0.5, out.numpy())

    def first_layer_scores(self, hu: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """deep_scores of a one-layer network without the [pairs, F, 4 x width] copy of both sides'
        projections: the attention scores between the sides are one einsum over the user's and the
        item's own projections (a matrix product over users x items when ranking), and so are the
        attended values, so that per pair only the scores and the attended values are held (torch's
        attention kernel on [pairs, heads, 4, a] and batched 4 x 4 products cost several times more)."""
        heads, a = self.params.heads, self.params.att_dim
        n_user = hu.shape[-2]

        def split(x: torch.Tensor) -> torch.Tensor:  # [..., F, 4 x width] -> [4, ..., heads, F, a]
            return x.unflatten(-1, (4, heads, a)).movedim(-3, 0).transpose(-3, -2)

        (qu, ku, vu, ru), (qi, ki, vi, ri) = split(hu), split(hi)
        # ranking ([B, 1] users x [1, C] items): einsum makes each product one matrix product over
        # users x items; training ([B, 1] x [B, C] candidates): broadcast products are faster
        ranking = hi.shape[:-2] != torch.broadcast_shapes(hu.shape[:-2], hi.shape[:-2])
        w = self.out.weight.view(-1, heads, a).transpose(0, 1)  # [heads, F, a]
        total = 0.0
        for q, r, w_side in ((qu, ru, w[:, :n_user]), (qi, ri, w[:, n_user:])):
            scores = [torch.einsum("...hfa,...hga->...hfg", q, k) if ranking else q @ k.transpose(-1, -2)
                      for k in (ku, ki)]
            shape = torch.broadcast_shapes(*(x.shape[:-1] for x in scores))
            weights = (torch.cat([x.expand(*shape, x.shape[-1]) for x in scores], -1) * a**-0.5).softmax(-1)
            o = r
            for wk, v in zip(weights.split([n_user, hi.shape[-2]], -1), (vu, vi)):
                o = o + (torch.einsum("...hfg,...hga->...hfa", wk, v) if ranking
                         else sum(wk[..., g : g + 1] * v[..., g : g + 1, :] for g in range(v.shape[-2])))
            total = total + (torch.relu(o) * w_side).sum((-1, -2, -3))  # o: [..., heads, F_side, a]
        return total

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """[N, F, 4 x width] projections -> [N, F, width] = ReLU(attention over the F fields + residual)."""
        n, f, _ = x.shape
        heads, a = self.params.heads, self.params.att_dim
        q, k, v, r = x.view(n, f, 4, heads, a).permute(2, 0, 3, 1, 4)  # each [N, heads, F, a]
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return torch.relu(o + r).transpose(1, 2).reshape(n, f, heads * a)

    def floats_per_pair(self) -> int:
        p = self.params
        f, width = len(self.sides["user"]) + len(self.sides["item"]), p.heads * p.att_dim
        # per layer: the projections, q/k/v copies for the kernel, the weights, the output and its ReLU
        return p.att_layers * f * (10 * width + p.heads * f)
