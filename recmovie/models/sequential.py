"""Sequential models of the user's history in time order: SASRec, GRU4Rec, BERT4Rec, GRU4RecTitles.

All three train on the `sequences` view (recmovie/data/views.py): each user's newest training
items, oldest first, padded on the LEFT with the schema's padding id (`schema.pad_item`), newest
last. The targets are built here from the batch:

- next-item models (SASRec, GRU4Rec): the view hands `max_len + 1` items; the input is all but
  the newest, and every input position predicts the item after it (positions whose input is
  padding are skipped);
- the cloze model (BERT4Rec): each item is replaced by the mask token (`schema.mask_item`) with
  probability `mask_prob` (the newest one when none was drawn) and the masked positions predict
  their items.

Ranking goes through the one engine with a UserBatch (CSR rows in time order): `score` turns the
rows into the same left-padded sequences with the same helper as the view (`left_padded`), runs
the network and scores every item at the last position (BERT4Rec: at a mask token appended after
the history). The output layer is tied to the item embeddings (the first n_items rows of the
table; the padding and mask rows are never scored).

Positions: the newest item of a sequence always sits at position `max_len - 1`, so a sequence
shorter than `max_len` (or a batch trimmed to its longest row) sees the same position embeddings
as a full one. Attention never looks at padding (a padding position attends to itself only, so
no row is fully masked); SASRec's is also causal.

Losses (`loss`, see recmovie/models/losses.py): `ce` (full softmax over every item, in chunks),
`gbce` (gSASRec: `negatives` sampled items, calibration `gbce_t`), `bce` (sampled, beta = 1),
`bpr_max` (GRU4Rec 2018, regularised by `bpreg`) and `sampled_softmax` (the full softmax
estimated on `negatives` items, logits corrected for the sampling).
Confidence weights (the `confidence` group) weight each target position's term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recmovie.data.batches import SequenceBatch, UserBatch
from recmovie.data.text import ENCODERS
from recmovie.data.views import left_padded
from recmovie.models.base import check
from recmovie.models.layers import init_weights
from recmovie.models.lightning import LitRecommender, adam
from recmovie.models.losses import SEQUENCE, bpr_max, full_softmax_ce, gbce_beta, sampled_bce, sampled_softmax

SCORE_CHUNK = 256  # users run through the network at once when scoring (results do not depend on it)


class Block(nn.Module):
    """Pre-LN transformer block: x + attention(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, heads: int, dropout: float, ff_mult: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(ff_mult * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, w, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, w, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # no dropout on the attention weights: on CPU drawing a [B, heads, W, W] mask costs more than
        # the attention itself; dropout acts on the embeddings, the residual branches and the FFN
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, w, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class Transformer(nn.Module):
    """Item + learned position embeddings, `layers` blocks, a final layer norm; causal or not."""

    def __init__(self, n_tokens: int, pad: int, max_len: int, dim: int, layers: int, heads: int,
                 dropout: float, ff_mult: int, causal: bool):
        super().__init__()
        self.pad, self.max_len, self.causal = pad, max_len, causal
        self.item_emb = nn.Embedding(n_tokens, dim, padding_idx=pad)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout, ff_mult) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, items: torch.Tensor, causal: bool | None = None) -> torch.Tensor:
        """Hidden states [B, W, dim] of left-padded items [B, W]; `causal` overrides the network's own
        (S3-Rec pre-trains its causal encoder bidirectionally)."""
        b, w = items.shape
        valid = items != self.pad
        pos = torch.arange(self.max_len - w, self.max_len, device=items.device)
        keep = valid[..., None].to(self.item_emb.weight.dtype)
        x = self.drop(self.item_emb(items) + self.pos_emb(pos)[None]) * keep
        eye = torch.eye(w, dtype=torch.bool, device=items.device)
        allowed = valid[:, None, None, :] | eye  # [B, 1, W, W]: valid keys, and always itself
        if self.causal if causal is None else causal:
            allowed = allowed & torch.ones(w, w, dtype=torch.bool, device=items.device).tril()
        for block in self.blocks:
            x = block(x, allowed) * keep
        return self.norm(x)


