"""The ranking kernel's column tiles at a given catalogue size, printed (never asserted): building
them (allocation, first touch, copy) and ranking users with them, in one process, four ways (the last two tried, not kept: benchmarks/RESULTS.md#cost):
  - `ops.column_tiles` (the code): a cache-line aligned malloc'd buffer, filled 256 rows of B at a time;
  - tile by tile (the code before): the same buffer, filled one tile at a time, every row of B read once per tile;
  - huge pages: an anonymous map with madvise(MADV_HUGEPAGE), filled 256 rows at a time;
  - int16: B quantised per column (scale = the column's largest |value| / 32767), 64 columns a tile
    (two cache lines a row, against three for 48 float32 columns), converted to float32 as it is read.
Random B, synthetic histories (Zipf-popular items).

    python benchmarks/bench_tiles.py [--items 26744] [--users 4096] [--length 145] [--chunks 4] [--rounds 4]

At ML-20M's size (the default) it holds B, the first tiles (each way's are checked equal to them) and one more set: about 9 GB.
"""
from __future__ import annotations

import argparse
import mmap
import time

import numpy as np
import torch
from numba import njit, prange

from recmovie.models.ops import TILE_WIDTH, _fill_tiles, _history_times, cache_aligned_empty, column_tiles


@njit(parallel=True, nogil=True)
def _fill_tiles_by_tile(m, tiles):  # pragma: no cover - numba
    n_rows, n_cols = m.shape
    for t in prange(tiles.shape[0]):
        c0 = t * TILE_WIDTH
        cw = min(TILE_WIDTH, n_cols - c0)
        for j in range(n_rows):
            for c in range(cw):
                tiles[t, j, c] = m[j, c0 + c]
            for c in range(cw, TILE_WIDTH):
                tiles[t, j, c] = 0.0


def tile_shape(m: np.ndarray) -> tuple[int, int, int]:
    return -(-m.shape[1] // TILE_WIDTH), m.shape[0], TILE_WIDTH


def tiles_by_tile(m: np.ndarray) -> np.ndarray:
    tiles = cache_aligned_empty(tile_shape(m))
    _fill_tiles_by_tile(m, tiles)
    return tiles


def tiles_on_huge_pages(m: np.ndarray) -> np.ndarray:
    """Tiles in an anonymous map (page-aligned, zero-filled) on transparent huge pages where the OS
    offers them: the first touch faults one 2 MB page instead of 512 small ones."""
    shape = tile_shape(m)
    buffer = mmap.mmap(-1, int(np.prod(shape)) * 4)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buffer.madvise(mmap.MADV_HUGEPAGE)
    tiles = np.frombuffer(buffer, np.float32).reshape(shape)
    _fill_tiles(m, tiles)
    return tiles


@njit(parallel=True, fastmath=True, nogil=True)
def _history_times_int16(indptr, indices, values, tiles, scales, out):  # pragma: no cover - numba
    n_cols = out.shape[1]
    for t in range(tiles.shape[0]):
        c0 = t * 64
        cw = min(64, n_cols - c0)
        for u in prange(out.shape[0]):
            acc = np.zeros(64, np.float32)
            for p in range(indptr[u], indptr[u + 1]):
                row = tiles[t, indices[p]]
                w = values[p]
                for c in range(64):
                    acc[c] += w * np.float32(row[c])
            for c in range(cw):
                out[u, c0 + c] = acc[c] * scales[c0 + c]


def int16_tiles(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scales = (np.abs(m).max(0) / 32767).astype(np.float32)
    tiles = np.zeros((-(-m.shape[1] // 64), m.shape[0], 64), np.int16)
    for t in range(tiles.shape[0]):
        cols = slice(t * 64, min((t + 1) * 64, m.shape[1]))
        tiles[t, :, :cols.stop - cols.start] = np.rint(m[:, cols] / scales[cols])
    return tiles, scales


def rank_chunk(name, tiles, indptr, indices, values, out) -> None:
    if name == "int16":
        _history_times_int16(indptr, indices, values, *tiles, out)
    else:
        _history_times(indptr, indices, values, tiles, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=26744)
    ap.add_argument("--users", type=int, default=4096, help="users per chunk")
    ap.add_argument("--length", type=int, default=145, help="history length")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4, help="a multiple of 4 puts every way in every place")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    b = rng.standard_normal((a.items, a.items), dtype=np.float32)
    p = 1.0 / np.arange(1, a.items + 1) ** 0.9
    p /= p.sum()
    chunks = [np.concatenate([np.sort(rng.choice(a.items, a.length, replace=False, p=p)) for _ in range(a.users)])
              for _ in range(a.chunks)]
    indptr = np.arange(0, a.users * a.length + 1, a.length, dtype=np.int64)
    values = np.ones(a.users * a.length, np.float32)
    out = np.empty((a.users, a.items), np.float32)
    ways = {"column_tiles (the code)": lambda: column_tiles(torch.from_numpy(b)), "tile by tile (before)": lambda: tiles_by_tile(b),
            "huge pages": lambda: tiles_on_huge_pages(b)}
    ways["int16"] = lambda: int16_tiles(b)
    reference_out = None
    for name, way in ways.items():  # compile the fills and the kernels outside the timings
        rank_chunk(name, way(), indptr[:2], chunks[0][:a.length], values[:a.length], out[:1])
    build, rank = {w: [] for w in ways}, {w: [] for w in ways}
    reference = None
    names = list(ways)
    for r in range(a.rounds):
        # the order turns each round: how much a first touch of fresh memory costs in a VM depends on
        # what the allocation before it freed, so each way takes each place in turn
        for name in names[r % len(names):] + names[:r % len(names)]:
            way = ways[name]
            t0 = time.perf_counter()
            tiles = way()
            build[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for idx in chunks:
                rank_chunk(name, tiles, indptr, idx, values, out)
            rank[name].append(time.perf_counter() - t0)
            if reference_out is None:  # the code's scores (its way runs first in the first round)
                reference_out = out.copy()
            if name == "int16":
                error = float(np.abs(out - reference_out).max() / np.abs(reference_out).max())
            elif reference is None:
                reference = tiles.copy()
            elif not np.array_equal(tiles, reference):
                raise SystemExit(f"{name}: the tiles differ")
            del tiles
    gb = a.items * a.items * 4 / 2**30
    print(f"{a.items} items ({gb:.2f} GB of tiles), {a.chunks} chunks of {a.users} users x {a.length} items, "
          f"medians of {a.rounds} rounds, the order turning\n")
    print("| tiles | build s | ranking s (the kernel) |\n|---|---|---|")
    for name in ways:
        print(f"| {name} | {np.median(build[name]):.2f} | {np.median(rank[name]):.2f} |")
    now = next(iter(ways))
    for other in list(ways)[1:]:
        print(f"\n{now} against {other}: build {np.median(build[now]) / np.median(build[other]):.2f}x the time, "
              f"ranking {np.median(rank[now]) / np.median(rank[other]):.2f}x", end="")
    print(f"\nint16: largest score error {error:.1e} of the largest score (the last chunk)")


if __name__ == "__main__":
    main()
