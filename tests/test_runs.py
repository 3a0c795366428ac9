"""Reading tracked runs: selection per model."""
from __future__ import annotations

from recmovie.runs import select_runs
from tests.ensemble.helpers import fake_run


def test_select_runs_best_or_latest_per_model_without_ensembles():
    runs = [fake_run("a", "ease", 0.20, start=1), fake_run("b", "ease", 0.25, start=2), fake_run("c", "ease", None, 3),
            fake_run("d", "itemknn", None, 1), fake_run("e", "ensemble", 0.3, 1)]
    ids = lambda rs: [r.info.run_id for r in rs]  # noqa: E731
    assert ids(select_runs(runs, "best", "recall_at_10")) == ["b", "d"]
    assert ids(select_runs(runs, "latest", "recall_at_10")) == ["c", "d"]
    assert ids(select_runs(runs, "all", "recall_at_10", models=["ensemble", "ease"])) == ["e", "b", "a", "c"]
