"""Ensembles: fusion rules on hand-made lists, weights, run selection, and runs end to end through MLflow."""
from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from recmovie.data.dataset import Dataset
from recmovie.data.prepare import PreparedData
from recmovie.data.split import Holdout
from recmovie.ensemble import (
    build_pool, check_members, fuse, grid_vectors, member_weights, ranked_lists, run_ensemble, select_runs,
)
from recmovie.errors import ConfigError
from recmovie.pipeline import train
from recmovie.report import write_report
from tests.conftest import REPO, make_config


def tiny_data(seen: dict[int, list[int]], n_items: int = 8) -> PreparedData:
    """Users 0..len(seen)-1 with the given training items (item popularity = how often seen)."""
    users = np.array([u for u, items in seen.items() for _ in items], np.int32)
    items = np.array([i for its in seen.values() for i in its], np.int32)
    ds = Dataset(users, items, np.zeros(len(users), np.int64), np.arange(len(seen)) + 100, np.arange(n_items) + 1000)
    return PreparedData(ds, np.ones(len(users), bool), np.ones(len(users), np.float32), Holdout.empty(), "fp")


def lists(*members: dict[int, list[int]], scores: list[dict[int, list[float]]] | None = None) -> list[pd.DataFrame]:
    """Each member as {user: [items best first]}, in the dense form read_candidates returns."""
    out = []
    for m, member in enumerate(members):
        rows = [(u, i, r + 1, scores[m][u][r] if scores else 0.0)
                for u, items in member.items() for r, i in enumerate(items)]
        out.append(pd.DataFrame(rows, columns=["user", "item", "rank", "score"]))
    return out


def order(data, members, method="rank_vote", weights=None, top_n=3, k=2, **kw) -> list[list[int]]:
    pool = build_pool(members, data.n_items, top_n)
    w = np.ones(len(members)) if weights is None else np.asarray(weights, float)
    topk, filled = ranked_lists(pool, fuse(pool, method, w, **kw), data, depth=top_n * len(members), k=k)
    assert filled == 0
    return [[int(i) for i, s in zip(items, scores) if np.isfinite(s)] for items, scores in zip(topk.items, topk.scores)]


def test_rank_vote_matches_a_hand_computed_order():
    data = tiny_data({0: [0]})
    members = lists({0: [1, 2, 3]}, {0: [2, 4, 1]}, {0: [4, 2, 5]})
    # rank sums with unlisted = 4: item1 1+3+4=8, item2 2+1+2=5, item3 3+4+4=11, item4 4+2+1=7,
    # item5 4+4+3=11; items 3 and 5 tie and the first member's rank (3 < 4) puts 3 first
    assert order(data, members) == [[2, 4, 1, 3, 5]]
    # weights 3,1,1: item1 3+3+4=10, item2 6+1+2=9, item3 9+4+4=17, item4 12+2+1=15, item5 12+4+3=19
    assert order(data, members, weights=[3, 1, 1]) == [[2, 1, 4, 3, 5]]


def test_an_unlisted_item_counts_as_rank_top_n_plus_one():
    data = tiny_data({0: [0], 1: [0]})
    members = lists({0: [1, 2, 3], 1: [5, 6, 7]}, {0: [4, 1, 2]})
    # user 0: item4 = 4 (unlisted by the first) + 1 = 5 ties item2 = 2 + 3; the first member breaks it.
    # Ignoring unlisted items instead would put item4 (1) first.
    # user 1 is not ranked by the second member: its votes are all top_n + 1, the first member decides
    assert order(data, members) == [[1, 2, 4, 3], [5, 6, 7]]


def test_full_ties_fall_back_to_the_item_id():
    data = tiny_data({0: [0]})
    members = lists({0: [2, 1]}, {0: [4, 3]}, {0: [3, 4]}, {0: [1, 2]})
    # every item sums to 9 (unlisted = 3): 1: 2+3+3+1, 2: 1+3+3+2, 3: 3+2+1+3, 4: 3+1+2+3;
    # the first member's rank orders 2 before 1; it lists neither 3 nor 4: then the item id
    assert order(data, members, top_n=2) == [[2, 1, 3, 4]]


def test_rrf_and_score_blend_by_hand():
    data = tiny_data({0: [0]})
    members = lists({0: [1, 2]}, {0: [2, 3]}, scores=[{0: [10.0, 5.0]}, {0: [3.0, 1.0]}])
    # rrf, k=60: item1 1/61, item2 1/62 + 1/61, item3 1/62
    assert order(data, members, "rrf", top_n=2, rrf_k=60.0) == [[2, 1, 3]]
    # min-max per user and member: item1 1 + 0, item2 0 + 1, item3 0 + 0; weights 1, 2 lift item2
    assert order(data, members, "score_blend", top_n=2) == [[1, 2, 3]]
    assert order(data, members, "score_blend", weights=[1, 2], top_n=2) == [[2, 1, 3]]


