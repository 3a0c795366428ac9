"""Confidence weights: positive, mean 1 per user, and each kind moves weight the way it says."""
from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from recmovie.data.confidence import confidence_weights
from recmovie.errors import ConfigError


@pytest.fixture(scope="module")
def rows(small_dataset):
    ds = small_dataset
    return ds, ds.user, ds.item, ds.side["genre"].matrix(ds.n_items)


def weights(rows, kinds, **params):
    ds, u, i, genre = rows
    return confidence_weights(u, i, ds.n_users, ds.n_items, genre, OmegaConf.create({"kinds": kinds, **params}))


@pytest.mark.parametrize("kinds", [[], ["time"], ["itempop"], ["genre"], ["time", "genre"], ["time", "itempop", "genre"]])
def test_positive_with_mean_one_per_user(rows, kinds):
    u = rows[1]
    w = weights(rows, kinds)
    assert w.dtype == np.float32 and (w > 0).all()
    means = np.bincount(u, weights=w) / np.bincount(u)
    assert np.allclose(means, 1.0, atol=1e-5)
    if not kinds:
        assert (w == 1).all()


def test_time_weights_grow_with_recency(rows):
    u = rows[1]
    w = weights(rows, ["time"], time={"floor": 0.2, "power": 1.0})
    same_user = u[1:] == u[:-1]
    assert (np.diff(w)[same_user] >= 0).all()  # rows are in time order within a user
    first, last = np.r_[True, ~same_user], np.r_[~same_user, True]
    assert np.allclose(w[first] / w[last], 0.2)


def test_itempop_with_negative_exponent_lifts_the_tail(rows):
    ds, u, i, _ = rows
    w = weights(rows, ["itempop"], itempop={"exponent": -0.5})
    pop = np.bincount(i, minlength=ds.n_items)[i]
    user = 0
    sel = u == user
    order = np.argsort(pop[sel])
    assert (np.diff(w[sel][order]) <= 1e-6).all()  # more popular -> lower weight within the user


def test_genre_weights_favour_the_users_genres(rows):
    ds, u, i, genre = rows
    w = weights(rows, ["genre"])
    g = genre.toarray()
    share = np.zeros((ds.n_users, g.shape[1]))
    np.add.at(share, u, g[i])
    share /= share.sum(1, keepdims=True)
    affinity = (share[u] * g[i]).sum(1) / g[i].sum(1)
    # within each user, weight is an increasing function of the user's share of the item's genres
    for user in range(0, ds.n_users, 50):
        sel = u == user
        order = np.argsort(affinity[sel], kind="stable")
        assert (np.diff(w[sel][order]) >= -1e-5).all()


def test_unknown_kind_is_refused(rows):
    with pytest.raises(ConfigError, match="confidence.kinds"):
        weights(rows, ["recency"])
