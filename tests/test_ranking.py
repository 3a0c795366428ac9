"""The ranking engine: seen items masked, ties canonical, the same result for any chunk size."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recmovie.data.prepare import prepare_data
from recmovie.evaluation.ranking import rank, topk_unseen
from recmovie.models.linear import EASE
from recmovie.models.neighbourhood import ItemKNN
from recmovie.schema import Schema


@pytest.fixture(scope="module")
def data(small_dir):
    cfg = OmegaConf.create({"data": {"format": "competition", "dir": str(small_dir)},
                            "split": {"name": "competition", "n_last": 2, "n_random": 8, "seed": 1},
                            "confidence": {"kinds": ["time"]}})
    return prepare_data(cfg.data, cfg.split, cfg.confidence, cache_dir=None)


def fitted(model, data):
    model.build(Schema.from_data(data))
    model.fit(data)
    return model


@pytest.mark.parametrize("model", [EASE(l2=20.0), ItemKNN(k=20)], ids=["ease", "itemknn"])
def test_results_do_not_depend_on_chunk_size(data, model):
    fitted(model, data)
    ref = rank(model, data, k=50, chunk_size=data.n_users)
    for chunk in (1, 7, 64):
        other = rank(model, data, k=50, chunk_size=chunk)
        assert np.array_equal(ref.items, other.items)
        assert np.array_equal(ref.scores, other.scores)


def test_seen_items_are_never_ranked(data):
    model = EASE(l2=20.0)
    fitted(model, data)
    top = rank(model, data, k=30, chunk_size=50)
    m = data.train_matrix
    for r, u in enumerate(top.users):
        assert not set(top.items[r]) & set(m.indices[m.indptr[u]:m.indptr[u + 1]])
    assert (np.diff(top.scores, axis=1) <= 0).all()


def test_ties_are_broken_by_item_id_also_at_the_cut(data):
    batch = data.user_batch(np.array([0, 1]))
    scores = torch.zeros(2, data.n_items)
    scores[:, 5] = 2.0
    values, items = topk_unseen(scores, batch, 4)
    seen = [set(batch.indices[batch.indptr[r]:batch.indptr[r + 1]].tolist()) for r in range(2)]
    for r in range(2):
        expected = ([5] if 5 not in seen[r] else []) + [i for i in range(data.n_items) if i not in seen[r] and i != 5]
        assert items[r].tolist() == expected[:4]


def test_cpu_selection_equals_torch_topk_path(data):
    """The fused numba pass and the torch path used on GPUs agree, ties and short lists included."""
    from recmovie.evaluation.ranking import _torch_topk_unseen

    batch = data.user_batch(np.arange(min(40, data.n_users)))
    g = torch.Generator().manual_seed(0)
    for scores in (torch.randn(len(batch), data.n_items, generator=g),
                   torch.randint(0, 4, (len(batch), data.n_items), generator=g).float()):  # many ties
        for k in (1, 10, data.n_items):  # k = every item: the seen ones come last, at -inf
            values, items = topk_unseen(scores.clone(), batch, k)
            ref_values, ref_items = _torch_topk_unseen(scores.clone(), batch, k)
            assert torch.equal(items, ref_items)
            assert torch.equal(values, ref_values)


def test_nan_scores_are_refused(data):
    batch = data.user_batch(np.array([0, 1]))
    scores = torch.zeros(2, data.n_items)
    scores[1, -1] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        topk_unseen(scores, batch, 5)


# ------------------------------------------------------------------ candidate sets (score_items)
class TiedScores(EASE):
    """EASE's scores rounded to a few levels: many ties, to check the order at equal scores."""

    def score(self, batch):
        return torch.round(super().score(batch) * 4) / 4


@pytest.mark.parametrize("make", [lambda: EASE(l2=20.0), lambda: TiedScores(l2=20.0)], ids=["ease", "ties"])
def test_every_item_as_a_candidate_gives_the_full_ranking(data, make):
    model = make()
    fitted(model, data)
    full = rank(model, data, k=50, chunk_size=97)
    every = np.tile(np.arange(data.n_items), (data.n_users, 1))
    shuffled = np.random.default_rng(0).permuted(every, axis=1)  # candidate order must not matter
    for cands, chunk in ((every, 97), (shuffled, 13), (shuffled, data.n_users)):
        got = rank(model, data, k=50, chunk_size=chunk, candidates=cands)
        assert np.array_equal(got.items, full.items)
        assert np.array_equal(got.scores, full.scores)


