"""MLflow tracking: the run opens before the work, a store that cannot be opened fails at once, parallel
jobs share a fresh sqlite store, run names and the environment, and unique Hydra run folders."""
from __future__ import annotations

import importlib
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf

from recmovie.errors import TrackingError
from recmovie.tracking import MAX_RUN_NAME, check_sqlite_store, run_name, start_run

REPO = Path(__file__).resolve().parent.parent


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"


def python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# ------------------------------------------------------------------ run names

@pytest.mark.parametrize("model, overrides, expected", [
    ("recvae", ["model=recvae", "model.beta=0.1", "model.dropout=0.3"], "recvae beta=0.1 dropout=0.3"),
    ("ease", [], "ease"),
    ("als", ["model=als", "confidence=genre", "data.dir=/x/y"], "als confidence=genre"),
    ("ease", ["+model.extra=1", "++seed=3", "split=none"], "ease extra=1 seed=3 split=none"),
    ("ease", ["paths.log_dir=/o", "tracking.uri=sqlite:///x.db", "hydra.launcher.n_jobs=4",
              "hydra/launcher=parallel", "data.dir=/d", "data=competition"], "ease"),  # data= names the experiment
])
def test_run_name(model, overrides, expected):
    assert run_name(model, overrides) == expected


def test_run_name_is_capped():
    name = run_name("ease", [f"model.p{i}={'x' * 20}" for i in range(30)])
    assert len(name) == MAX_RUN_NAME and name.startswith("ease p0=")


# ------------------------------------------------------------------ opening the run

def test_run_opens_before_the_work_and_logs_the_environment(tmp_path):
    uri = sqlite_uri(tmp_path)
    before = time.time()
    with start_run(uri, "exp", "ease l2=500", {"model": "ease"}) as run:
        body_start = time.time()
        assert run.run_id is not None  # open already: the id is there without waiting
        time.sleep(0.3)
        run.log_metrics({"recall_at_10": 0.5})
    r = mlflow.MlflowClient(uri).get_run(run.run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "ease l2=500"
    assert before * 1000 - 1 <= r.info.start_time <= body_start * 1000 + 1
    assert r.info.end_time - r.info.start_time >= 300  # the duration covers the whole block
    assert r.data.metrics["recall_at_10"] == 0.5
    tags = r.data.tags
    assert tags["model"] == "ease" and tags["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}." \
        f"{sys.version_info.micro}"
    import importlib.metadata as md

    assert tags["torch_version"] == md.version("torch")
    assert tags["mlflow_version"] == md.version("mlflow")
    assert tags["lightning_version"] == md.version("pytorch-lightning")
    assert "git_commit" in tags and "git_dirty" in tags
    env = Path(mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path="environment.txt",
                                                   dst_path=str(tmp_path / "dl"), tracking_uri=uri)).read_text()
    assert env.startswith(f"python {sys.version.splitlines()[0]}\n")
    packages = [line for line in env.splitlines() if "==" in line]
    assert f"mlflow=={md.version('mlflow')}" in packages and f"torch=={md.version('torch')}" in packages
    assert packages == sorted(packages, key=lambda line: line.split("==")[0].lower())


def test_failed_run_is_marked_with_its_traceback(tmp_path):
    uri = sqlite_uri(tmp_path)
    with pytest.raises(ValueError, match="boom"):
        with start_run(uri, "exp", "ease", {}) as run:
            raise ValueError("boom")
    r = mlflow.MlflowClient(uri).get_run(run.run_id)
    assert r.info.status == "FAILED" and r.data.tags["error"] == "ValueError: boom"
    tb = Path(mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path="traceback.txt",
                                                  dst_path=str(tmp_path / "dl"), tracking_uri=uri)).read_text()
    assert "ValueError: boom" in tb


def test_disabled_tracking_is_a_no_op(tmp_path):
    with start_run(sqlite_uri(tmp_path), "exp", "ease", {}, enabled=False) as run:
        run.log_metrics({"x": 1.0})
        assert run.run_id is None and run.local_artifact_dir() is None
    assert not (tmp_path / "mlruns").exists()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broken_stores(tmp_path: Path) -> list[str]:
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "mlflow.db").write_bytes(b"this is not a database" * 100)
    return [
        f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}",  # a file where the folder should be
        f"sqlite:///{tmp_path / 'garbage' / 'mlflow.db'}",  # not a sqlite database
        f"http://127.0.0.1:{closed_port()}",  # nobody answers (MLflow itself retries for minutes)
    ]


