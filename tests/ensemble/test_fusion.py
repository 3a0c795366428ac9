"""Fusion rules by hand, and the full-score blend against a hand-computed list."""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from recmovie.ensemble.command import run_ensemble
from recmovie.ensemble.members import member_models
from recmovie.ensemble.pool import standardised
from recmovie.errors import ConfigError
from tests.ensemble.helpers import ensemble_config
from recmovie.ensemble.fusion import fuse
from recmovie.ensemble.pool import build_pool
from tests.ensemble.helpers import lists, order, tiny_data


def test_rank_vote_matches_a_hand_computed_order():
    data = tiny_data({0: [0]})
    members = lists({0: [1, 2, 3]}, {0: [2, 4, 1]}, {0: [4, 2, 5]})
    # rank sums with unlisted = 4: item1 1+3+4=8, item2 2+1+2=5, item3 3+4+4=11, item4 4+2+1=7,
    # item5 4+4+3=11; items 3 and 5 tie and the first member's rank (3 < 4) puts 3 first
    assert order(data, members) == [[2, 4, 1, 3, 5]]
    # weights 3,1,1: item1 3+3+4=10, item2 6+1+2=9, item3 9+4+4=17, item4 12+2+1=15, item5 12+4+3=19
    assert order(data, members, weights=[3, 1, 1]) == [[2, 1, 4, 3, 5]]


def test_rrf_and_score_blend_by_hand():
    data = tiny_data({0: [0]})
    members = lists({0: [1, 2]}, {0: [2, 3]}, scores=[{0: [10.0, 5.0]}, {0: [3.0, 1.0]}])
    # rrf, k=60: item1 1/61, item2 1/62 + 1/61, item3 1/62
    assert order(data, members, "rrf", top_n=2, rrf_k=60.0) == [[2, 1, 3]]
    # min-max per user and member: item1 1 + 0, item2 0 + 1, item3 0 + 0; weights 1, 2 lift item2
    assert order(data, members, "score_blend", top_n=2) == [[1, 2, 3]]
    assert order(data, members, "score_blend", weights=[1, 2], top_n=2) == [[2, 1, 3]]


def test_full_score_blend_reloads_the_members_and_searches_on_validation(members, tmp_path):
    ids = [members.ids["ease"], members.ids["itemknn"]]
    runs = f"runs=[{','.join(ids)}]"
    cfg = ensemble_config(tmp_path, members, [runs, "method=score_blend", "full_scores=true", "weights=[1,0.5]"])
    recall = run_ensemble(cfg)
    # the first user's list by hand: 1 x standardised EASE + 0.5 x standardised ItemKNN over unseen items
    client = mlflow.MlflowClient(members.cfg.tracking.uri)
    ease, knn = member_models(members.cfg.tracking.uri, [client.get_run(i) for i in ids])
    from recmovie.data.prepare import load_run_data as load_data
    from omegaconf import OmegaConf

    data = load_data(OmegaConf.load(mlflow.artifacts.download_artifacts(run_id=ids[0], artifact_path="config.yaml",
                                                                         dst_path=str(tmp_path / "c"))))
    batch = data.user_batch(np.array([0]))
    head = cfg.full_scores_head
    total = standardised(ease.score(batch), batch, head) + 0.5 * standardised(knn.score(batch), batch, head)
    seen = set(batch.indices.tolist())
    expected = [int(i) for i in torch.argsort(-total[0], stable=True) if int(i) not in seen][:10]
    sub = pd.read_csv(f"{cfg.paths.output_dir}/submission.csv")
    first = sub[sub.user == data.dataset.user_ids[0]].item.tolist()
    assert first == [int(data.dataset.item_ids[i]) for i in expected]
    assert recall > 0.8 * max(client.get_run(i).data.metrics["recall_at_10"] for i in ids)

    searched = ensemble_config(tmp_path / "s", members, [runs, "method=score_blend", "full_scores=true",
                                                         "search.method=grid", "search.grid=[0,1]"])
    run_ensemble(searched)
    (run,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.data.tags.get("method") == "score_blend" and "search.method" in r.data.params
              and r.data.params["search.method"] == "grid" and r.data.params.get("full_scores") == "True"]
    assert 0 < run.data.metrics["val_recall_at_10"] <= 1
    # the guard, on the validation users the search did not see: the blend against each member's ranking
    m = run.data.metrics
    assert m["val_held_users"] > 0 and m["val_held_recall_at_10"] == m["val_recall_at_10"]
    assert ("fallback" in run.data.tags) == (m["guard_passed"] == 0.0)

    with pytest.raises(ConfigError, match="`full_scores`: only score_blend"):
        run_ensemble(ensemble_config(tmp_path / "r", members, [runs, "method=rank_vote", "full_scores=true"]))
    none_runs = f"runs=[{members.ids['genre_rule']},{members.ids['popularity-none']}]"
    with pytest.raises(ConfigError, match="`full_scores`.*fitted without the validation part.*save_val_model=true"):
        run_ensemble(ensemble_config(tmp_path / "n", members, [none_runs, "method=score_blend", "full_scores=true",
                                                               "search.method=grid"]))
    with pytest.raises(ConfigError, match="`full_scores_head`: must be null or an integer >= 2, got 1"):
        run_ensemble(ensemble_config(tmp_path / "h", members, [runs, "method=score_blend", "full_scores=true",
                                                               "full_scores_head=1", "weights=[1,1]"]))


