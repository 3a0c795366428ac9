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
    # run hygiene: readable names, locations as tags (not params), the log and the environment
    assert sorted(r.info.run_name for r in found) == ["itemknn", "popularity"]
    client = mlflow.MlflowClient()
    for r in found:
        assert os.path.isdir(r.data.tags["output_dir"]) and not any(k.startswith("paths.") for k in r.data.params)
        names = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"train.log", "environment.txt", "val_candidates.csv", "candidates.csv"} <= names
        assert "val_recall_at_10" in r.data.metrics and "recall_at_10" in r.data.metrics

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


def test_a_gradient_sweep_shows_progress_names_runs_by_their_overrides_and_splits_val_from_test(tmp_path, small_dir):
    p = run("train.py", "-m", "data=competition", f"data.dir={small_dir}", "model=multivae", "model.max_epochs=3",
            "model.latent=16", "model.beta=0.1,0.2", "trainer.max_epochs=2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert out.count("epoch 2/2") == 2 and "val_recall_at_10" in out  # one line per epoch
    assert "stopped after epoch 2: max_epochs reached" in out
    assert "validation  all" in p.stdout and "test        all" in p.stdout
    found = runs(tmp_path)
    assert sorted(r.info.run_name for r in found) == [
        "multivae max_epochs=3 latent=16 beta=0.1 trainer.max_epochs=2",
        "multivae max_epochs=3 latent=16 beta=0.2 trainer.max_epochs=2"]
    for r in found:
        m = r.data.metrics
        assert m["epochs"] == 2 and m["val_recall_at_10"] != m["recall_at_10"]
        assert len(mlflow.MlflowClient().get_metric_history(r.info.run_id, "train_loss")) == 2


def test_a_reader_that_goes_away_does_not_fail_the_run(tmp_path, small_dir):
    # `python train.py | head -1`: the console's reader leaves after one line
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    p = subprocess.Popen([sys.executable, str(REPO / "train.py"), "data=competition", f"data.dir={small_dir}",
                          "model=popularity"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline()
    p.stdout.close()
    stderr = p.stderr.read()
    assert p.wait(timeout=600) == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "Logging error" not in stderr
    (r,) = runs(tmp_path)
    assert r.info.status == "FINISHED"


def test_trainer_keys_are_checked_by_name(tmp_path, small_dir):
    p = run("train.py", "data=competition", f"data.dir={small_dir}", "model=multidae", "+trainer.max_epoch=1",
            cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "error: config `trainer.max_epoch`: not an argument of Lightning's Trainer" in p.stderr
    assert not (tmp_path / "mlruns").exists() or not runs(tmp_path)  # refused before any run or work


@pytest.mark.parametrize("thread", [False, True])
def test_a_script_that_ends_well_runs_its_exit_handlers_and_flushes_before_leaving(tmp_path, thread):
    # run_script skips Python's teardown with os._exit: what the teardown would do that matters must
    # happen first; with a thread still running it leaves the normal way, after the thread
    code = f"""
import atexit, sys, threading, time
from pathlib import Path
from recmovie.cli import run_script
atexit.register(lambda: Path({str(tmp_path / 'handler')!r}).write_text('ran'))
def main():
    print('to stdout', end='')
    sys.stderr.write('to stderr')
    if {thread}:
        threading.Thread(target=lambda: (time.sleep(0.5), Path({str(tmp_path / 'thread')!r}).write_text('done'))).start()
run_script(main)
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout == "to stdout" and p.stderr == "to stderr", p.stderr
    assert (tmp_path / "handler").read_text() == "ran"
    assert (tmp_path / "thread").exists() == thread


def test_a_profiled_script_still_writes_its_profile(tmp_path):
    code = "from recmovie.cli import run_script\nrun_script(lambda: None)\n"
    (tmp_path / "script.py").write_text(code)
    p = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(tmp_path / "profile"), str(tmp_path / "script.py")],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "profile").stat().st_size > 0
