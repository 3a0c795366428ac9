"""The re-ranker's features and labels on hand-made data and its run end to end."""
from __future__ import annotations

import numpy as np
import pandas as pd
import mlflow
import pytest

from recmovie.data.dataset import build_dataset
from recmovie.data.prepare import PreparedData
from recmovie.data.split import PART_LAST, PART_RANDOM, Holdout
from recmovie.ensemble.command import run_ensemble
from recmovie.ensemble.pool import build_pool
from recmovie.ensemble.rerank import CONTEXT_FEATURES, feature_names, labels, pair_features
from recmovie.errors import ConfigError
from tests.ensemble.helpers import ensemble_config

DAY = 86400
T0 = 1_000_000_000  # 2001-09-09


def data_with_history() -> PreparedData:
    # raw users 1, 2, 3; raw items 10, 20, 30, 40 (dense 0..3)
    rows = [(1, 10, T0), (1, 20, T0 + 10 * DAY), (2, 10, T0 + 100 * DAY), (2, 30, T0 + 200 * DAY), (3, 40, T0 + DAY)]
    u, i, t = (np.array(c) for c in zip(*rows))
    side = {"year": (np.array([10, 20, 30, 40]), np.array(["1990", "2000", "2001", "2005"]), "years.tsv"),
            "genre": (np.array([10, 20, 20, 30]), np.array(["Drama", "Drama", "Comedy", "Comedy"]), "genres.tsv")}
    ds = build_dataset(u, i, t, side=side)
    hidden = Holdout(np.array([0, 1], np.int32), np.array([3, 3], np.int32), np.zeros(2, np.int8))
    return PreparedData(ds, np.ones(len(u), bool), np.ones(len(u), np.float32), hidden, "fp")


def test_features_and_labels_by_hand():
    data = data_with_history()  # dense: users 0, 1, 2 = raw 1, 2, 3; items 0..3 = raw 10..40
    member = pd.DataFrame({"user": [0, 0, 1], "item": [2, 3, 3], "rank": [1, 2, 1], "score": [1.0, 0.0, 1.0]})
    pool = build_pool([member], data.n_items, top_n=2)
    x = pd.DataFrame(pair_features(pool, data, recent_share=0.5, window_days=150), columns=feature_names(1))
    x["user"], x["item"] = pool.users, pool.items
    row = x.set_index(["user", "item"])
    assert list(row.index) == [(0, 2), (0, 3), (1, 3)]
    assert row["m0_rank"].tolist() == [1, 2, 1] and row["n_listed"].tolist() == [1, 1, 1]
    assert row.loc[(0, 2), "item_pop"] == pytest.approx(np.log1p(1))
    assert row.loc[(0, 3), "item_pop"] == pytest.approx(np.log1p(1))
    # item 2 (raw 30) was watched at T0+200d: within 150 days before user 1's last (T0+200d), not
    # before user 0's (T0+10d)
    assert row.loc[(0, 2), "item_at_user_time"] == 0 and row.loc[(1, 3), "item_at_user_time"] == 0
    assert row.loc[(0, 2), "item_recent"] == pytest.approx(np.log1p(1))  # the newest half of the rows
    assert row.loc[(0, 2), "year_gap"] == 2001 - 2001 and row.loc[(1, 3), "year_gap"] == 2002 - 2005
    assert row.loc[(0, 2), "user_len"] == pytest.approx(np.log1p(2))
    assert row.loc[(0, 2), "user_idle_days"] == pytest.approx(190) and row.loc[(1, 3), "user_idle_days"] == 0
    # user 0: Drama 2 of 2 items, Comedy 1 of 2; item 2 is Comedy -> 0.5; item 3 has no genre -> NaN
    assert row.loc[(0, 2), "genre_share"] == pytest.approx(0.5) and np.isnan(row.loc[(0, 3), "genre_share"])
    assert labels(pool, data).tolist() == [0, 1, 1]


def test_the_user_time_window_counts_the_items_interactions_before_the_users_last():
    data = data_with_history()
    member = pd.DataFrame({"user": [1], "item": [0], "rank": [1], "score": [1.0]})  # user 1, item raw 10
    pool = build_pool([member], data.n_items, top_n=1)
    at = CONTEXT_FEATURES.index("item_at_user_time") + 2
    # item 0's rows: T0 (user 0) and T0+100d (user 1); user 1's last is T0+200d
    assert pair_features(pool, data, window_days=150)[0, at] == pytest.approx(np.log1p(1))
    assert pair_features(pool, data, window_days=250)[0, at] == pytest.approx(np.log1p(2))
    assert pair_features(pool, data, window_days=50)[0, at] == 0


