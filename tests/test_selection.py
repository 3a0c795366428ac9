"""Selection: `tune`'s grid and its extension past the edges, end to end and by hand."""
from __future__ import annotations

import mlflow
import pandas as pd

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