def test_users_short_of_k_items_are_filled_by_popularity():
    # items 5 and 6 are the most popular (seen by users 1-3); user 0 has seen item 6
    data = tiny_data({0: [6], 1: [5, 6], 2: [5, 6], 3: [5, 6, 2]})
    pool = build_pool(lists({0: [1], 1: [0, 1, 2]}), data.n_items, 3)
    topk, filled = ranked_lists(pool, fuse(pool, "rank_vote", np.ones(1)), data, depth=3, k=3)
    assert filled == 3  # user 0 had one item, users 2 and 3 none
    assert topk.items[0].tolist() == [1, 5, 2]  # then item 5 (3 users), item 2 (1 user); 6 is seen
    assert topk.items[3].tolist() == [0, 1, 3]  # popularity ties: the lowest item ids
    assert np.isfinite(topk.scores).all() and (np.diff(topk.scores, axis=1) < 0).all()


def test_grid_keeps_one_vector_per_direction():
    vectors = {tuple(w) for w in grid_vectors([0, 1, 2], 2)}
    assert vectors == {(0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (1.0, 2.0), (2.0, 1.0)}


def fake_run(run_id, model, metric=None, start=0, **params):
    metrics = {} if metric is None else {"recall_at_10": metric}
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, start_time=start),
                           data=SimpleNamespace(tags={"model": model}, metrics=metrics, params=params))


def test_weights_by_position_model_or_run_and_their_errors():
    runs = [fake_run("r1", "ease"), fake_run("r2", "itemknn"), fake_run("r3", "ease")]
    assert member_weights(None, runs).tolist() == [1, 1, 1]
    assert member_weights([2, 1, 0], runs).tolist() == [2, 1, 0]
    assert member_weights({"ease": 2, "itemknn": 1, "r3": 0.5}, runs).tolist() == [2, 1, 0.5]
    for bad, match in [([1, 2], "2 weight"), ({"ease": 1}, "no weight for member.*r2"),
                       ({"ease": 1, "itemknn": 1, "als": 1}, "als"), ([0, 0, 0], "not all 0"),
                       ([1, -1, 1], ">= 0"), ([1, "x", 1], "numbers")]:
        with pytest.raises(ConfigError, match=match):
            member_weights(bad, runs)


def test_select_runs_best_or_latest_per_model_without_ensembles():
    runs = [fake_run("a", "ease", 0.20, start=1), fake_run("b", "ease", 0.25, start=2), fake_run("c", "ease", None, 3),
            fake_run("d", "itemknn", None, 1), fake_run("e", "ensemble", 0.3, 1)]
    ids = lambda rs: [r.info.run_id for r in rs]  # noqa: E731
    assert ids(select_runs(runs, "best", "recall_at_10")) == ["b", "d"]
    assert ids(select_runs(runs, "latest", "recall_at_10")) == ["c", "d"]
    assert ids(select_runs(runs, "all", "recall_at_10", models=["ensemble", "ease"])) == ["e", "b", "a", "c"]


def test_members_on_other_data_or_splits_or_too_few_candidates_are_refused():
    same = dict(data_fingerprint="f1", **{"split.name": "competition", "split.n_last": "2"})
    a, b = fake_run("a", "ease", **same, **{"candidates.n": "50"}), fake_run("b", "itemknn", **same)
    check_members([a, b], 30)
    other = fake_run("c", "popularity", **{**same, "split.n_last": "1"})
    with pytest.raises(ConfigError, match=r"(?s)different data or splits.*n_last=2.*a \(ease\).*n_last=1.*c \(popularity\)"):
        check_members([a, b, other], 30)
    with pytest.raises(ConfigError, match="data_fingerprint=f2"):
        check_members([a, fake_run("d", "ease", **{**same, "data_fingerprint": "f2"})], 30)
    with pytest.raises(ConfigError, match="top_n.*run a .*saved only 50"):
        check_members([a, b], 60)


