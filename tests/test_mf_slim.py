"""BPR-MF and its pairs view, ALS, UserKNN / ItemKNN weighting, ADMM-SLIM and EDLAE."""
from __future__ import annotations

import mlflow
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from omegaconf import OmegaConf

from recmovie.data.dataset import build_dataset
from recmovie.data.prepare import PreparedData, prepare_data
from recmovie.data.split import Holdout
from recmovie.data.samplers import PairSampler
from recmovie.data.views import pairs
from recmovie.errors import ConfigError
from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import rank
from recmovie.models.base import build_model, model_from_yaml
from recmovie.models.baselines import Popularity
from recmovie.training import fit_lightning
from recmovie.models.linear import ADMMSLIM, EASE, EDLAE
from recmovie.models.mf import ALS
from recmovie.models.neighbourhood import ItemKNN, UserKNN
from recmovie.pipeline import train
from tests.conftest import make_config
from recmovie.schema import Schema

SPLIT = {"name": "competition", "n_last": 2, "n_random": 8, "seed": 1}


def _prepare(small_dir, kinds=()):
    return prepare_data(OmegaConf.create({"format": "competition", "dir": str(small_dir)}), OmegaConf.create(SPLIT),
                        OmegaConf.create({"kinds": list(kinds)}), cache_dir=None)


@pytest.fixture(scope="module")
def data(small_dir):
    return _prepare(small_dir)


@pytest.fixture(scope="module")
def genre_data(small_dir):
    return _prepare(small_dir, ["genre"])


def fitted(model, data):
    model.build(Schema.from_data(data))
    model.fit(data)
    return model


def recall(model, data) -> float:
    top = rank(model, data, k=10)
    return evaluate(top.items, top.users, data.holdout, data.n_users)["recall_at_10"]


@pytest.fixture(scope="module")
def popularity_recall(data):
    return recall(fitted(Popularity(), data), data)


# -- every model learns the small synthetic data
@pytest.mark.parametrize("make", [
    lambda: ALS(), lambda: UserKNN(k=30), lambda: ADMMSLIM(l2=50.0, rho=100.0), lambda: EDLAE(l2=50.0),
    lambda: ItemKNN(k=50, weighting="bm25"),
], ids=["als", "userknn", "admm_slim", "edlae", "itemknn_bm25"])
def test_closed_form_models_beat_popularity(data, make, popularity_recall):
    assert recall(fitted(make(), data), data) > popularity_recall * 1.1


def test_bpr_mf_beats_popularity_and_keeps_its_best_epoch(data, popularity_recall, tmp_path):
    model = model_from_yaml("bpr_mf", batch_size=2048, max_epochs=8, patience=3, lr=0.03)
    model.build(Schema.from_data(data))
    cfg = make_config(tmp_path, ["seed=0", "eval.chunk_size=128"])
    result = fit_lightning(model, data, data, cfg)
    got = recall(model, data)
    assert got > popularity_recall * 1.1
    # the restored weights are the best epoch's: ranking them again gives the recall it was chosen for
    assert got == pytest.approx(result["best_score"], abs=1e-6)


# -- the pairs view
def _tiny_data(rows: list[tuple[int, int]], n_items: int | None = None) -> PreparedData:
    users, items = np.array(rows).T
    ds = build_dataset(users, items, np.arange(len(rows)))
    mask = np.ones(len(ds), bool)
    return PreparedData(ds, mask, np.ones(len(ds), np.float32), Holdout.empty(), "tiny")


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_sampler_never_returns_a_positive_as_a_negative(data, sampling):
    sampler = PairSampler(data, n_negatives=5, sampling=sampling)
    held = set(zip(data.train_user.tolist(), data.train_item.tolist()))
    rng = np.random.default_rng(0)
    for _ in range(20):
        b = sampler.sample(rng, 512)
        assert all((u, i) in held for u, i in zip(b.users.tolist(), b.pos.tolist()))
        assert not any((u, j) in held for u, row in zip(b.users.tolist(), b.neg.tolist()) for j in row)


def test_sampler_finds_the_only_negative_and_skips_users_without_one():
    # user 0 holds items 0..3 of 5 (one negative left), user 1 holds all 5 (none), user 2 holds one
    rows = [(0, i) for i in range(4)] + [(1, i) for i in range(5)] + [(2, 0)]
    sampler = PairSampler(_tiny_data(rows), n_negatives=3, sampling="uniform")
    b = sampler.sample(np.random.default_rng(0), 400)
    users, neg = b.users.numpy(), b.neg.numpy()
    assert 1 not in users
    assert (neg[users == 0] == 4).all()
    assert (neg[users == 2] != 0).all()