def test_candidate_ranking_is_the_full_order_restricted_to_the_candidates(data):
    model = TiedScores(l2=20.0)
    fitted(model, data)
    rng = np.random.default_rng(1)
    users = np.arange(0, data.n_users, 3)
    cands = np.stack([rng.choice(data.n_items, 40, replace=False) for _ in users])
    cands[:5, 30:] = -1  # fewer candidates for some users: empty slots
    got = rank(model, data, k=20, chunk_size=16, users=users, candidates=cands)
    assert np.array_equal(got.items, rank(model, data, k=20, chunk_size=1000, users=users, candidates=cands).items)
    scores = model.score(data.user_batch(users)).numpy()
    m = data.train_matrix
    for r, u in enumerate(users):
        seen = set(m.indices[m.indptr[u]:m.indptr[u + 1]].tolist())
        valid = [int(i) for i in cands[r] if i >= 0 and int(i) not in seen]
        expected = sorted(valid, key=lambda i: (-scores[r, i], i))[:20]
        assert got.items[r, :len(expected)].tolist() == expected
        assert (got.items[r, len(expected):] == -1).all() and np.isneginf(got.scores[r, len(expected):]).all()


def test_candidates_must_be_known_items(data):
    model = EASE(l2=20.0)
    fitted(model, data)
    with pytest.raises(ValueError, match="dense item ids"):
        rank(model, data, k=5, users=np.array([0]), candidates=np.array([[data.n_items]]))
    with pytest.raises(ValueError, match="candidates must be"):
        rank(model, data, k=5, users=np.array([0, 1]), candidates=np.array([[1, 2]]))


def test_the_release_year_filter_ranks_later_films_after_the_others_and_before_seen_ones(data):
    from recmovie.evaluation.ranking import FILTERED, ReleaseYearFilter

    model = fitted(EASE(l2=20.0), data)
    years = data.dataset.item_years()
    user_year = np.floor(1970 + data.user_last_time / (365.2425 * 86400))
    plain = rank(model, data, k=50)
    filt = ReleaseYearFilter(data)
    top = rank(model, data, k=50, item_filter=filt)
    late = years[top.items] > user_year[top.users][:, None]  # NaN years: never late
    unseen = data.n_items - np.diff(data.train_matrix.indptr)[top.users]
    eligible = unseen - (years[None, :] > user_year[top.users][:, None]).sum(1)  # upper bound is enough here
    changed = 0
    for r in range(len(top.users)):
        n_ok = int((~late[r]).sum())
        assert not late[r, :n_ok].any()  # every listed late film comes after every other one
        assert (top.scores[r, n_ok:] == np.float32(FILTERED)).all()
        kept = plain.items[r][years[plain.items[r]] <= user_year[top.users[r]]]
        assert top.items[r, : len(kept)].tolist()[: min(len(kept), 10)] == kept[:10].tolist()
        changed += not np.array_equal(plain.items[r], top.items[r])
    assert changed > 0 and (eligible > 0).all()  # the sample has films newer than some users' last year
    # candidate path: the same order on every item as a candidate
    cands = np.tile(np.arange(data.n_items), (5, 1))
    sub = rank(model, data, k=50, users=top.users[:5], candidates=cands, item_filter=filt)
    assert np.array_equal(sub.items, top.items[:5])


def test_the_release_year_filter_needs_years(tmp_path):
    from recmovie.data.synthetic import generate_synthetic, write_competition_folder
    from recmovie.errors import ConfigError
    from recmovie.pipeline import train
    from tests.conftest import make_config

    folder = tmp_path / "train"
    write_competition_folder(generate_synthetic(n_users=40, n_items=30, n_interactions=600, seed=1), folder)
    (folder / "years.tsv").unlink()
    (folder / "titles.tsv").unlink()  # MovieLens-style titles carry years too
    cfg = make_config(tmp_path / "run", ["data=competition", f"data.dir={folder}", "tracking.enabled=false",
                                         "model=popularity", "filter.release_year=true"])
    with pytest.raises(ConfigError, match="filter.release_year.*release years"):
        train(cfg)
    assert not list((tmp_path / "run").rglob("submission.csv"))