# ------------------------------------------------------------------ through MLflow
@pytest.fixture(scope="module")
def members(tmp_path_factory, small_dir):
    """ease, itemknn, popularity (split=competition), genre_rule and popularity (split=none) trained on
    the small data into one tracking store, shared by the tests below (a new sqlite store costs seconds)."""
    root = tmp_path_factory.mktemp("members")
    ids = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for key, overrides in [("ease", ["model.l2=50"]), ("itemknn", []), ("popularity", []),
                               ("genre_rule", ["split=none"]), ("popularity-none", ["split=none"])]:
            model = key.split("-")[0]
            cfg = make_config(root, ["data=competition", f"data.dir={small_dir}", f"model={model}", *overrides])
            with open_dict(cfg):
                cfg.paths.output_dir = str(root / f"out-{key}")
            train(cfg)
            mlflow.set_tracking_uri(cfg.tracking.uri)
            ids[key] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                           order_by=["attributes.start_time DESC"])[0].info.run_id
    return SimpleNamespace(cfg=cfg, ids=ids, root=root, experiment=str(cfg.data.name))


def ensemble_config(tmp_path, members, overrides=()):
    cfg = make_config(tmp_path, list(overrides), config_name="ensemble")
    with open_dict(cfg):
        cfg.tracking.uri = members.cfg.tracking.uri
        cfg.paths.cache_dir = members.cfg.paths.cache_dir
    return cfg


def test_two_run_ensemble_end_to_end_through_mlflow(members, tmp_path):
    ids = [members.ids["ease"], members.ids["itemknn"]]
    cfg = ensemble_config(tmp_path, members, [f"runs=[{ids[0]},{ids[1]}]", "method=rank_vote", "top_n=20",
                                              "weights={ease:2,itemknn:1}"])
    recall = run_ensemble(cfg)

    client = mlflow.MlflowClient(members.cfg.tracking.uri)
    member_runs = [client.get_run(i) for i in ids]
    (run,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.data.tags["model"] == "ensemble" and r.data.tags["members"] == ",".join(ids)]
    assert run.info.status == "FINISHED" and run.info.experiment_id == member_runs[0].info.experiment_id
    assert run.data.tags["member_models"] == "ease,itemknn"
    assert run.data.params["method"] == "rank_vote" and run.data.params["model.weights"] == "[2.0, 1.0]"
    assert run.data.params["data_fingerprint"] == member_runs[0].data.params["data_fingerprint"]
    assert run.data.metrics["recall_at_10"] == pytest.approx(recall)
    assert recall > 0.5 * max(m.data.metrics["recall_at_10"] for m in member_runs)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"submission.csv", "candidates.csv", "members.csv", "config.yaml"} <= names

    sub = pd.read_csv(f"{cfg.paths.output_dir}/submission.csv")
    assert (sub.groupby("user").size() == 10).all() and sub.groupby("user")["item"].nunique().eq(10).all()
    for name in ("ease", "itemknn"):  # two different models fused: no copy of either
        assert not sub.equals(pd.read_csv(members.root / f"out-{name}" / "submission.csv"))
    cand = pd.read_csv(f"{cfg.paths.output_dir}/candidates.csv")
    assert cand.groupby("user")["rank"].max().eq(20).all()
    # every user's first item has the lowest weighted rank sum of the members' files
    first = cand[cand["rank"] == 1].set_index("user")["item"]
    member_cands = [pd.read_csv(members.root / f"out-{name}" / "candidates.csv") for name in ("ease", "itemknn")]
    for u in first.index[:20]:
        ease, knn = ({i: r for i, r in zip(c.item, c["rank"])} for c in
                     (c[(c.user == u) & (c["rank"] <= 20)] for c in member_cands))
        votes = {item: 2 * ease.get(item, 21) + knn.get(item, 21) for item in ease.keys() | knn.keys()}
        assert votes[first[u]] == min(votes.values())

    with pytest.raises(ConfigError, match="top_n.*saved only 50"):
        run_ensemble(ensemble_config(tmp_path, members, [f"runs=[{ids[0]},{ids[1]}]", "top_n=51"]))
    # the ensemble is a run like any other: it can be a member itself
    cfg2 = ensemble_config(tmp_path / "2", members, [f"runs=[{run.info.run_id},{ids[1]}]", "method=rrf", "top_n=20"])
    assert run_ensemble(cfg2) > 0


