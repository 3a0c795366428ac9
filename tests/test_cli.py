"""The command-line entry points as a user runs them (subprocesses; slow)."""
from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def run(script, *args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def runs(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_sweep_then_predict(tmp_path, small_dir):
    data = ["data=competition", f"data.dir={small_dir}"]
    p = run("train.py", "-m", *data, "model=popularity,itemknn", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    found = runs(tmp_path)
    assert sorted(r.data.tags["model"] for r in found) == ["itemknn", "popularity"]
    assert len({r.data.tags["sweep_id"] for r in found}) == 1
    assert sorted(r.data.tags["sweep_job"] for r in found) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in found)

    knn = next(r for r in found if r.data.tags["model"] == "itemknn")
    p = run("predict.py", f"run_id={knn.info.run_id}", "hydra.run.dir=pred", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    fresh = pd.read_csv(tmp_path / "pred" / "submission.csv")
    original = pd.read_csv(os.path.join(knn.data.tags["output_dir"], "submission.csv"))
    pd.testing.assert_frame_equal(fresh, original)


def test_user_errors_are_one_clear_line(tmp_path, small_dir):
    p = run("train.py", "data=competition", f"data.dir={small_dir}", "model=ease", "model.l2=-1", cwd=tmp_path)
    assert p.returncode == 2
    assert "error: config `model.l2`: must be > 0" in p.stderr and "Traceback" not in p.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train_ratings.csv").write_text("user,item,time\n1,2,3\n1,x,4\n")
    p = run("train.py", "data=competition", f"data.dir={bad}", cwd=tmp_path)
    assert p.returncode == 2 and "train_ratings.csv, line 3: column 'item' has 'x'" in p.stderr
    assert runs(tmp_path)[0].info.status == "FAILED"  # the data error happened inside a tracked run


def test_default_command_trains_ease_on_the_bundled_sample(tmp_path):
    p = run("train.py", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "model ease: 610 users, 9724 items" in p.stdout
    (r,) = runs(tmp_path)
    assert r.data.metrics["recall_at_10"] > 0.1
    sub = pd.read_csv(r.data.tags["output_dir"] + "/submission.csv")
    assert len(sub) == 6100
