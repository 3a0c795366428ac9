"""Each foundation model learns the small synthetic data: it beats popularity there."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import rank

from recmovie.models.baselines import GenreRule, Popularity
from recmovie.models.linear import EASE
from recmovie.models.neighbourhood import ItemKNN
from recmovie.models.ops import TILE_WIDTH, column_tiles
from recmovie.schema import Schema


@pytest.fixture(scope="module")
def data(small_prepared):
    return small_prepared


def recall(model, data):
    model.build(Schema.from_data(data))
    model.fit(data)
    top = rank(model, data, k=10)
    return evaluate(top.items, top.users, data.holdout, data.n_users)["recall_at_10"]


@pytest.fixture(scope="module")
def popularity_recall(data):
    return recall(Popularity(), data)


# the genre rule with its default 3 of 18 genres covers most of a small catalogue; 1 genre shows its signal
@pytest.mark.parametrize("model", [EASE(l2=50.0), ItemKNN(k=50), GenreRule(n_genres=1)], ids=["ease", "itemknn", "genre_rule"])
def test_beats_popularity(data, model, popularity_recall):
    assert recall(model, data) > popularity_recall * 1.1


def test_ease_matches_the_textbook_formula(data):
    x = data.train_matrix.toarray().astype(np.float64)
    g = x.T @ x + 30.0 * np.eye(x.shape[1])
    p = np.linalg.inv(g)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    model = EASE(l2=30.0, dtype="float64")
    model.fit(data)
    assert np.allclose(model.B.numpy(), b, atol=1e-5)


def test_popularity_half_life_prefers_recent_items(data):
    plain, recent = Popularity(), Popularity(half_life_days=1.0)
    plain.fit(data)
    recent.fit(data)
    newest_item = data.train_item[np.argmax(data.train_time)]
    assert recent.popularity.argmax() == newest_item or recent.popularity[newest_item] > plain.popularity[newest_item] / plain.popularity.sum() * recent.popularity.sum()


def test_genre_rule_puts_the_users_genres_first(data):
    model = GenreRule(n_genres=1)
    model.fit(data)
    batch = data.user_batch(np.array([3]))
    top_genre = int((batch.csr() @ model.item_genre).argmax())
    scores = model.score(batch)[0]
    in_genre = model.item_genre[:, top_genre] > 0
    assert scores[in_genre].min() > scores[~in_genre].max()


def test_item_item_scores_equal_the_dense_product(data):
    # the register-blocked kernel: weighted histories, a last column tile that is only partly used
    assert data.n_items % TILE_WIDTH != 0
    rng = np.random.default_rng(0)
    model = EASE()
    model.set_matrix(rng.standard_normal((data.n_items, data.n_items)).astype(np.float32))
    batch = data.user_batch(np.arange(0, data.n_users, 3))
    batch.values = torch.from_numpy(rng.uniform(0.5, 2.0, len(batch.values)).astype(np.float32))
    expected = batch.dense().double() @ model.B.double()
    assert torch.allclose(model.score(batch).double(), expected, rtol=1e-4, atol=1e-3)


def test_column_tiles_start_on_a_cache_line_and_hold_the_matrix():
    # past malloc's mmap threshold (128 KB), where numpy's own arrays start 16 bytes past a page
    m = torch.arange(300 * 250, dtype=torch.float32).reshape(300, 250)
    tiles = column_tiles(m)
    assert tiles.ctypes.data % 64 == 0
    assert tiles.shape == (-(-250 // TILE_WIDTH), 300, TILE_WIDTH)
    for t in range(tiles.shape[0]):
        width = min(TILE_WIDTH, 250 - t * TILE_WIDTH)
        assert np.array_equal(tiles[t, :, :width], m[:, t * TILE_WIDTH:t * TILE_WIDTH + width].numpy())
        assert not tiles[t, :, width:].any()