@pytest.mark.parametrize("which", range(3))
def test_a_store_that_cannot_be_opened_fails_before_any_work(tmp_path, which):
    uri = broken_stores(tmp_path)[which]
    worked = False
    t0 = time.perf_counter()
    with pytest.raises(TrackingError) as e:
        with start_run(uri, "exp", "ease", {}):
            worked = True
    assert not worked
    assert time.perf_counter() - t0 < 30
    message = str(e.value)
    assert uri in message and "\n" not in message and len(message) < 600
    assert message.startswith(f"cannot open the MLflow store {uri}: ")


@pytest.mark.parametrize("which", range(2))
def test_an_overlapped_run_checks_a_sqlite_store_before_the_block_begins(tmp_path, which):
    # the pipeline starts a closed-form fit before MLflow has opened a checked store: the check
    # must catch what opening would
    uri = broken_stores(tmp_path)[which]
    worked = False
    with pytest.raises(TrackingError, match="cannot open the MLflow store"):
        with start_run(uri, "exp", "ease", {}, overlap=True):
            worked = True
    assert not worked


def test_the_check_of_a_read_only_sqlite_store_fails_and_a_good_one_is_left_as_it_was(tmp_path):
    import sqlite3

    uri = sqlite_uri(tmp_path)
    with start_run(uri, "exp", "ease", {}, overlap=True) as run:
        assert run.store_checked
    db = tmp_path / "mlruns" / "mlflow.db"
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert "runs" in tables and not any("recmovie" in t for t in tables)  # the trial write was rolled back
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"
    with pytest.raises(TrackingError, match="attempt to write a readonly database"):
        check_sqlite_store(read_only)
    assert check_sqlite_store(f"http://127.0.0.1:{closed_port()}") is False  # not checked: opened first


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_a_read_only_folder_fails_before_any_work(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(TrackingError, match="cannot open the MLflow store"):
            with start_run(f"sqlite:///{folder / 'mlflow.db'}", "exp", "ease", {}):
                pass
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------ parallel jobs on a fresh store

def test_two_processes_create_a_fresh_sqlite_store_at_once(tmp_path):
    uri = sqlite_uri(tmp_path)
    go = tmp_path / "go"
    code = f"""
        import sys, time
        from pathlib import Path
        import mlflow  # imported before the start line, so that both open the store at the same moment
        from recmovie.tracking import start_run
        Path(sys.argv[1]).touch()
        while not Path({str(go)!r}).exists():
            time.sleep(0.005)
        with start_run({uri!r}, "exp", sys.argv[1], {{}}) as run:
            print(run.run_id)
    """
    jobs = [python(code, str(tmp_path / f"ready{i}")) for i in range(2)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    outputs = [job.communicate(timeout=120) for job in jobs]
    for job, (out, err) in zip(jobs, outputs):
        assert job.returncode == 0, err
    run_ids = {out.split()[-1] for out, _ in outputs}
    assert len(run_ids) == 2
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("exp")
    runs = client.search_runs([exp.experiment_id])
    assert {r.info.run_id for r in runs} == run_ids
    assert all(r.info.status == "FINISHED" for r in runs)


# ------------------------------------------------------------------ unique run folders

TOKEN_CODE = """
    from omegaconf import OmegaConf
    import recmovie.config
    print(OmegaConf.create({"a": "${run_token:}"}).a)
"""


def test_run_token_is_stable_in_a_config_and_differs_between_processes():
    importlib.import_module("recmovie.config")  # registers the run_token resolver

    cfg = OmegaConf.create({"a": "${run_token:}", "b": "x_${run_token:}"})
    assert re.fullmatch(r"[0-9a-f]{5,}", cfg.a)
    assert cfg.b == f"x_{cfg.a}" and cfg.a == cfg.a  # cached: every reading gives the same token
    jobs = [python(TOKEN_CODE) for _ in range(2)]
    tokens = []
    for job in jobs:
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
        tokens.append(out.strip())
    assert len({cfg.a, *tokens}) == 3


def test_hydra_run_and_sweep_folders_end_with_the_token(tmp_path):
    from hydra import compose, initialize_config_dir

    from recmovie.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("report", overrides=["experiment=x"], return_hydra_config=True)
    run_dir, sweep_dir = Path(cfg.hydra.run.dir).name, Path(cfg.hydra.sweep.dir).name
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_report_[0-9a-f]{5,}", run_dir)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{5,}", sweep_dir)
    assert run_dir.rsplit("_", 1)[1] == sweep_dir.rsplit("_", 1)[1]  # one token per config
    assert Path(cfg.hydra.run.dir).name == run_dir  # and per reading