def test_standardised_scales_by_the_users_head_of_unseen_items():
    from recmovie.data.batches import UserBatch

    scores = torch.tensor([[9.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    batch = UserBatch(torch.tensor([0]), torch.tensor([0, 1]), torch.tensor([0]), torch.ones(1), 6)  # item 0 seen
    # the head of 2 unseen items is 4 and 3: mean 3.5, spread 0.5; the seen item is 0
    assert standardised(scores, batch, 2).tolist() == [[0.0, 1.0, -1.0, -3.0, -5.0, -7.0]]
    # a head longer than the unseen items: all of them (mean 2, spread sqrt(2)), as head=None
    everything = standardised(scores, batch, None)
    assert torch.allclose(standardised(scores, batch, 10), everything)
    assert torch.allclose(everything[0, 1:], (scores[0, 1:] - 2.0) / 2 ** 0.5)


def train_member(members, tmp_path, name: str, overrides: list[str]) -> str:
    """One more member run in the shared store (split=none, refit=true): its run id."""
    from omegaconf import open_dict

    from recmovie.pipeline import train
    from tests.conftest import make_config

    data_dir = OmegaConf.select(members.cfg, "data.dir")
    cfg = make_config(tmp_path, ["data=competition", f"data.dir={data_dir}", "split=none", "refit=true", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / f"out-{name}")
        cfg.tracking.uri = members.cfg.tracking.uri
        cfg.paths.cache_dir = members.cfg.paths.cache_dir
    train(cfg)
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              order_by=["attributes.start_time DESC"])[0].info.run_id


def test_a_full_score_search_over_refit_members_reads_their_models_fitted_without_validation(members, tmp_path):
    """Refit members trained with save_val_model=true keep the model fitted on the fit part; the
    full-score search and its guard read it, the submission blends the refitted models."""
    ease = train_member(members, tmp_path, "ease", ["model=ease", "model.l2=50", "save_val_model=true"])
    knn = train_member(members, tmp_path, "knn", ["model=itemknn", "save_val_model=true"])
    plain = train_member(members, tmp_path, "plain", ["model=ease", "model.l2=50"])
    client = mlflow.MlflowClient(members.cfg.tracking.uri)
    runs = [client.get_run(i) for i in (ease, knn)]
    assert [r.data.tags["val_model"] for r in runs] == ["true", "true"] and "val_model" not in client.get_run(plain).data.tags
    final, probe = member_models(members.cfg.tracking.uri, runs[:1]), member_models(members.cfg.tracking.uri, runs[:1], True)
    assert not torch.equal(final[0].B, probe[0].B)  # the refit saw the validation part, the probe did not

    cfg = ensemble_config(tmp_path / "s", members, [f"runs=[{ease},{knn}]", "method=score_blend", "full_scores=true",
                                                    "search.method=grid", "search.grid=[0,1]"])
    run_ensemble(cfg)
    m = mlflow.search_runs(search_all_experiments=True, output_format="list",
                           order_by=["attributes.start_time DESC"])[0].data.metrics
    # each member's own ranking of the validation users, by its probe: the figure its training logged
    # (the refitted model trained on those users' validation items: its figure would be far higher)
    assert m["val_held_users"] > 0
    guard = sorted(m[f"val_held_recall_at_10_member{i}"] for i in range(2))  # members: best on validation first
    assert guard == pytest.approx(sorted(r.data.metrics["val_recall_at_10"] for r in runs), abs=1e-9)
    for i in range(2):  # each hidden part too, member by member
        (run,) = [r for r in runs if r.data.metrics["val_recall_at_10"] == pytest.approx(m[f"val_held_recall_at_10_member{i}"])]
        for part in ("last", "random"):
            assert m[f"val_held_recall_at_10_{part}_member{i}"] == pytest.approx(run.data.metrics[f"val_recall_at_10_{part}"])

    with pytest.raises(ConfigError, match=f"`full_scores`.*save_val_model=true.*{plain} \\(ease: refit\\)"):
        run_ensemble(ensemble_config(tmp_path / "p", members, [f"runs=[{ease},{plain}]", "method=score_blend",
                                                               "full_scores=true", "search.method=grid"]))


@pytest.mark.parametrize("method", ["rank_vote", "rrf", "score_blend"])
def test_the_weight_search_objective_equals_ranking_then_scoring(method):
    """pool_objective's shortcut against ranked_lists + evaluate, on pools with many ties, users short
    of k items, users with no pool rows and hidden items outside the pool."""
    from recmovie.data.split import Holdout
    from recmovie.ensemble.fusion import pool_objective
    from recmovie.ensemble.pool import ranked_lists
    from recmovie.evaluation.metrics import evaluate

    rng = np.random.default_rng(0)
    n_users, n_items, k = 60, 40, 5
    seen = {u: list(rng.choice(n_items, 3, replace=False)) for u in range(n_users)}
    data = tiny_data(seen, n_items)
    members = []
    for m in range(3):
        member = {}
        for u in range(n_users - 4):  # the last users: no pool rows, the popularity fill only
            unseen = [i for i in range(n_items) if i not in seen[u]]
            member[u] = list(rng.choice(unseen, int(rng.integers(2, 12)), replace=False))  # some short of k
        members.append(member)
    scores = [{u: list(np.round(rng.random(len(items)), 1)) for u, items in m.items()} for m in members]  # ties
    hidden_user = np.repeat(np.arange(n_users), 4)
    hidden_item = np.concatenate([rng.choice([i for i in range(n_items) if i not in seen[u]], 4, replace=False)
                                  for u in range(n_users)])
    data.holdout = Holdout(hidden_user.astype(np.int32), hidden_item.astype(np.int32), np.zeros(len(hidden_user), np.int8))
    pool = build_pool(lists(*members, scores=scores), n_items, 12)
    objective = pool_objective(pool, data, method, 60.0, k)
    for w in [np.ones(3), np.array([1.0, 0.0, 0.0]), np.array([0.3, 1.0, 0.5]), np.array([0.0, 0.0, 2.0])]:
        topk, _ = ranked_lists(pool, fuse(pool, method, w, 60.0), data, k, k)
        expected = evaluate(topk.items, topk.users, data.holdout, data.n_users, k)[f"recall_at_{k}"]
        assert objective(w) == pytest.approx(expected, abs=1e-12)


def test_the_search_rows_fall_to_float16_where_float32_would_not_fit_and_rank_the_same(monkeypatch):
    import recmovie.ensemble.fusion as fusion
    from recmovie.ensemble.fusion import FullScoreRows, rows_dtype

    gb = 2**30
    assert rows_dtype(4, 20_000, 12_000, 16 * gb) == torch.float32  # 3.6 GB: under half of 16
    assert rows_dtype(4, 20_000, 12_000, 5 * gb) == torch.float16  # 1.8 GB in float16
    assert rows_dtype(4, 20_000, 12_000, None) == torch.float32  # memory unknown: as before
    with pytest.raises(ConfigError, match=r"`full_scores`: .*4 members x 20,000 validation users x 12,000 items "
                                          r"take 1\.8 GB even in float16, 1\.5 GB available"):
        rows_dtype(4, 20_000, 12_000, int(1.5 * gb))

    class Fixed:  # a member whose scores are given
        def __init__(self, scores: np.ndarray):
            self.scores = torch.as_tensor(scores, dtype=torch.float32)

        def score(self, batch):
            return self.scores[batch.users]

    rng = np.random.default_rng(0)
    data = tiny_data({u: [u % 7] for u in range(30)}, n_items=40)
    models = [Fixed(rng.normal(size=(30, 40))), Fixed(rng.gamma(2.0, size=(30, 40)))]
    users, rows = np.arange(30), np.arange(30)
    wide = FullScoreRows(models, data, users, chunk=8, head=10)
    monkeypatch.setattr(fusion, "available_memory", lambda: 2 * 30 * 40 * 4 - 1)  # float32 would take it all
    narrow = FullScoreRows(models, data, users, chunk=8, head=10)
    assert [r.dtype for r in wide.rows] == [torch.float32] * 2 and [r.dtype for r in narrow.rows] == [torch.float16] * 2
    seen = np.zeros((30, 40), bool)
    seen[np.arange(30), np.arange(30) % 7] = True
    for w in ([1.0, 0.0], [0.3, 0.7], [1.0, 2.0]):
        exact = np.where(seen, -np.inf, sum(x * r.numpy() for x, r in zip(w, wide.rows)))
        tenth = np.sort(exact, axis=1)[:, -10]
        picked = np.take_along_axis(exact, narrow.top(np.array(w), rows, 10), axis=1)
        # float16 keeps about three digits: an item it lists is in the true top 10 up to that rounding
        assert (picked.min(axis=1) >= tenth - 0.01 * sum(w)).all()
        assert (narrow.top(np.array(w), rows, 10) == wide.top(np.array(w), rows, 10)).all(axis=1).mean() >= 0.8