def test_popularity_sampling_follows_item_popularity(data):
    sampler = PairSampler(data, n_negatives=1, sampling="popularity")
    neg = sampler.sample(np.random.default_rng(0), 40_000).neg.numpy().ravel()
    drawn, pop = np.bincount(neg, minlength=data.n_items), data.item_popularity
    assert np.corrcoef(drawn, pop)[0, 1] > 0.9
    uniform = PairSampler(data, n_negatives=1, sampling="uniform").sample(np.random.default_rng(0), 40_000)
    assert np.corrcoef(np.bincount(uniform.neg.numpy().ravel(), minlength=data.n_items), pop)[0, 1] < 0.5


def test_pairs_view_streams_fresh_pairs_each_epoch(data):
    loader = pairs(data, batch_size=1000, seed=3, n_negatives=2)
    first, second = list(loader), list(loader)
    assert len(first) == len(loader) == -(-len(data.train_user) // 1000)
    assert first[0].neg.shape == (1000, 2)
    assert not torch.equal(first[0].users, second[0].users)
    again = list(pairs(data, batch_size=1000, seed=3, n_negatives=2))
    assert torch.equal(first[0].neg, again[0].neg)  # seeded


# -- ALS
def _item_normal_equations_residual(model: ALS, conf: sp.csr_matrix, l2: float) -> float:
    """Max residual of the item half-step's weighted ridge equations, given the final user factors:
    (U^T C_i U + l2 I) v_i = U^T C_i p_i, with c = 1 off the user's items."""
    u, v = model.user_factors.double().numpy(), model.item_factors.double().numpy()
    ci = conf.T.tocsr()
    worst = 0.0
    for i in range(0, v.shape[0], 7):
        rows, c = ci.indices[ci.indptr[i]:ci.indptr[i + 1]], ci.data[ci.indptr[i]:ci.indptr[i + 1]]
        a = u.T @ u + (u[rows].T * (c - 1.0)) @ u[rows] + l2 * np.eye(u.shape[1])
        worst = max(worst, np.abs(a @ v[i] - u[rows].T @ c).max())
    return worst


def test_als_alpha_zero_equals_unweighted(data, genre_data):
    assert genre_data.weight.std() > 0.05  # the confidence weights differ from 1
    plain = fitted(ALS(factors=8, alpha=0.0, iterations=4, seed=1), data)
    weighted = fitted(ALS(factors=8, alpha=0.0, iterations=4, seed=1), genre_data)
    assert torch.equal(plain.item_factors, weighted.item_factors)
    assert torch.equal(plain.user_factors, weighted.user_factors)
    # and with the exact solver, alpha = 0 solves the unweighted least squares (confidence 1 everywhere)
    exact = fitted(ALS(factors=8, alpha=0.0, l2=5.0, iterations=3, use_cg=False), genre_data)
    binary = genre_data.train_matrix.copy()
    binary.data[:] = 1.0
    assert _item_normal_equations_residual(exact, binary, 5.0) < 1e-3


def test_als_confidence_is_one_plus_alpha_weight(genre_data):
    model = fitted(ALS(factors=8, alpha=3.0, l2=5.0, iterations=3, use_cg=False), genre_data)
    conf = genre_data.train_matrix.copy()
    conf.data = 1.0 + 3.0 * conf.data
    assert _item_normal_equations_residual(model, conf, 5.0) < 1e-3
    assert [step for step, _ in model.fit_log] == [0, 1, 2]
    assert all(np.isfinite(m["train_loss"]) for _, m in model.fit_log)


# -- ADMM-SLIM and EDLAE
def test_admm_slim_weights_respect_their_constraints(data):
    model = fitted(ADMMSLIM(l2=50.0, l1=2.0, rho=100.0, iterations=6), data)
    b = model.B
    assert (b >= 0).all()
    assert (b.diagonal() == 0).all()
    assert 0.05 < float((b > 0).float().mean()) < 0.9  # L1 leaves exact zeros, not everywhere
    signed = fitted(ADMMSLIM(l2=50.0, l1=2.0, rho=100.0, iterations=6, nonneg=False), data).B
    assert (signed < 0).any() and (signed.diagonal() == 0).all()


def test_admm_slim_without_l1_and_sign_constraint_converges_to_ease(data):
    admm = fitted(ADMMSLIM(l2=50.0, l1=0.0, rho=50.0, nonneg=False, iterations=40, dtype="float64"), data)
    ease = fitted(EASE(l2=50.0, dtype="float64"), data)
    assert torch.allclose(admm.B, ease.B, atol=1e-4)
    change = [m["admm_change"] for _, m in admm.fit_log]
    assert change[-1] < change[1] * 1e-2


@pytest.mark.parametrize("n_users", [30, 200], ids=["thin", "explicit"])
def test_zero_diagonal_solve(n_users):
    from recmovie.models.linear import RidgeInverse

    x = sp.random(n_users, 90, density=0.2, random_state=2, format="csr", dtype=np.float64)
    p = np.linalg.inv(x.T.toarray() @ x.toarray() + 4.0 * np.eye(90))
    op = RidgeInverse(x, 4.0, torch.float64)
    assert (op.p is None) == (n_users == 30)
    z = np.random.default_rng(0).normal(size=(90, 90))
    g = (1.0 + np.diag(p @ z)) / np.diag(p)
    want = np.eye(90) + p @ (z - np.diag(g))
    assert np.allclose(np.diag(want), 0.0)
    assert np.allclose(op.zero_diagonal_solve(torch.from_numpy(z.copy())).numpy(), want, atol=1e-6)  # float32 Gram
    ease = op.zero_diagonal_solve(torch.from_numpy(-4.0 * np.eye(90)))
    assert torch.allclose(op.ease_weights(), ease, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_in_place(dtype):
    """EASE's memory plan at ML-20M's size: the inverse overwrites the Gram matrix itself (no
    second n x n matrix), comes back row-major and exactly symmetric, and equals numpy's; sizes
    that are not a multiple of the pivot block, and one block alone."""
    from recmovie.models.linear import inverse_in_place, regularised_inverse

    a = np.random.default_rng(3).normal(size=(300, 70))
    g = a.T @ a + 5.0 * np.eye(70)
    want = np.linalg.inv(g)
    for block in (16, 70, 128):
        m = torch.tensor(g, dtype=dtype)
        got = inverse_in_place(m, block=block)
        assert got.data_ptr() == m.data_ptr() and got.is_contiguous()
        assert torch.equal(got, got.T)
        assert np.allclose(got.numpy(), want, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-7)
    with pytest.raises(torch.linalg.LinAlgError):
        inverse_in_place(torch.diag(torch.tensor([1.0, 2.0, -1.0, 3.0], dtype=dtype)), block=2)
    x = sp.random(200, 60, density=0.2, random_state=4, format="csr", dtype=np.float64)
    reg = np.linspace(1.0, 9.0, 60)  # per item, as EDLAE's
    p = regularised_inverse(x, reg, torch.float64)
    assert np.allclose(p.numpy(), np.linalg.inv(x.T.toarray() @ x.toarray() + np.diag(reg)), atol=1e-6)


def test_edlae_closed_form(data):
    x = data.train_matrix.toarray().astype(np.float64)
    g = x.T @ x
    lam = 30.0 + 0.2 / 0.8 * np.diag(g)
    p = np.linalg.inv(g + np.diag(lam))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    assert np.allclose(fitted(EDLAE(l2=30.0, dropout=0.2, dtype="float64"), data).B.numpy(), b, atol=1e-6)
    assert torch.allclose(fitted(EDLAE(l2=30.0, dropout=0.0, dtype="float64"), data).B,
                          fitted(EASE(l2=30.0, dtype="float64"), data).B, atol=1e-8)
    # relaxed diagonal (RDLAE): diag(B) = min(xi, 1 - lambda_j P_jj), the rest of column j rescaled
    relaxed = fitted(EDLAE(l2=30.0, dropout=0.2, xi=0.3, dtype="float64"), data).B.numpy()
    diag = np.minimum(0.3, 1.0 - lam * np.diag(p))
    assert np.allclose(np.diag(relaxed), diag, atol=1e-8)
    assert np.allclose(relaxed - np.diag(np.diag(relaxed)), b * (1.0 - diag), atol=1e-6)


# -- UserKNN and the shared weighting
def test_userknn_matches_a_brute_force_computation(data):
    model = fitted(UserKNN(k=7, shrink=3.0, weighting="none"), data)
    x = data.train_matrix.toarray().astype(np.float64)
    norms = np.linalg.norm(x, axis=1)
    sim = x @ x.T / (norms[:, None] * norms[None, :] + 3.0 + 1e-12)
    np.fill_diagonal(sim, 0.0)
    users = np.arange(0, data.n_users, 37)
    got = model.score(data.user_batch(users)).numpy()
    for row, u in enumerate(users):
        top = np.argsort(-sim[u], kind="stable")[:7]
        assert np.allclose(got[row], sim[u, top] @ x[top], atol=1e-4)


def test_userknn_scores_do_not_depend_on_the_chunking(data):
    model = fitted(UserKNN(k=20, weighting="bm25"), data)
    a, b = rank(model, data, k=10, chunk_size=13), rank(model, data, k=10, chunk_size=400)
    assert np.array_equal(a.items, b.items)


def test_bm25_and_tfidf_weights():
    from recmovie.models.neighbourhood import column_idf, mean_row_length, weigh_rows

    x = sp.csr_matrix(np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], np.float32))
    idf = column_idf(x)
    assert np.allclose(idf, np.log1p((3 - np.array([2, 3, 1]) + 0.5) / (np.array([2, 3, 1]) + 0.5)))
    tfidf = weigh_rows(x, "tfidf", idf, mean_row_length(x), 1.2, 0.75).toarray()
    assert np.allclose(tfidf, x.toarray() * idf, atol=1e-6)
    bm25 = weigh_rows(x, "bm25", idf, 2.0, 1.2, 0.75).toarray()
    lengths = np.array([3.0, 1.0, 3.0])
    norm = (0.25 + 0.75 * lengths / 2.0)[:, None]
    tf = x.toarray()
    assert np.allclose(bm25, np.where(tf > 0, tf * 2.2 / (tf + 1.2 * norm) * idf, 0.0), atol=1e-6)