def test_the_sequence_features_count_what_followed_the_users_last_items():
    # raw items 1, 2, 3 = dense a, b, c; histories by time: user 0: a b c, user 1: a c, user 2: b a
    rows = [(0, 1, T0), (0, 2, T0 + 1), (0, 3, T0 + 2), (1, 1, T0), (1, 3, T0 + 5), (2, 2, T0), (2, 1, T0 + 9)]
    u, i, t = (np.array(c) for c in zip(*rows))
    data = PreparedData(build_dataset(u, i, t), np.ones(len(u), bool), np.ones(len(u), np.float32),
                        Holdout.empty(), "fp")
    pool = build_pool([pd.DataFrame({"user": [2], "item": [2], "rank": [1], "score": [1.0]})], data.n_items, top_n=1)
    cols = [CONTEXT_FEATURES.index(name) + 2 for name in ("after_last", "after_recent")]
    # within 3 steps, a was followed by b once and c twice; b by c once and a once
    assert pair_features(pool, data)[0, cols] == pytest.approx([2 / 3, 2 / 3 + 1 / 2])
    # next step only: a -> b, a -> c, b -> c, b -> a, half each
    assert pair_features(pool, data, sequence_window=1)[0, cols] == pytest.approx([1 / 2, 1])
    assert pair_features(pool, data, recent_items=1)[0, cols] == pytest.approx([2 / 3, 2 / 3])
    # user 1 (a c): c was never followed; a was followed by b, never by a
    other = build_pool([pd.DataFrame({"user": [1, 1], "item": [0, 1], "rank": [1, 2], "score": [1.0, 0.0]})],
                       data.n_items, top_n=2)
    assert pair_features(other, data)[:, cols] == pytest.approx(np.array([[0, 0], [0, 1 / 3]]))


def test_rerank_end_to_end_logs_the_ranker_and_refuses_weights(members, tmp_path):
    ids = [members.ids["ease"], members.ids["itemknn"], members.ids["popularity"]]
    runs = f"runs=[{','.join(ids)}]"
    cfg = ensemble_config(tmp_path, members, [runs, "method=rerank", "top_n=50", "rerank.patience=10"])
    recall = run_ensemble(cfg)
    client = mlflow.MlflowClient(members.cfg.tracking.uri)
    (run,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.data.tags.get("method") == "rerank" and set(r.data.tags["members"].split(",")) == set(ids)]
    assert run.data.metrics["recall_at_10"] == pytest.approx(recall)
    best = max(client.get_run(i).data.metrics["recall_at_10"] for i in ids)
    assert recall > 0.8 * best  # learned from a few hundred validation users: near its members, not exact
    assert run.data.metrics["ranker_rounds"] >= 1 and 0 < run.data.metrics["val_recall_at_10"] < 1
    ranker = {a.path for a in client.list_artifacts(run.info.run_id, "ranker")}
    boosters = {f"ranker/ranker-{f}.txt" for f in range(5)}  # rerank.folds, 5
    assert ranker == {*boosters, "ranker/feature_importances.csv", "ranker/feature_importances.png"}
    importances = pd.read_csv(f"{cfg.paths.output_dir}/ranker/feature_importances.csv")
    assert {"m0_rank", "m2_score", "item_at_user_time", "genre_share"} <= set(importances.feature)
    sub = pd.read_csv(f"{cfg.paths.output_dir}/submission.csv")
    assert (sub.groupby("user").size() == 10).all() and sub.groupby("user")["item"].nunique().eq(10).all()
    # the guard: a ranker not better than its best member on the held-out users gives way to that member
    m, tags = run.data.metrics, run.data.tags
    assert ("fallback" in tags) == (m["guard_passed"] == 0.0)
    if "fallback" in tags:
        member = tags["fallback"].split()[0]
        own = pd.read_csv(client.download_artifacts(member, "submission.csv", str(tmp_path / "own")))
        assert sub.sort_values("user", kind="stable").item.tolist() == own.sort_values("user", kind="stable").item.tolist()

    with pytest.raises(ConfigError, match="`weights`: rerank learns"):
        run_ensemble(ensemble_config(tmp_path / "w", members, [runs, "method=rerank", "weights=[1,1,1]"]))
    with pytest.raises(ConfigError, match=r"`rerank.valid_share`: must be a number in \(0, 1\)"):
        run_ensemble(ensemble_config(tmp_path / "v", members, [runs, "method=rerank", "rerank.valid_share=1.5"]))


