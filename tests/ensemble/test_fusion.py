"""Fusion rules by hand, and the full-score blend against a hand-computed list."""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

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
    total = standardised(ease.score(batch), batch) + 0.5 * standardised(knn.score(batch), batch)
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
    with pytest.raises(ConfigError, match="`full_scores`.*fitted without the validation part"):
        run_ensemble(ensemble_config(tmp_path / "n", members, [none_runs, "method=score_blend", "full_scores=true",
                                                               "search.method=grid"]))


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