class SequentialRecommender(LitRecommender):
    """What the three share: the view, the losses, scoring a UserBatch at the last position."""

    view = "sequences"
    next_item = True  # False: cloze (BERT4Rec)

    def __init__(self, *, max_len: int, dim: int = 64, dropout: float, loss: str = "ce",
                 negatives: int = 256, gbce_t: float = 0.75, bpreg: float = 1.0, weight_decay: float = 0.0,
                 batch_size: int = 64, **training):
        super().__init__(max_len=max_len, dim=dim, dropout=dropout, loss=loss, negatives=negatives, gbce_t=gbce_t,
                         bpreg=bpreg, weight_decay=weight_decay, batch_size=batch_size, **training)
        check(isinstance(max_len, int) and max_len >= 2, "max_len", f"must be an integer >= 2, got {max_len!r}")
        check(isinstance(dim, int) and dim >= 1, "dim", f"must be an integer >= 1, got {dim!r}")
        check(0.0 <= dropout < 1.0, "dropout", f"must be in [0, 1), got {dropout}")
        check(loss in SEQUENCE, "loss", f"must be one of {list(SEQUENCE)}, got {loss!r}")
        check(isinstance(negatives, int) and negatives >= 1, "negatives", f"must be an integer >= 1, got {negatives!r}")
        check(0.0 <= gbce_t <= 1.0, "gbce_t", f"must be in [0, 1], got {gbce_t}")
        check(bpreg >= 0.0, "bpreg", f"must be >= 0, got {bpreg}")

    def configure_optimizers(self):
        return adam(self.parameters(), self.params.lr, self.params.weight_decay, decoupled=True)

    def view_options(self) -> dict:
        # next-item: max_len inputs + the item after the last of them
        return {"max_len": self.params.max_len + (1 if self.next_item else 0), "min_length": 2}

    # -- to implement: items [B, W] (left-padded) -> hidden states [B, W, dim]
    def encode(self, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states, output table) whose product gives the item logits; tied to the item embeddings."""
        return h, self.item_table()

    def item_table(self) -> torch.Tensor:
        return self.item_emb.weight[: self.n_items]

    @property
    def item_emb(self) -> nn.Embedding:
        return self.net.item_emb

    # -- ranking
    def history(self, batch: UserBatch) -> torch.Tensor:
        """The model's input for ranking: the user's newest max_len items, left-padded."""
        return left_padded(batch.indptr, batch.indices, None, self.params.max_len, self.schema.pad_item)[0]

    def score(self, batch: UserBatch) -> torch.Tensor:
        items = self.history(batch).to(self.item_emb.weight.device)
        out = []
        for s in range(0, len(items), SCORE_CHUNK):
            chunk = items[s : s + SCORE_CHUNK]
            longest = int((chunk != self.schema.pad_item).sum(1).max()) if len(chunk) else 0
            chunk = chunk[:, chunk.shape[1] - max(1, longest):]  # leading columns that are padding everywhere
            h, table = self.output(self.encode(chunk)[:, -1])
            out.append(h @ table.T)
        return torch.cat(out) if out else torch.zeros(0, self.n_items, device=items.device)

    # -- training
    def targets(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(input items [B, W], positions [B, W] bool that predict, their target items [N], weights [N])."""
        items, pad = batch.items, self.schema.pad_item
        inputs, target = items[:, :-1], items[:, 1:]
        where = inputs != pad  # padding is on the left only, so the target is an item too
        weights = None if batch.weights is None else batch.weights[:, 1:][where]
        return inputs, where, target[where], weights

    def sequence_loss(self, h: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        p = self.params
        h, table = self.output(h)
        if p.loss == "ce":
            return full_softmax_ce(h, table, targets, weights)
        k = min(p.negatives, self.n_items)
        negatives = torch.randint(0, self.n_items, (k,), device=h.device)
        if p.loss == "bpr_max":
            return bpr_max(h, table, targets, negatives, p.bpreg, weights)
        if p.loss == "sampled_softmax":
            return sampled_softmax(h, table, targets, negatives, self.n_items, weights)
        beta = gbce_beta(k, self.n_items, p.gbce_t) if p.loss == "gbce" else 1.0
        return sampled_bce(h, table, targets, negatives, beta, weights)

    def training_step(self, batch: SequenceBatch, batch_idx: int) -> torch.Tensor:
        inputs, where, targets, weights = self.targets(batch)
        loss = self.sequence_loss(self.encode(inputs)[where], targets, weights)
        self.log_train(len(batch), loss=loss)
        return loss


class SASRec(SequentialRecommender):
    """Kang & McAuley 2018: causal self-attention over the history (pre-LN blocks, learned
    positions), the next item predicted at every position; with `loss=gbce`, gSASRec (Petrov &
    Macdonald 2023)."""

    def __init__(self, *, layers: int = 2, heads: int = 2, ff_mult: int = 1, max_len: int = 100, dropout: float = 0.5,
                 lr: float = 0.001, max_epochs: int = 150, patience: int = 10, select_on: str = "last", **params):
        super().__init__(layers=layers, heads=heads, ff_mult=ff_mult, max_len=max_len, dropout=dropout, lr=lr,
                         max_epochs=max_epochs, patience=patience, select_on=select_on, **params)
        check(isinstance(layers, int) and layers >= 1, "layers", f"must be an integer >= 1, got {layers!r}")
        check(isinstance(heads, int) and heads >= 1 and self.params.dim % heads == 0, "heads",
              f"must be an integer >= 1 dividing dim ({self.params.dim}), got {heads!r}")
        check(isinstance(ff_mult, int) and ff_mult >= 1, "ff_mult", f"must be an integer >= 1, got {ff_mult!r}")

    causal = True

    def build(self, schema) -> None:
        super().build(schema)
        p = self.params
        self.net = Transformer(schema.n_item_tokens, schema.pad_item, p.max_len, p.dim, p.layers, p.heads,
                               p.dropout, p.ff_mult, causal=self.causal)
        init_weights(self)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        return self.net(items)


class BERT4Rec(SASRec):
    """Sun et al. 2019: bidirectional self-attention trained as a cloze task (`mask_prob`); ranking
    appends the mask token after the newest max_len - 1 items and scores that position. The output
    goes through a projection (linear, GELU, layer norm) before the tied item table, plus a bias."""

    next_item = False
    causal = False

    def __init__(self, *, mask_prob: float = 0.2, ff_mult: int = 4, dropout: float = 0.2, lr: float = 0.005,
                 patience: int = 8, select_on: str = "all", **params):
        super().__init__(mask_prob=mask_prob, ff_mult=ff_mult, dropout=dropout, lr=lr, patience=patience,
                         select_on=select_on, **params)
        check(0.0 < mask_prob < 1.0, "mask_prob", f"must be in (0, 1), got {mask_prob}")

    def build(self, schema) -> None:
        super().build(schema)
        dim = self.params.dim
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        init_weights(self.head)
        self.out_bias = nn.Parameter(torch.zeros(schema.n_items))

    def output(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the bias as one more column: [g(h), 1] @ [E, b]^T = g(h) E^T + b
        g = self.head(h)
        ones = torch.ones(*g.shape[:-1], 1, dtype=g.dtype, device=g.device)
        return torch.cat([g, ones], -1), torch.cat([self.item_table(), self.out_bias[:, None]], 1)

    def history(self, batch: UserBatch) -> torch.Tensor:
        items = left_padded(batch.indptr, batch.indices, None, self.params.max_len - 1, self.schema.pad_item)[0]
        mask = torch.full((len(items), 1), self.schema.mask_item, dtype=items.dtype, device=items.device)
        return torch.cat([items, mask], 1)

    def targets(self, batch: SequenceBatch):
        items = batch.items
        valid = items != self.schema.pad_item
        masked = valid & (torch.rand(items.shape, device=items.device) < self.params.mask_prob)
        # a sequence with no masked item gets its newest one masked (the ranking-time task)
        none = ~masked.any(1) & valid[:, -1]
        masked[:, -1] |= none
        inputs = items.masked_fill(masked, self.schema.mask_item)
        weights = None if batch.weights is None else batch.weights[masked]
        return inputs, masked, items[masked], weights


class GRU4Rec(SequentialRecommender):
    """Hidasi et al. 2016/2018: a GRU over the item embeddings (packed: padding never enters the
    recurrence), a projection back to the embedding width, the next item at every position
    scored against the tied item table (full softmax by default: the 2018 paper's CE)."""

    def __init__(self, *, hidden: int = 128, layers: int = 1, max_len: int = 50, dropout: float = 0.2,
                 lr: float = 0.003, max_epochs: int = 100, patience: int = 6, select_on: str = "all", **params):
        super().__init__(hidden=hidden, layers=layers, max_len=max_len, dropout=dropout, lr=lr, max_epochs=max_epochs,
                         patience=patience, select_on=select_on, **params)
        check(isinstance(hidden, int) and hidden >= 1, "hidden", f"must be an integer >= 1, got {hidden!r}")
        check(isinstance(layers, int) and layers >= 1, "layers", f"must be an integer >= 1, got {layers!r}")

    def build(self, schema) -> None:
        super().build(schema)
        p = self.params
        self.emb = nn.Embedding(schema.n_item_tokens, p.dim, padding_idx=schema.pad_item)
        self.gru = nn.GRU(p.dim, p.hidden, p.layers, batch_first=True, dropout=p.dropout if p.layers > 1 else 0.0)
        self.proj = nn.Linear(p.hidden, p.dim)
        self.drop = nn.Dropout(p.dropout)
        nn.init.xavier_normal_(self.emb.weight)
        with torch.no_grad():
            self.emb.weight[schema.pad_item].zero_()

    @property
    def item_emb(self) -> nn.Embedding:
        return self.emb

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """The input vector of each item id (the padding id's is zero)."""
        return self.emb(items)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        b, w = items.shape
        lengths = (items != self.schema.pad_item).sum(1)
        shift = w - lengths  # leading padding per row
        cols = torch.arange(w, device=items.device)[None, :]
        # right-aligned copy for packing: row r's entry j is its item at column j + shift_r
        right = items.gather(1, (cols + shift[:, None]).clamp_max(w - 1))
        x = self.drop(self.item_vectors(right))
        packed = pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=w)
        # back to the left-padded layout (column c holds the state after item c - shift_r)
        left = out.gather(1, (cols - shift[:, None]).clamp_min(0)[..., None].expand(b, w, out.shape[-1]))
        return self.proj(self.drop(left))


class GRU4RecTitles(GRU4Rec):
    """GRU4Rec whose items are their id embedding plus a learned projection of a fixed text
    embedding of their title (and of `text_fields` beyond it, e.g. genres): the seed team's GRU4Rec
    with title embeddings, after GRU4RecBE (GRU4Rec fed with pretrained BERT item embeddings).
    The same vectors form the tied output table, so a rarely seen item is still scored through its
    title. The text embeddings (recmovie/data/text.py: `tfidf` offline by default, `minilm` with the
    `text` extra) are computed from the data the model fits on, cached with the prepared data, and
    kept in the checkpoint (a buffer), so predict.py needs neither the titles nor the encoder."""

    def __init__(self, *, text_fields: tuple[str, ...] | list[str] = ("title",), text_encoder: str = "tfidf",
                 text_dim: int = 64, **params):
        fields = list(text_fields) if isinstance(text_fields, (list, tuple)) else [text_fields]
        super().__init__(text_fields=fields, text_encoder=text_encoder, text_dim=text_dim, **params)
        check(len(fields) >= 1 and all(isinstance(f, str) for f in fields), "text_fields",
              f"must be a non-empty list of side-field names (title, genre, ...), got {text_fields!r}")
        check(text_encoder in ENCODERS, "text_encoder", f"must be one of {list(ENCODERS)}, got {text_encoder!r}")
        check(isinstance(text_dim, int) and text_dim >= 1, "text_dim", f"must be an integer >= 1, got {text_dim!r}")

    def build(self, schema) -> None:
        from recmovie.data.text import encoder_dim

        super().build(schema)
        width = encoder_dim(self.params.text_encoder, self.params.text_dim)
        self.register_buffer("text", torch.zeros(schema.n_item_tokens, width))  # padding/mask rows stay zero
        self.text_proj = nn.Linear(width, self.params.dim, bias=False)

    def setup(self, stage: str) -> None:
        # the embeddings of the data being fitted (deterministic and cached, so every DDP process agrees)
        from recmovie.data.text import text_embeddings

        data = self.trainer.datamodule.train
        emb = text_embeddings(data.dataset, self.params.text_fields, self.params.text_encoder, self.params.text_dim,
                              data.info.get("cache_dir"))
        with torch.no_grad():
            self.text.zero_()
            self.text[: self.n_items] = torch.from_numpy(emb)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.emb(items) + self.text_proj(self.text[items])

    def item_table(self) -> torch.Tensor:
        return self.emb.weight[: self.n_items] + self.text_proj(self.text[: self.n_items])
