"""A seeded generator of competition-format data with structure that models can learn.

Each item has 1-3 genres, a release year, a director and 1-2 writers, and a latent vector drawn
near its director's (so side information carries signal). Popularity is Zipf-like and favours
recent releases. Each user has a genre taste (Dirichlet) and a latent taste vector; the items of
a user are drawn without replacement (Gumbel top-k) from

    score(u, i) = popularity_i + genre_weight * log(taste_u . genres_i) + latent_weight * <w_u, v_i>

and watched in an order that drifts smoothly through the latent space (sequential signal).
"""
from __future__ import annotations

import numpy as np
import torch

from recmovie.data.dataset import Dataset, build_dataset

GENRES = [
    "Drama", "Comedy", "Thriller", "Romance", "Action", "Crime", "Adventure", "Sci-Fi", "Horror",
    "Fantasy", "Mystery", "Children", "Animation", "Documentary", "War", "Musical", "Western", "Film-Noir",
]
_GENRE_FREQ = np.array([30, 22, 12, 10, 10, 8, 8, 6, 6, 5, 5, 4, 3, 3, 2, 2, 1.5, 1], float)


def generate_synthetic(
    n_users: int = 31_360,
    n_items: int = 6_807,
    n_interactions: int = 5_154_471,
    seed: int = 0,
    latent_dim: int = 16,
    popularity_exponent: float = 1.0,
    genre_weight: float = 1.5,
    latent_weight: float = 2.0,
    min_per_user: int = 16,
) -> Dataset:
    """Generate a dataset of (about) the requested size; same seed, same data.

    One long function on purpose: the order of the random draws IS the data (the cache and every
    seeded figure depend on it), so the steps stay together in the order they draw."""
    if min(n_users, n_items) < 2 or n_interactions < n_users:
        raise ValueError("synthetic data needs n_users >= 2, n_items >= 2 and n_interactions >= n_users")
    rng = np.random.default_rng(seed)
    d = latent_dim

    # ---- items: genres, year, director, writers, latent vector, popularity
    p_genre = _GENRE_FREQ / _GENRE_FREQ.sum()
    n_g = len(GENRES)
    n_item_genres = rng.choice([1, 2, 3], size=n_items, p=[0.4, 0.4, 0.2])
    item_genre = np.zeros((n_items, n_g), np.float32)
    for k in range(3):
        has = n_item_genres > k
        item_genre[np.flatnonzero(has), rng.choice(n_g, size=int(has.sum()), p=p_genre)] = 1.0
    year = np.clip(np.round(2016 - rng.gamma(2.0, 9.0, n_items)), 1920, 2015).astype(int)
    n_dirs = max(1, n_items // 3)
    director = np.minimum((rng.pareto(1.2, n_items) * n_dirs / 8).astype(int), n_dirs - 1)
    director = rng.permutation(n_dirs)[director]
    writer_a = np.where(rng.random(n_items) < 0.5, director, rng.integers(0, n_dirs, n_items))
    second_writer = rng.random(n_items) < 0.4
    writer_b = rng.integers(0, n_dirs, n_items)
    genre_vec = rng.normal(0, 1, (n_g, d))
    dir_vec = rng.normal(0, 1, (n_dirs, d))
    item_vec = (item_genre @ genre_vec) / np.sqrt(n_item_genres)[:, None] * 0.6 + dir_vec[director] * 0.6
    item_vec += rng.normal(0, 0.5, (n_items, d))
    item_vec /= np.linalg.norm(item_vec, axis=1, keepdims=True)
    rank = rng.permutation(n_items) + 1
    popularity = -popularity_exponent * np.log(rank) + 0.02 * (year - 2000)

    # ---- users: history length, genre taste, latent taste
    mean_len = n_interactions / n_users
    sigma = 0.9
    lengths = rng.lognormal(np.log(max(mean_len - min_per_user, 1.0)) - sigma**2 / 2, sigma, n_users)
    lengths = np.clip(np.round(lengths) + min_per_user, min(min_per_user, n_items // 2), n_items // 2).astype(int)
    lengths = np.maximum(lengths, 1)
    taste = rng.dirichlet(np.full(n_g, 0.3), n_users).astype(np.float32)
    user_vec = rng.normal(0, 1, (n_users, d)).astype(np.float32)
    user_vec /= np.linalg.norm(user_vec, axis=1, keepdims=True)

    gen = torch.Generator().manual_seed(int(seed))
    t_pop = torch.from_numpy(popularity.astype(np.float32))
    t_genre = torch.from_numpy(item_genre)
    t_item = torch.from_numpy(item_vec.astype(np.float32))
    direction = torch.from_numpy(rng.normal(0, 1, (n_users, d)).astype(np.float32))
    users_out, items_out, walk_out = [], [], []
    order = np.argsort(lengths, kind="stable")
    chunk = 1024
    # two [chunk, n_items] buffers reused by every chunk, every step in place: fresh 100 MB
    # temporaries per step cost more in page faults than the arithmetic at ML-20M's size (same
    # operations in the same order as out-of-place ones, so the same data for a seed)
    score_buf = torch.empty(min(chunk, n_users), n_items)
    tmp_buf = torch.empty(min(chunk, n_users), n_items)
    for s in range(0, n_users, chunk):
        us = order[s : s + chunk]
        tu = torch.from_numpy(us)
        score, tmp = score_buf[: len(us)], tmp_buf[: len(us)]
        # score = popularity + genre_weight * log(taste . genres + 1e-3) + latent_weight * <w_u, v_i>
        torch.matmul(torch.from_numpy(taste[us]), t_genre.T, out=tmp)
        torch.add(t_pop, tmp.add_(1e-3).log_().mul_(genre_weight), out=score)
        torch.matmul(torch.from_numpy(user_vec[us]), t_item.T, out=tmp)
        score.add_(tmp.mul_(latent_weight))
        torch.rand(tmp.shape, generator=gen, out=tmp).clamp_(1e-12, 1 - 1e-7)
        score.sub_(tmp.log_().neg_().log_())  # + Gumbel noise: top-k = sampling without replacement
        n_max = int(lengths[us].max())
        top_t = torch.topk(score, n_max, dim=1).indices
        top = top_t.numpy()
        take = np.arange(n_max)[None, :] < lengths[us][:, None]
        users_out.append(np.broadcast_to(us[:, None], top.shape)[take])
        items_out.append(top[take])
        # position along the user's own direction in latent space orders their history in time
        walk = torch.matmul(direction[tu], t_item.T, out=tmp).gather(1, top_t).numpy()
        walk_out.append(walk[take])
    user = np.concatenate(users_out)
    item = np.concatenate(items_out)

    # ---- time: each user walks through the latent space along a direction of their own
    walk = np.concatenate(walk_out) + rng.normal(0, 0.5, len(user)).astype(np.float32)
    o = np.lexsort((walk, user))
    user, item = user[o], item[o]
    starts = rng.integers(1_104_537_600, 1_420_070_400, n_users)  # 2005 .. 2015
    # sessions: most consecutive items minutes apart, sometimes days apart
    gaps = np.where(rng.random(len(user)) < 0.9, rng.exponential(300, len(user)), rng.exponential(86_400 * 20, len(user)))
    first = np.r_[True, user[1:] != user[:-1]]
    gaps[first] = 0
    csum = np.cumsum(gaps)
    base = np.maximum.accumulate(np.where(first, csum, 0))
    time = starts[user] + (csum - base).astype(np.int64)

    items_idx = np.arange(n_items)
    g_item, g_code = np.nonzero(item_genre)
    side = {
        "title": (items_idx, np.array([f"Synthetic Movie {i} ({y})" for i, y in zip(items_idx, year)]), "synthetic"),
        "year": (items_idx, year.astype(str), "synthetic"),
        "genre": (g_item, np.array(GENRES)[g_code], "synthetic"),
        "director": (items_idx, np.char.add("nm", director.astype(str)), "synthetic"),
        "writer": (
            np.r_[items_idx, items_idx[second_writer]],
            np.char.add("nm", np.r_[writer_a, writer_b[second_writer]].astype(str)),
            "synthetic",
        ),
    }
    # raw ids like the competition's: users from 11, items are their own index + 1
    return build_dataset(user.astype(np.int64) + 11, item.astype(np.int64) + 1, time,
                         side={k: (v[0] + 1, v[1], v[2]) for k, v in side.items()}, source="synthetic")


def write_competition_folder(ds: Dataset, folder) -> None:
    """Write a Dataset as a competition folder (train_ratings.csv + side .tsv files)."""
    import pandas as pd
    from pathlib import Path

    from recmovie.data.dataset import SIDE_FILES
    from recmovie.io import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "train_ratings.csv") as tmp:
        pd.DataFrame({"user": ds.user_ids[ds.user], "item": ds.item_ids[ds.item], "time": ds.time}).to_csv(
            tmp, index=False)
    for name, f in ds.side.items():
        with atomic_path(folder / SIDE_FILES[name]) as tmp:
            pd.DataFrame({"item": ds.item_ids[f.item], name: f.vocab[f.value]}).to_csv(tmp, sep="\t", index=False)
