"""Shared numeric kernels: for item-item models the Gram matrix and history x item-matrix products;
for AutoInt the attention of every user x item pair when ranking.

The competition's matrix (31k users x 6.8k items, 5M entries, 2.4% dense) is too sparse for dense
GEMM (40x wasted work) and too dense for generic sparse x sparse products (hash accumulators);
these kernels use a dense accumulator per output row and cache-sized column tiles instead.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from numba import njit, prange

from recmovie.data.batches import UserBatch


@njit(parallel=True, cache=True, nogil=True)
def _gram_upper(indptr, indices, data, col_indptr, col_rows, col_pos, row_order, out):  # pragma: no cover - numba
    # row a of X^T X, from column b >= a: sum over users u holding a of w_ua * w_ub
    for t in prange(out.shape[0]):
        a = row_order[t]
        row = out[a]
        for p in range(col_indptr[a], col_indptr[a + 1]):
            u = col_rows[p]
            q0 = col_pos[p]
            wa = data[q0]
            for q in range(q0, indptr[u + 1]):
                row[indices[q]] += wa * data[q]


@njit(parallel=True, cache=True, nogil=True)
def _mirror_upper(out, block):  # pragma: no cover - numba
    n = out.shape[0]
    n_blocks = (n + block - 1) // block
    for bi in prange(n_blocks):
        i0 = bi * block
        for bj in range(bi + 1):
            j0 = bj * block
            for i in range(i0, min(i0 + block, n)):
                for j in range(j0, min(j0 + block, i)):
                    out[i, j] = out[j, i]


def gram(x: sp.csr_matrix, dtype=np.float32) -> np.ndarray:
    """Dense X^T X of a sparse users x items matrix (values = weights), exact and symmetric."""
    x = sp.csr_matrix(x, dtype=dtype, copy=True)
    x.sum_duplicates()
    x.sort_indices()
    n_items = x.shape[1]
    # for each item: the users holding it and the position of the item in each user's row
    pos = sp.csr_matrix((np.arange(1, x.nnz + 1, dtype=np.int64), x.indices, x.indptr), shape=x.shape).tocsc()
    col_pos = pos.data - 1
    out = np.zeros((n_items, n_items), dtype=dtype)
    # rows in a shuffled order: the threads' static halves then get equal work even when ids
    # follow popularity (MovieLens ids do: low ids are old, popular films)
    row_order = np.random.default_rng(0).permutation(n_items)
    _gram_upper(x.indptr.astype(np.int64), x.indices.astype(np.int64), x.data, pos.indptr.astype(np.int64),
                pos.indices.astype(np.int64), col_pos, row_order, out)
    mirror_upper(out)
    return out


def mirror_upper(m: np.ndarray) -> np.ndarray:
    """Copy a C-ordered square matrix's upper triangle onto its lower one, in place."""
    _mirror_upper(m, 64)
    return m


TILE_WIDTH = 48  # columns per tile: 6 AVX registers of accumulators per user row


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _history_times(indptr, indices, values, tiles, out):  # pragma: no cover - numba
    # out[u, tile t] = sum over the user's items j of w_uj * tiles[t, j]. Tile-outer, so one tile
    # (items x 48 floats, 1.3 MB at 6.8k items) is shared by all users while it is hot in cache,
    # and the 48 accumulators of a row stay in registers across the user's whole history.
    # TILE_WIDTH is a compile-time constant: that is what lets the accumulators live in registers
    n_cols = out.shape[1]
    for t in range(tiles.shape[0]):
        c0 = t * TILE_WIDTH
        cw = min(TILE_WIDTH, n_cols - c0)
        for u in prange(out.shape[0]):
            acc = np.zeros(TILE_WIDTH, np.float32)
            for p in range(indptr[u], indptr[u + 1]):
                j = indices[p]
                w = values[p]
                for c in range(TILE_WIDTH):
                    acc[c] += w * tiles[t, j, c]
            for c in range(cw):
                out[u, c0 + c] = acc[c]


