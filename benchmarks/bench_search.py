"""The weight search's cost at 30k users: the objective (pool_objective) against ranking and scoring
every trial the way the search did before (ranked_lists + evaluate), and a whole Optuna search.

    python benchmarks/bench_search.py                       # 30,000 users x 20,000 items, 3 members x top 100
    python benchmarks/bench_search.py --users 3000 --trials 20

The members' lists are synthetic (each a noisy copy of one hidden preference order, so they overlap
as real members do); no training is involved: this measures the search alone. Both objectives are
evaluated on the same weight vectors, alternated, and must agree to 1e-12.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recmovie.data.dataset import Dataset  # noqa: E402
from recmovie.data.prepare import PreparedData  # noqa: E402
from recmovie.data.split import Holdout  # noqa: E402
from recmovie.ensemble.fusion import fuse, pool_objective, recall_of  # noqa: E402
from recmovie.ensemble.pool import build_pool, ranked_lists  # noqa: E402
from recmovie.ensemble.search import search_weights  # noqa: E402


def synthetic(n_users: int, n_items: int, members: int, top_n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    history = 5
    users = np.repeat(np.arange(n_users), history)
    items = rng.integers(0, n_items, n_users * history)
    ds = Dataset(users.astype(np.int32), items.astype(np.int32), np.zeros(len(users), np.int64),
                 np.arange(n_users), np.arange(n_items))
    data = PreparedData(ds, np.ones(len(users), bool), np.ones(len(users), np.float32), Holdout.empty(), "bench")
    base = rng.random((n_users, top_n * 2)).argsort(1)  # each user's candidate positions
    # distinct candidates per user (a stride through the catalogue from a random start)
    catalogue = (rng.integers(0, n_items, (n_users, 1)) + np.arange(top_n * 2) * 7) % n_items
    lists = []
    for m in range(members):
        noise = base + rng.normal(0, top_n / 2, base.shape)
        order = np.argsort(noise, 1)[:, :top_n]
        item = np.take_along_axis(catalogue, order, 1)
        df = pd.DataFrame({"user": np.repeat(np.arange(n_users), top_n), "item": item.ravel(),
                           "rank": np.tile(np.arange(1, top_n + 1), n_users),
                           "score": np.tile(np.linspace(1, 0, top_n), n_users) + rng.normal(0, 0.01, n_users * top_n)})
        lists.append(df.drop_duplicates(["user", "item"]))
    truth = np.take_along_axis(catalogue, np.argsort(base, 1)[:, :5], 1)
    data.holdout = Holdout(np.repeat(np.arange(n_users), 5).astype(np.int32), truth.ravel().astype(np.int32),
                           np.zeros(n_users * 5, np.int8))
    return data, lists


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=30_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--top-n", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds of the two objectives")
    p.add_argument("--trials", type=int, default=100, help="trials of the whole Optuna search")
    args = p.parse_args()
    t0 = time.perf_counter()
    data, lists = synthetic(args.users, args.items, args.members, args.top_n)
    pool = build_pool(lists, data.n_items, args.top_n)
    print(f"pool: {len(pool.users):,} rows for {args.users:,} users ({time.perf_counter() - t0:.1f} s to build)")
    t0 = time.perf_counter()
    fast = pool_objective(pool, data, "score_blend", 60.0, 10)
    setup = time.perf_counter() - t0

    def slow(w):
        topk, _ = ranked_lists(pool, fuse(pool, "score_blend", w, 60.0), data, 10, 10)
        return recall_of(topk.items, topk.users, data, 10)

    rng = np.random.default_rng(1)
    times = {"ranked_lists + evaluate": [], "pool_objective": []}
    for _ in range(args.rounds):
        w = rng.random(args.members)
        t0 = time.perf_counter()
        a = slow(w)
        times["ranked_lists + evaluate"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = fast(w)
        times["pool_objective"].append(time.perf_counter() - t0)
        assert abs(a - b) < 1e-12, (a, b)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"pool_objective set-up: {setup:.2f} s (once per search)")
    for name, m in medians.items():
        print(f"{name}: median {m:.3f} s per trial over {args.rounds} alternated rounds")
    print(f"ratio: {medians['pool_objective'] / medians['ranked_lists + evaluate']:.3f}")
    search = OmegaConf.create({"method": "optuna", "trials": args.trials, "seed": 42, "grid": [0, 1]})
    t0 = time.perf_counter()
    weights, best, trials = search_weights(pool_objective(pool, data, "score_blend", 60.0, 10), args.members, search)
    print(f"whole search: {trials} Optuna trials in {time.perf_counter() - t0:.1f} s (set-up included), "
          f"best {best:.4f} at weights {np.round(weights, 3).tolist()}")


if __name__ == "__main__":
    main()
