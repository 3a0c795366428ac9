"""Selection: `tune`'s grid and its extension past the edges, end to end and by hand."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from recmovie.models.linear import EASE, EDLAE, HybridEASE
from recmovie import selection
from recmovie.pipeline import train
from recmovie.selection import outward_point


def test_outward_point_steps_past_the_edge_by_the_grids_own_ratio():
    grid = {"l2": [5.0, 22.0, 100.0], "alpha": [1.0, 5.0]}
    assert outward_point(grid, {"l2": 22.0, "alpha": 5.0}, ["l2", "alpha"], []) == {"l2": 22.0, "alpha": 25.0}
    assert grid["alpha"] == [1.0, 5.0, 25.0]  # the grid grows, so the next step starts from there
    assert outward_point(grid, {"l2": 5.0, "alpha": 5.0}, ["l2"], []) == {"l2": 1.14, "alpha": 5.0}
    assert outward_point({"k": [50, 200]}, {"k": 200}, ["k"], []) == {"k": 800}  # integers stay integers
    assert outward_point({"k": [2, 3]}, {"k": 2}, ["k"], []) == {"k": 1}
    assert outward_point(grid, {"l2": 22.0, "alpha": 25.0}, [], []) is None  # no key may be extended
    assert outward_point({"a": [0.0, 1.0]}, {"a": 0.0}, ["a"], []) is None  # no geometric step below 0
    assert outward_point({"a": [1.0, 2.0, 4.0]}, {"a": 2.0}, ["a"], []) is None  # inside: nothing to do


def test_tune_extends_a_grid_whose_best_lies_on_its_edge(small_config):
    cfg = small_config(["model=itemknn", "tune=true", "model.tune.k=[1,2]", "tune_extra_points=2"])
    train(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="tune.csv"))
    # one neighbour or two: the best is on the edge, so the grid grows outward (k 4, then 8 if 4 is best)
    assert list(table.k[:3]) == [1, 2, 4] and len(table) in (3, 4)
    best = table.loc[table.val_recall_at_10.idxmax()]
    assert run.data.tags["tuned"] == f"k={int(best.k)}" and run.data.metrics["tune_seconds"] > 0


@pytest.fixture(scope="module")
def data(small_prepared):
    return small_prepared


@pytest.mark.parametrize("make, varying", [
    (lambda: EASE(l2=40.0), {"l2"}),
    (lambda: EDLAE(l2=40.0, dropout=0.3), {"l2", "dropout"}),
    (lambda: HybridEASE(l2=40.0, user_l2=20.0, alpha=0.3), {"alpha"}),  # both sides shared whole
    (lambda: HybridEASE(l2=40.0, user_l2=20.0, alpha=0.3), {"alpha", "l2"}),  # the Gram only
], ids=["ease", "edlae", "hybrid-alpha", "hybrid-l2"])
def test_a_fit_from_the_grids_shared_work_equals_a_fit_from_scratch(data, make, varying):
    alone, shared = make(), make()
    alone.fit(data)
    work = shared.shared_work(data, varying)
    assert work  # something is shared: this test would pass vacuously otherwise
    shared.fit(data, **work)
    shared.fit(data, **work)  # the shared work is left as it was for the next point
    assert torch.allclose(alone.B, shared.B, atol=1e-6)
    if isinstance(alone, HybridEASE):
        assert torch.allclose(alone.user_scores, shared.user_scores, atol=1e-6)


def test_tune_computes_the_shared_work_once(small_config, monkeypatch):
    calls = []
    original = EASE.shared_work

    def counted(self, data, varying):
        calls.append(set(varying))
        return original(self, data, varying)

    monkeypatch.setattr(EASE, "shared_work", counted)
    cfg = small_config(["model=ease", "tune=true", "model.tune.l2=[10.0,100.0,1000.0]", "tune_extra_points=1"])
    train(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="tune.csv"))
    assert len(table) >= 3 and calls == [{"l2"}]


def test_a_validate_run_keeps_the_tunes_chosen_model_instead_of_fitting_it_again(small_config, monkeypatch):
    fits = []
    original = EASE.fit

    def counted(self, data, **shared):
        fits.append(self.params.l2)
        return original(self, data, **shared)

    monkeypatch.setattr(EASE, "fit", counted)
    overrides = ["model=ease", "tune=true", "model.tune.l2=[10.0,100.0]", "tune_extra_points=0"]
    cfg = small_config(overrides)  # split=competition: the model is fitted on the fit part (`validate`)
    kept_score = train(cfg)
    kept_submission = (Path(cfg.paths.output_dir) / "submission.csv").read_text()
    assert len(fits) == 2  # the grid's two points, and no third fit for the chosen one
    fits.clear()
    monkeypatch.setattr(selection, "available_memory", lambda: 1)  # nothing may be held: fitted again
    assert train(small_config(overrides)) == kept_score and len(fits) == 3
    assert (Path(cfg.paths.output_dir) / "submission.csv").read_text() == kept_submission


def test_tune_scores_every_point_on_the_same_capped_users(small_config, monkeypatch):
    from recmovie.evaluation.metrics import user_recalls

    seen = []
    original = selection.validation_ranking

    def recorded(model, fit_data, cfg, depth, users=None):
        top, recall = original(model, fit_data, cfg, depth, users)
        # the subset's figure is its users' own mean, not diluted by the validation users left out
        every, _ = original(model, fit_data, cfg, depth)
        ids, per_user = user_recalls(every.items, every.users, fit_data.holdout, fit_data.n_users, 10)
        assert recall == pytest.approx(per_user[np.isin(ids, top.users)].mean())
        seen.append(tuple(top.users))
        return top, recall

    monkeypatch.setattr(selection, "validation_ranking", recorded)
    train(small_config(["model=ease", "tune=true", "model.tune.l2=[10.0,100.0]", "tune_extra_points=0",
                        "tune_users=50"]))
    # the grid's two points; then the run's own validation candidates, of every validation user
    assert len(seen[0]) == 50 and seen[0] == seen[1] and len(seen[2]) > 300
    seen.clear()
    cfg = small_config(["model=ease", "tune=true", "model.tune.l2=[10.0,100.0]", "tune_extra_points=0",
                        "tune_users=null"])
    train(cfg)
    assert len(seen[0]) > 300  # every validation user of the 400


def test_a_model_of_items_cubed_searches_its_grid_on_the_popular_items_then_fits_them_all(small_config, monkeypatch):
    fitted = []
    original = EASE.fit

    def counted(self, data, **shared):
        fitted.append(data.n_items)
        return original(self, data, **shared)

    monkeypatch.setattr(EASE, "fit", counted)
    overrides = ["model=ease", "tune=true", "model.tune.l2=[10.0,100.0]", "tune_extra_points=0", "tune_items=120"]
    cfg = small_config(overrides)  # a validate run: the tune's model would be kept, were it of every item
    train(cfg)
    assert fitted == [120, 120, 300]
    submission = pd.read_csv(Path(cfg.paths.output_dir) / "submission.csv")
    assert submission["item"].nunique() > 0 and len(submission) == 10 * submission["user"].nunique()


def test_of_items_keeps_the_items_rows_side_values_and_hidden_rows_renumbered():
    from recmovie.data.dataset import build_dataset
    from recmovie.data.prepare import PreparedData
    from recmovie.data.split import Holdout

    # raw items 10, 20, 30 (dense 0, 1, 2); keep 0 and 2
    u, i, t = np.array([1, 1, 2, 2]), np.array([10, 20, 30, 10]), np.array([1, 2, 3, 4])
    side = {"genre": (np.array([10, 20, 30]), np.array(["a", "b", "c"]), "genres.tsv")}
    ds = build_dataset(u, i, t, side=side)
    hidden = Holdout(np.array([0, 1, 1], np.int32), np.array([2, 1, -1], np.int32), np.zeros(3, np.int8))
    data = PreparedData(ds, np.ones(4, bool), np.arange(4, dtype=np.float32), hidden, "fp")
    sub = data.of_items(np.array([0, 2]))
    assert sub.n_items == 2 and sub.n_users == 2 and list(sub.dataset.item_ids) == [10, 30]
    assert sub.train_item.tolist() == [0, 1, 0] and sub.weight.tolist() == [0.0, 2.0, 3.0]
    assert sub.dataset.side["genre"].item.tolist() == [0, 1] and sub.holdout.item.tolist() == [1]
    assert sub.fingerprint != data.fingerprint
