"""Scale-out, end to end (slow): a sweep through Hydra's submitit launcher, and a shared MLflow
tracking server on a throwaway PostgreSQL that train.py, predict.py and ensemble.py talk to."""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from recmovie.config import CONF_DIR
from tests.conftest import REPO

CLUSTER_EXTRA = "the cluster extra is not installed (pip install -c constraints.txt -e '.[cluster]')"


def run(script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (env or {})
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ submitit
@pytest.mark.parametrize("name, launcher", [("local", "LocalLauncher"), ("slurm", "SlurmLauncher")])
def test_the_submitit_launcher_configs_compose(name, launcher):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason=CLUSTER_EXTRA)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(launcher) and cfg.hydra.launcher.timeout_min == 240


@pytest.mark.slow
def test_a_sweep_through_submitit_local_is_one_mlflow_run_per_job_in_one_sweep(tmp_path, small_dir):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason=CLUSTER_EXTRA)
    p = run("train.py", "-m", "hydra/launcher=local", "data=competition", f"data.dir={small_dir}",
            "model=popularity", "model.half_life_days=null,30", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    found = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert sorted(r.data.params["model.half_life_days"] for r in found) == ["30", "None"]
    assert all(r.info.status == "FINISHED" and "recall_at_10" in r.data.metrics for r in found)
    assert len({r.data.tags["sweep_id"] for r in found}) == 1
    assert sorted(r.data.tags["sweep_job"] for r in found) == ["0", "1"]
    # the jobs ran as submitit jobs (not in the launching process): their results are in its folder
    sweep_dir = Path(found[0].data.tags["sweep_dir"])
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2


# ------------------------------------------------------------------ PostgreSQL + mlflow server
def _postgres_bin() -> Path | None:
    """Debian's PostgreSQL binaries (the newest version installed), or initdb on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _unprivileged_user() -> str | None:
    """Who runs PostgreSQL: the current user, or for root (initdb refuses root) `postgres` or `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    pytest.skip("PostgreSQL cannot be started: running as root and there is no `postgres` or `nobody` user")


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster in a temp folder, on 127.0.0.1 and a free port only, with a
    password; yields the SQLAlchemy URI of its `mlflow` database; stopped and deleted afterwards."""
    pytest.importorskip("psycopg", reason=CLUSTER_EXTRA)  # the driver of postgresql:// in SQLAlchemy 2.1
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL cannot be started: initdb not found (Debian: apt-get install postgresql)")
    user = _unprivileged_user()
    # in /tmp, not pytest's tmp_path: the postgres user cannot enter root's 0700 pytest folders
    root = Path(tempfile.mkdtemp(prefix="recmovie-pg-"))
    as_user: dict = {"cwd": root}
    if user:  # root's groups dropped too: the cluster's files belong to that user alone
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
    password, port = "recmovie-test", free_port()
    (root / "pw").write_text(password + "\n")
    data = root / "data"
    started = False
    try:
        def pg(tool: str, *args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(bin_dir / tool), *args], capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "PGPASSWORD": password}, **as_user)

        p = pg("initdb", "-D", str(data), "-U", "mlflow", "--auth=scram-sha-256", f"--pwfile={root / 'pw'}",
               "-E", "UTF8", "--no-sync")
        if p.returncode != 0:
            pytest.skip(f"PostgreSQL cannot be started: initdb failed: {(p.stderr or p.stdout).strip()[-500:]}")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
        p = pg("pg_ctl", "-D", str(data), "-l", str(root / "postgres.log"), "-o", options, "-w", "-t", "60", "start")
        started = p.returncode == 0
        if not started:
            log = (root / "postgres.log").read_text() if (root / "postgres.log").exists() else p.stderr
            pytest.skip(f"PostgreSQL cannot be started: pg_ctl start failed: {log.strip()[-500:]}")
        p = pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow")
        assert p.returncode == 0, p.stderr
        yield f"postgresql://mlflow:{password}@127.0.0.1:{port}/mlflow"
    finally:
        if started:
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tracking_server(postgres, tmp_path) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on the PostgreSQL store, serving artifacts from a folder of its own; yields
    (its http URI, that folder); stopped (its whole process group) afterwards."""
    artifacts = tmp_path / "server-artifacts"
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres,
         "--artifacts-destination", str(artifacts), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a fresh database: MLflow creates its tables first
        while True:
            assert server.poll() is None, "mlflow server exited:\n" + (tmp_path / "mlflow-server.log").read_text()[-3000:]
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            assert time.monotonic() < deadline, "mlflow server did not answer in 180 s"
            time.sleep(1)
        yield uri, artifacts
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.slow
def test_sweep_predict_and_ensemble_against_a_tracking_server_on_postgresql(tracking_server, tmp_path):
    uri, artifacts = tracking_server
    # a closed-form and a gradient model (its epoch curves go through Lightning's MLflow logger)
    p = run("train.py", "-m", "model=popularity,multidae", "trainer.max_epochs=1", f"tracking.uri={uri}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.data.tags["model"] for r in found) == ["multidae", "popularity"]
    assert all(r.info.status == "FINISHED" for r in found) and len({r.data.tags["sweep_id"] for r in found}) == 1
    dae = next(r for r in found if r.data.tags["model"] == "multidae")
    assert [m.step for m in client.get_metric_history(dae.info.run_id, "train_loss")] == [1]
    # served artifacts: the runs' files went through the server into its folder, none to a local store
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in found)
    for r in found:
        names = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"submission.csv", "candidates.csv", "val_candidates.csv", "model"} <= names
        assert list(artifacts.rglob(f"{r.info.run_id}/artifacts/model/model.pt"))
    assert not (tmp_path / "mlruns").exists()

    p = run("predict.py", f"run_id={dae.info.run_id}", "hydra.run.dir=pred", cwd=tmp_path,
            env={"MLFLOW_TRACKING_URI": uri})  # the environment variable instead of tracking.uri
    assert p.returncode == 0, p.stderr[-3000:]
    original = pd.read_csv(Path(dae.data.tags["output_dir"]) / "submission.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "pred" / "submission.csv"), original)

    ids = ",".join(r.info.run_id for r in found)
    p = run("ensemble.py", f"runs=[{ids}]", "method=rrf", f"tracking.uri={uri}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    (ens,) = client.search_runs([found[0].info.experiment_id], "tags.model = 'ensemble'")
    assert ens.info.status == "FINISHED" and "recall_at_10" in ens.data.metrics
    assert "submission.csv" in {a.path for a in client.list_artifacts(ens.info.run_id)}
    assert not (tmp_path / "mlruns").exists()