def test_weighting_changes_itemknn_and_none_is_plain_cosine(data):
    plain = torch.from_numpy(fitted(ItemKNN(k=40, weighting="none"), data).neighbours().toarray())
    x = data.train_matrix.toarray().astype(np.float64)
    g = x.T @ x
    n = np.sqrt(np.diag(g))
    cosine = g / (n[:, None] * n[None, :] + 10.0 + 1e-12)
    kept = plain.numpy() != 0
    assert np.allclose(plain.numpy()[kept], cosine[kept], atol=1e-5)
    assert ((plain.numpy() != 0).sum(0) <= 40).all()
    tfidf = fitted(ItemKNN(k=40, weighting="tfidf"), data).neighbours().toarray()
    assert not np.array_equal(plain.numpy(), tfidf)


# -- checkpoints, configs, and the pipeline
def test_pairwise_sampled_softmax_over_every_other_item_is_the_full_softmax():
    from recmovie.models.losses import pairwise_loss

    torch.manual_seed(0)
    scores = torch.randn(4, 7)  # 4 pairs' scores of every item; the positive is item 0
    full = torch.nn.functional.cross_entropy(scores, torch.zeros(4, dtype=torch.int64))
    got = pairwise_loss("sampled_softmax", scores[:, 0], scores[:, 1:], n_items=7)
    assert torch.allclose(got, full, atol=1e-6)
    # fewer negatives stand for more items each: the positive's share shrinks, the loss grows
    assert pairwise_loss("sampled_softmax", scores[:, 0], scores[:, 1:3], n_items=7) > \
        -torch.log_softmax(scores[:, :3], 1)[:, 0].mean()