def test_folded_rankers_hold_out_every_user_once_and_the_guard_sees_each_by_the_booster_that_held_it():
    from recmovie.ensemble.rerank import fit_ranker

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(60), 20)  # 60 users x 20 candidates, grouped by user
    x = rng.normal(size=(len(users), 3)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=len(users)) > 1.0).astype(np.int32)  # the first feature tells
    cfg = {"folds": 3, "valid_share": 0.2, "seed": 1, "k": 5, "threads": 1, "rounds": 30, "patience": 10,
           "params": {"num_leaves": 3, "min_data_in_leaf": 5}}
    ranker = fit_ranker(x, y, users, ["a", "b", "c"], cfg)
    assert len(ranker.boosters) == 3 and sorted(np.concatenate(ranker.held).tolist()) == list(range(60))
    assert np.array_equal(ranker.held_users, np.arange(60))
    oof = ranker.out_of_fold(x, users)
    for booster, rounds, held in zip(ranker.boosters, ranker.rounds, ranker.held):
        rows = np.isin(users, held)
        assert np.allclose(oof[rows], booster.predict(x[rows], num_iteration=rounds))
    together = np.mean([b.predict(x, num_iteration=r) for b, r in zip(ranker.boosters, ranker.rounds)], axis=0)
    assert np.allclose(ranker.predict(x), together) and not np.allclose(oof, together)
    assert ranker.importances()["a"] > ranker.importances()["c"]
    single = fit_ranker(x, y, users, ["a", "b", "c"], {**cfg, "folds": 1})
    assert len(single.boosters) == 1 and len(single.held_users) == 12  # valid_share of 60


def test_last_gain_labels_the_last_part_2_and_refuses_a_validation_part_without_one():
    data = data_with_history()
    data.holdout = Holdout(np.array([0, 1], np.int32), np.array([3, 3], np.int32), np.array([PART_LAST, PART_RANDOM], np.int8))
    member = pd.DataFrame({"user": [0, 0, 1], "item": [2, 3, 3], "rank": [1, 2, 1], "score": [1.0, 0.0, 1.0]})
    pool = build_pool([member], data.n_items, top_n=2)  # rows (0, 2), (0, 3), (1, 3)
    assert labels(pool, data).tolist() == labels(pool, data, 1.0).tolist() == [0, 1, 1]
    assert labels(pool, data, 3.0).tolist() == [0, 2, 1]
    data.holdout.part[:] = PART_RANDOM
    with pytest.raises(ConfigError, match="`rerank.last_gain`: the validation part has no last items"):
        labels(pool, data, 3.0)


def test_last_gain_moves_the_rankers_places_from_the_random_part_to_the_last():
    """Feature a finds each user's random hidden items surely, feature b the last ones loosely: with
    both worth the same the ranker's top 2 follow a; with the last part worth ten times, b."""
    from recmovie.ensemble.rerank import fit_ranker

    rng = np.random.default_rng(3)
    n_users, n = 300, 20
    users = np.repeat(np.arange(n_users), n)
    y = np.tile(np.r_[1, 1, 2, 2, np.zeros(n - 4, int)], n_users).astype(np.int32)
    a = rng.normal(size=len(y)) + 3.0 * (y == 1)
    b = rng.normal(size=len(y)) + 1.5 * (y == 2)
    x = np.column_stack([a, b, rng.normal(size=len(y))]).astype(np.float32)
    cfg = {"folds": 1, "valid_share": 0.2, "seed": 1, "k": 2, "threads": 1, "rounds": 60, "patience": 20,
           "params": {"num_leaves": 3, "min_data_in_leaf": 20}}

    def last_share_of_top2(gain: float) -> float:
        given = y if gain != 1 else np.minimum(y, 1)  # as `labels` gives them
        values = fit_ranker(x, given, users, ["a", "b", "c"], {**cfg, "last_gain": gain}).predict(x)
        top = np.argsort(-values.reshape(n_users, n), axis=1)[:, :2]
        return float((y.reshape(n_users, n)[np.arange(n_users)[:, None], top] == 2).mean())

    alike, last = last_share_of_top2(1.0), last_share_of_top2(10.0)
    assert alike < 0.2 and last > 0.5


def test_last_gain_is_checked_by_its_key():
    from recmovie.ensemble.rerank import check_rerank_config

    base = {"recent_share": 0.1, "window_days": 30, "sequence_window": 3, "recent_items": 5, "valid_share": 0.2,
            "folds": "auto", "rounds": 10, "patience": 5, "threads": 1, "seed": 1, "params": {}}
    check_rerank_config({**base, "last_gain": 2.5})
    with pytest.raises(ConfigError, match=r"`rerank.last_gain`: must be a number > 0, got 0"):
        check_rerank_config({**base, "last_gain": 0})
    with pytest.raises(ConfigError, match="`rerank.last_gain`: rerank.params.label_gain sets the gains as well"):
        check_rerank_config({**base, "last_gain": 2, "params": {"label_gain": [0, 1, 5]}})
    check_rerank_config({**base, "last_gain": 1, "params": {"label_gain": [0, 1, 5]}})
