"""The synthetic generator: seeded, the requested size, competition-shaped."""
from __future__ import annotations

import numpy as np

from recmovie.data.readers import read_competition
from recmovie.data.synthetic import generate_synthetic, write_competition_folder


def test_seeded_and_sized():
    a = generate_synthetic(n_users=200, n_items=150, n_interactions=6000, seed=1)
    b = generate_synthetic(n_users=200, n_items=150, n_interactions=6000, seed=1)
    c = generate_synthetic(n_users=200, n_items=150, n_interactions=6000, seed=2)
    assert np.array_equal(a.item, b.item) and np.array_equal(a.time, b.time)
    assert not np.array_equal(a.item, c.item)
    assert a.n_users == 200 and a.n_items <= 150 and abs(len(a) - 6000) / 6000 < 0.15
    assert set(a.side) == {"title", "year", "genre", "director", "writer"}
    sparse = generate_synthetic(n_users=500, n_items=1000, n_interactions=15000, seed=1)
    counts = np.bincount(sparse.item)
    assert counts.max() > 10 * np.median(counts)  # skewed popularity


def test_round_trips_through_a_competition_folder(tmp_path):
    ds = generate_synthetic(n_users=50, n_items=40, n_interactions=800, seed=0)
    write_competition_folder(ds, tmp_path)
    back = read_competition(tmp_path)
    assert np.array_equal(back.user_ids[back.user], ds.user_ids[ds.user])
    assert np.array_equal(back.item_ids[back.item], ds.item_ids[ds.item])
    assert np.array_equal(back.time, ds.time)
    assert len(back.side["writer"].item) == len(ds.side["writer"].item)
