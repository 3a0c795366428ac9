"""`ensemble.py` end to end through MLflow: a run per ensemble, weight search, queries, refusals."""
from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
from omegaconf import open_dict

from recmovie.ensemble.command import run_ensemble
from recmovie.errors import ConfigError
from recmovie.pipeline import predict
from recmovie.report import write_report
from tests.conftest import REPO, make_config
from tests.ensemble.helpers import ensemble_config


def test_two_run_ensemble_end_to_end_through_mlflow(members, tmp_path, capsys):
    ids = [members.ids["ease"], members.ids["itemknn"]]
    cfg = ensemble_config(tmp_path, members, [f"runs=[{ids[0]},{ids[1]}]", "method=rank_vote", "top_n=20",
                                              "weights={ease:2,itemknn:1}"])
    recall = run_ensemble(cfg)

    client = mlflow.MlflowClient(members.cfg.tracking.uri)
    # the reference (first) member is the one with the best validation figure
    member_runs = sorted([client.get_run(i) for i in ids], key=lambda r: -r.data.metrics["val_recall_at_10"])
    order = [r.info.run_id for r in member_runs]
    (run,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.data.tags["model"] == "ensemble" and r.data.tags["members"] == ",".join(order)]
    assert run.info.status == "FINISHED" and run.info.experiment_id == member_runs[0].info.experiment_id
    assert run.data.tags["member_models"] == ",".join(r.data.tags["model"] for r in member_runs)
    weights = {"ease": 2.0, "itemknn": 1.0}
    assert run.data.params["method"] == "rank_vote"
    assert run.data.params["model.weights"] == str([weights[r.data.tags["model"]] for r in member_runs])
    assert run.data.params["data_fingerprint"] == member_runs[0].data.params["data_fingerprint"]
    assert run.data.metrics["recall_at_10"] == pytest.approx(recall)
    assert recall > 0.5 * max(m.data.metrics["recall_at_10"] for m in member_runs)
    # given weights, nothing learned: judged on every validation user against each member, said, not acted on
    m = run.data.metrics
    assert m["val_held_users"] > 0 and m["val_held_recall_at_10"] == m["val_recall_at_10"]
    assert m["val_held_recall_at_10_best_member"] == max(m["val_held_recall_at_10_member0"],
                                                          m["val_held_recall_at_10_member1"])
    assert m["guard_passed"] == float(m["guard_margin"] > m["guard_se"]) and "fallback" not in run.data.tags
    assert f"guard: rank_vote (weights given) on {m['val_held_users']:.0f} validation users:" in capsys.readouterr().out
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

    # predict.py on an ensemble's run: refused by key, saying where its lists are
    pcfg = make_config(tmp_path / "p", [f"run_id={run.info.run_id}"], config_name="predict")
    with open_dict(pcfg):
        pcfg.tracking.uri = members.cfg.tracking.uri
    with pytest.raises(ConfigError, match="run_id.*an ensemble keeps no model"):
        predict(pcfg)

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
    equal_val = by_dir[str(tmp_path / "e" / "out")].data.metrics["val_search_recall_at_10"]
    run = by_dir[str(tmp_path / "b" / "out")]
    assert run.data.metrics["val_search_recall_at_10"] >= equal_val  # what the search maximised
    # the guard's figures, on validation users the search never saw: the blend against each member
    m = run.data.metrics
    assert m["val_held_users"] > 0 and m["val_held_recall_at_10"] == m["val_recall_at_10"]
    assert m["guard_passed"] == float(m["guard_margin"] > m["guard_se"]) and 0 < m["val_pool_recall"] <= 1
    assert m["val_held_recall_at_10_best_member"] == max(m[f"val_held_recall_at_10_member{i}"] for i in range(3))
    assert run.data.metrics["recall_at_10"] == pytest.approx(searched) != run.data.metrics["val_recall_at_10"]
    assert plain == pytest.approx(by_dir[str(tmp_path / "a" / "out")].data.metrics["recall_at_10"])
    table = pd.read_csv(f"{cfg.paths.output_dir}/members.csv")
    assert sorted(table["model"]) == ["ease", "itemknn", "popularity"]
    assert table["weight"].max() == 1.0
    # members.csv's weights are what the submission used: after a fallback, the member's own alone
    if "fallback" in run.data.tags:
        assert table["weight"].tolist().count(1.0) == 1 and table["weight"].sum() == 1.0
        assert table.loc[table["weight"] == 1.0, "run_id"].item() == run.data.tags["fallback"].split()[0]

    # few validation users (search.folds=auto): five searches, every validation user judged by the
    # one that held it out; one search (folds=1) holds out held_share of them
    assert m["search_folds"] == 5
    run_ensemble(ensemble_config(tmp_path / "f", members, [*query, "search.method=grid", "search.grid=[0,1,3]",
                                                           "search.folds=1"]))
    (one,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.data.tags.get("output_dir") == str(tmp_path / "f" / "out")]
    assert one.data.metrics["search_folds"] == 1
    assert one.data.metrics["val_held_users"] == round(0.2 * m["val_held_users"])

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
                     ("search.method=grid search.folds=0", "search.folds"),
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