def test_weight_search_query_selection_and_report(members, tmp_path):
    query = [f"query.experiment={members.experiment}", "query.split=competition"]
    plain = run_ensemble(ensemble_config(tmp_path / "a", members, query))
    # searched on the VALIDATION part: a grid of equal weights alone, then a wider one holding them
    run_ensemble(ensemble_config(tmp_path / "e", members, [*query, "search.method=grid", "search.grid=[1]"]))
    cfg = ensemble_config(tmp_path / "b", members, [*query, "search.method=grid", "search.grid=[0,1,3]"])
    searched = run_ensemble(cfg)
    mlflow.set_tracking_uri(members.cfg.tracking.uri)
    by_dir = {r.data.tags.get("output_dir"): r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    equal_val = by_dir[str(tmp_path / "e" / "out")].data.metrics["val_recall_at_10"]
    run = by_dir[str(tmp_path / "b" / "out")]
    assert run.data.metrics["val_recall_at_10"] >= equal_val  # what the search maximised
    assert run.data.metrics["recall_at_10"] == pytest.approx(searched) != run.data.metrics["val_recall_at_10"]
    assert plain == pytest.approx(by_dir[str(tmp_path / "a" / "out")].data.metrics["recall_at_10"])
    table = pd.read_csv(f"{cfg.paths.output_dir}/members.csv")
    assert sorted(table["model"]) == ["ease", "itemknn", "popularity"]
    assert table["weight"].max() == 1.0

    ocfg = ensemble_config(tmp_path / "c", members, [*query, "search.method=optuna", "search.trials=8",
                                                     "method=score_blend"])
    assert run_ensemble(ocfg) > 0

    # a curve as a gradient model logs it, for the report's second plot
    client = mlflow.MlflowClient(members.cfg.tracking.uri)
    for step, value in enumerate([0.1, 0.2, 0.25]):
        client.log_metric(members.ids["itemknn"], "val_recall_at_10", value, step=step)
    rcfg = make_config(tmp_path / "r", [f"experiment={members.experiment}", "filter=\"tags.split = 'competition'\""],
                       config_name="report")
    with open_dict(rcfg):
        rcfg.tracking.uri = members.cfg.tracking.uri
    md = write_report(rcfg)
    report = pd.read_csv(md.parent / "report.csv")
    assert set(report["model"]) == {"ease", "itemknn", "popularity", "ensemble"}
    ranked = report["val_recall_at_10"].dropna()  # runs by their selection figure, best first
    assert ranked.is_monotonic_decreasing and len(ranked) >= 3
    assert report.loc[report.model == "ease", "params"].item() == "dtype=float32, l2=50"
    assert (md.parent / "recall_by_model.png").stat().st_size > 1000
    assert (md.parent / "validation_curves.png").exists()
    assert "| ease |" in md.read_text()
    (rrun,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
               if r.data.tags["model"] == "report"]
    assert {a.path for a in client.list_artifacts(rrun.info.run_id, "report")} >= {"report/report.md", "report/report.csv"}


def test_split_none_members_make_a_submission_without_metrics(members, tmp_path):
    runs = f"runs=[{members.ids['genre_rule']},{members.ids['popularity-none']}]"
    cfg = ensemble_config(tmp_path, members, [runs])
    assert run_ensemble(cfg) is None
    sub = pd.read_csv(f"{cfg.paths.output_dir}/submission.csv")
    assert len(sub) == 10 * sub["user"].nunique()
    # closed-form members with split=none fit everything at once: no validation candidates to learn from
    with pytest.raises(ConfigError, match="`search.method`.*no val_candidates.csv.*retrain it with refit=true"):
        run_ensemble(ensemble_config(tmp_path, members, [runs, "search.method=grid"]))
    with pytest.raises(ConfigError, match="`method`.*no val_candidates.csv"):
        run_ensemble(ensemble_config(tmp_path, members, [runs, "method=rerank"]))


def test_members_with_other_splits_are_refused_naming_them(members, tmp_path):
    a, b = members.ids["popularity"], members.ids["genre_rule"]
    cfg = ensemble_config(tmp_path, members, [f"runs=[{a},{b}]"])
    with pytest.raises(ConfigError, match=f"(?s)split.name=competition.*{a}.*split.name=none.*{b}"):
        run_ensemble(cfg)
    cfg = ensemble_config(tmp_path, members, [f"runs=[{b},{a}]", "search.method=grid"])
    with pytest.raises(ConfigError, match="different data or splits"):
        run_ensemble(cfg)
    for bad, key in [("method=vote", "method"), ("top_n=5", "top_n"), ("candidates.n=5", "candidates.n"),
                     ("search.method=random", "search.method"), ("search.method=grid search.grid=[0]", "search.grid"),
                     ("query.per_model=worst", "query.per_model")]:
        with pytest.raises(ConfigError, match=f"`{key}`"):
            run_ensemble(ensemble_config(tmp_path, members, [f"runs=[{a},{members.ids['ease']}]", *bad.split()]))


@pytest.mark.slow
def test_command_lines(members, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": members.cfg.tracking.uri}
    a, b = members.ids["ease"], members.ids["popularity"]
    common = [f"paths.cache_dir={members.cfg.paths.cache_dir}"]
    out = subprocess.run([sys.executable, "ensemble.py", f"runs=[{a},{b}]", "method=rrf", "top_n=15",
                          f"hydra.run.dir={tmp_path / 'ens'}", *common],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ensemble rrf of 2 runs" in out.stdout and (tmp_path / "ens" / "submission.csv").exists()
    out = subprocess.run([sys.executable, "-m", "recmovie.report", f"experiment={members.experiment}",
                          "split_name=competition", "per_model=all", f"hydra.run.dir={tmp_path / 'rep'}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "report:" in out.stdout and (tmp_path / "rep" / "recall_by_model.png").exists()


def test_rerank_end_to_end_logs_the_ranker_and_refuses_weights(members, tmp_path):
    ids = [members.ids["ease"], members.ids["itemknn"], members.ids["popularity"]]
    runs = f"runs=[{','.join(ids)}]"
    cfg = ensemble_config(tmp_path, members, [runs, "method=rerank", "top_n=50", "rerank.patience=10"])
    recall = run_ensemble(cfg)
    client = mlflow.MlflowClient(members.cfg.tracking.uri)
    (run,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.data.tags.get("method") == "rerank" and r.data.tags["members"] == ",".join(ids)]
    assert run.data.metrics["recall_at_10"] == pytest.approx(recall)
    best = max(client.get_run(i).data.metrics["recall_at_10"] for i in ids)
    assert recall > 0.8 * best  # learned from a few hundred validation users: near its members, not exact
    assert run.data.metrics["ranker_rounds"] >= 1 and 0 < run.data.metrics["val_recall_at_10"] < 1
    ranker = {a.path for a in client.list_artifacts(run.info.run_id, "ranker")}
    assert ranker == {"ranker/ranker.txt", "ranker/feature_importances.csv", "ranker/feature_importances.png"}
    importances = pd.read_csv(f"{cfg.paths.output_dir}/ranker/feature_importances.csv")
    assert {"m0_rank", "m2_score", "item_at_user_time", "genre_share"} <= set(importances.feature)
    sub = pd.read_csv(f"{cfg.paths.output_dir}/submission.csv")
    assert (sub.groupby("user").size() == 10).all() and sub.groupby("user")["item"].nunique().eq(10).all()

    with pytest.raises(ConfigError, match="`weights`: rerank learns"):
        run_ensemble(ensemble_config(tmp_path / "w", members, [runs, "method=rerank", "weights=[1,1,1]"]))
    with pytest.raises(ConfigError, match=r"`rerank.valid_share`: must be a number in \(0, 1\)"):
        run_ensemble(ensemble_config(tmp_path / "v", members, [runs, "method=rerank", "rerank.valid_share=1.5"]))


def test_full_score_blend_reloads_the_members_and_searches_on_validation(members, tmp_path):
    from recmovie.ensemble import _standardised, member_models

    ids = [members.ids["ease"], members.ids["itemknn"]]
    runs = f"runs=[{','.join(ids)}]"
    cfg = ensemble_config(tmp_path, members, [runs, "method=score_blend", "full_scores=true", "weights=[1,0.5]"])
    recall = run_ensemble(cfg)
    # the first user's list by hand: 1 x standardised EASE + 0.5 x standardised ItemKNN over unseen items
    client = mlflow.MlflowClient(members.cfg.tracking.uri)
    ease, knn = member_models(members.cfg.tracking.uri, [client.get_run(i) for i in ids], str(tmp_path / "m"))
    from recmovie.pipeline import load_data
    from omegaconf import OmegaConf

    data = load_data(OmegaConf.load(mlflow.artifacts.download_artifacts(run_id=ids[0], artifact_path="config.yaml",
                                                                         dst_path=str(tmp_path / "c"))))
    batch = data.user_batch(np.array([0]))
    total = _standardised(ease.score(batch), batch) + 0.5 * _standardised(knn.score(batch), batch)
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

    with pytest.raises(ConfigError, match="`full_scores`: only score_blend"):
        run_ensemble(ensemble_config(tmp_path / "r", members, [runs, "method=rank_vote", "full_scores=true"]))
    none_runs = f"runs=[{members.ids['genre_rule']},{members.ids['popularity-none']}]"
    with pytest.raises(ConfigError, match="`full_scores`.*fitted without the validation part"):
        run_ensemble(ensemble_config(tmp_path / "n", members, [none_runs, "method=score_blend", "full_scores=true",
                                                               "search.method=grid"]))