def test_bpr_takes_its_loss_from_the_loss_group():
    assert build_model({"_target_": "recmovie.models.mf.BPRMF"}, loss="bce").params.loss == "bce"
    with pytest.raises(ConfigError, match="model.loss"):
        build_model({"_target_": "recmovie.models.mf.BPRMF"}, loss="multinomial")


def test_als_run_logs_its_loss_per_iteration(small_config):
    cfg = small_config(["model=als", "confidence=genre", "model.iterations=3", "model.factors=8"])
    assert train(cfg) > 0
    mlflow.set_tracking_uri(cfg.tracking.uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert run.data.tags["confidence"] == "genre"


@pytest.mark.slow
def test_bpr_mf_run_and_its_reload_give_the_same_submission(small_config, tmp_path):
    import pandas as pd
    from omegaconf import open_dict

    from recmovie.pipeline import predict
    from tests.conftest import make_config

    cfg = small_config(["model=bpr_mf", "loss=bce", "model.max_epochs=3", "model.batch_size=2048"])
    assert train(cfg) > 0
    mlflow.set_tracking_uri(cfg.tracking.uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.tags["loss"] == "bce" and "val_recall_at_10" in run.data.metrics
    pcfg = make_config(tmp_path / "p", [f"run_id={run.info.run_id}"], config_name="predict")
    with open_dict(pcfg):
        pcfg.tracking.uri = cfg.tracking.uri
        pcfg.paths.cache_dir = cfg.paths.cache_dir
    pd.testing.assert_frame_equal(pd.read_csv(predict(pcfg)), pd.read_csv(f"{cfg.paths.output_dir}/submission.csv"))