@njit(parallel=True, cache=True, nogil=True)
def _fill_tiles(m, tiles):  # pragma: no cover - numba
    # a block of rows at a time: each row of `m` is read once, left to right, and each tile gets one
    # contiguous run; tile by tile read every row once per tile, 192 bytes a row apart, and built
    # ML-20M's tiles in 4.7x the time (benchmarks/bench_tiles.py)
    n_rows, n_cols = m.shape
    block = 256
    for b in prange(-(-n_rows // block)):
        for t in range(tiles.shape[0]):
            c0 = t * TILE_WIDTH
            cw = min(TILE_WIDTH, n_cols - c0)
            for j in range(b * block, min((b + 1) * block, n_rows)):
                for c in range(cw):
                    tiles[t, j, c] = m[j, c0 + c]
                for c in range(cw, TILE_WIDTH):
                    tiles[t, j, c] = 0.0


def cache_aligned_empty(shape: tuple[int, ...], align: int = 64) -> np.ndarray:
    """An uninitialised float32 array whose first element starts a cache line. A large numpy
    array starts 16 bytes past a page (malloc's header), so each 192-byte tile row would straddle
    four cache lines instead of three: the history kernel, bound by the lines it reads, runs about
    10% faster on aligned tiles (benchmarks/RESULTS.md#cost)."""
    n = int(np.prod(shape))
    buffer = np.empty(n + align // 4, np.float32)
    start = (-buffer.ctypes.data % align) // 4
    return buffer[start:start + n].reshape(shape)


def column_tiles(matrix: torch.Tensor) -> np.ndarray:
    """The columns of an items x items float32 matrix as [n_tiles, items, width] blocks (the last
    one zero-padded), cache-line aligned: the layout `history_times` reads."""
    m = np.ascontiguousarray(matrix.detach().cpu().numpy(), dtype=np.float32)
    tiles = cache_aligned_empty((-(-m.shape[1] // TILE_WIDTH), m.shape[0], TILE_WIDTH))
    _fill_tiles(m, tiles)
    return tiles


def history_times(batch: UserBatch, tiles: np.ndarray, n_cols: int) -> torch.Tensor:
    """Scores = (users' weighted histories) @ matrix, from the matrix's `column_tiles`.

    A sparse x dense product with register-blocked rows: about twice as fast as torch's CSR x dense
    product at the competition's size. Each output row depends only on that user's history, so
    results do not depend on the batch.
    """
    out = np.empty((len(batch), n_cols), np.float32)
    _history_times(batch.indptr.numpy(), batch.indices.numpy(), batch.values.numpy().astype(np.float32, copy=False),
                   tiles, out)
    return torch.from_numpy(out)


@njit(parallel=True, cache=True, nogil=True)
def _sparse_rows_times(a_indptr, a_indices, a_data, first, b_indptr, b_indices, b_data, out):  # pragma: no cover - numba
    # out[t] = sum over the entries (j, w) of A's row first + t of w * (B's row j): a dense
    # accumulator per output row, rows in parallel
    for t in prange(out.shape[0]):
        row = out[t]
        row[:] = 0.0
        for p in range(a_indptr[first + t], a_indptr[first + t + 1]):
            w = a_data[p]
            j = a_indices[p]
            for q in range(b_indptr[j], b_indptr[j + 1]):
                row[b_indices[q]] += w * b_data[q]


def sparse_rows_times(a: sp.csr_matrix, b: sp.csr_matrix, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows start..stop of A @ B, dense float32, for CSR matrices A and B: without A @ B's other
    rows, and without the sparse product's own (hash-accumulated) output."""
    stop = a.shape[0] if stop is None else stop
    out = np.empty((stop - start, b.shape[1]), np.float32)
    _sparse_rows_times(a.indptr, a.indices, a.data.astype(np.float32, copy=False), start, b.indptr, b.indices,
                       b.data.astype(np.float32, copy=False), out)
    return out


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _attention_scores(user, item, w, scale, out):  # pragma: no cover - numba
    n_users, _, heads, n_user_fields, a = user.shape
    n_fields = n_user_fields + item.shape[3]
    for b in prange(n_users):
        pair = np.empty((4, heads, n_fields, a), np.float32)  # the pair's query/key/value/residual rows
        pair[:, :, :n_user_fields, :] = user[b]
        weights = np.empty(n_fields, np.float32)
        acc = np.empty(a, np.float32)
        for c in range(item.shape[0]):
            pair[:, :, n_user_fields:, :] = item[c]
            total = 0.0
            for h in range(heads):
                for fq in range(n_fields):
                    top = -np.inf
                    for fk in range(n_fields):
                        d = 0.0
                        for x in range(a):
                            d += pair[0, h, fq, x] * pair[1, h, fk, x]
                        weights[fk] = d * scale
                        top = max(top, weights[fk])
                    z = 0.0
                    for fk in range(n_fields):
                        weights[fk] = np.exp(weights[fk] - top)
                        z += weights[fk]
                    acc[:] = pair[3, h, fq]
                    for fk in range(n_fields):
                        coef = weights[fk] / z
                        for x in range(a):
                            acc[x] += coef * pair[2, h, fk, x]
                    for x in range(a):
                        if acc[x] > 0:
                            total += acc[x] * w[h, fq, x]
            out[b, c] += total


def attention_scores(user: np.ndarray, item: np.ndarray, w: np.ndarray, scale: float, out: np.ndarray) -> None:
    """out [B, C] += sum over heads and fields of w . ReLU(softmax(q k^T scale) v + r) for every
    user x item pair, from the users' projections [B, 4 (q, k, v, r), heads, F_user, a], the items'
    [C, 4, heads, F_item, a] and the output weights [heads, F, a]: AutoInt's one-layer attention,
    fused so that nothing is held per pair (torch's batched form moves a few kilobytes per pair
    through memory, ten times the arithmetic's time)."""
    _attention_scores(user, item, w, np.float32(scale), out)
