"""Holdout splits: what is hidden, and that users keep enough history."""
from __future__ import annotations

import numpy as np
import pytest

from recmovie.data.split import PART_LAST, PART_RANDOM, hidden_sizes, split_competition, split_given
from recmovie.errors import DataError


def per_user(ds, train, holdout, u):
    rows = np.flatnonzero(ds.user == u)
    hidden_rows = rows[~train[rows]]
    return rows, hidden_rows, holdout.part[holdout.user == u]


def test_competition_split_hides_the_last_two_and_eight_random(small_dataset):
    ds = small_dataset
    train, holdout = split_competition(ds, 2, 8, seed=1)
    counts = np.bincount(ds.user)
    assert len(holdout) == (~train).sum()
    for u in range(0, ds.n_users, 37):
        rows, hidden, parts = per_user(ds, train, holdout, u)
        n = counts[u]
        h = min(10, n // 2)
        assert len(hidden) == h and n - h >= n / 2
        n_last = (parts == PART_LAST).sum()
        assert n_last == (2 if h == 10 else max(1, int(np.floor(h * 0.2 + 0.5))))
        # the "last" rows are exactly the user's latest rows (rows are in time order)
        last_items = set(holdout.item[(holdout.user == u) & (holdout.part == PART_LAST)])
        assert last_items == set(ds.item[rows[-n_last:]])
        # random rows come from before them
        rand_items = set(holdout.item[(holdout.user == u) & (holdout.part == PART_RANDOM)])
        assert rand_items <= set(ds.item[rows[:-n_last]])


def test_short_histories_keep_at_least_half():
    last, rand = hidden_sizes(np.array([1, 2, 3, 5, 9, 19, 20, 100]), 2, 8)
    assert list(last + rand) == [0, 1, 1, 2, 4, 9, 10, 10]
    assert list(last) == [0, 1, 1, 1, 1, 2, 2, 2]


def test_split_is_seeded(small_dataset):
    a = split_competition(small_dataset, 2, 8, seed=5)[0]
    b = split_competition(small_dataset, 2, 8, seed=5)[0]
    c = split_competition(small_dataset, 2, 8, seed=6)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_given_split_reads_hidden_rows(small_dataset, tmp_path):
    ds = small_dataset
    path = tmp_path / "hidden.csv"
    u0, i0 = ds.user_ids[ds.user[0]], ds.item_ids[ds.item[0]]
    u1, i1 = ds.user_ids[ds.user[-1]], ds.item_ids[ds.item[-1]]
    path.write_text(f"user,item,part\n{u0},{i0},last\n{u1},{i1},random\n{u1},999999,random\n")
    train, holdout = split_given(ds, path)
    assert (~train).sum() == 2 and not train[0] and not train[-1]
    assert len(holdout) == 3 and (holdout.item == -1).sum() == 1  # an unknown item can never be hit
    assert sorted(holdout.part) == [PART_LAST, PART_RANDOM, PART_RANDOM]


def test_given_split_rejects_unknown_users(small_dataset, tmp_path):
    path = tmp_path / "hidden.csv"
    path.write_text("user,item\n123456789,1\n")
    with pytest.raises(DataError, match="line 2: user 123456789 is not in the interaction data"):
        split_given(small_dataset, path)
