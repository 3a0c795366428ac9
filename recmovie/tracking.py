"""MLflow tracking: one run per training job with everything needed to reproduce and compare it.

Logged per run: the git commit (+ the diff when the tree is dirty), the resolved config as params
and as config.yaml, the Hydra overrides, a fingerprint of the input data, the sweep a job belongs
to, metrics, and artifacts. A crash marks the run FAILED with its traceback attached.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).resolve().parent.parent


def resolve_tracking_uri(configured: str) -> str:
    """MLFLOW_TRACKING_URI wins over the config, as MLflow users expect."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def setup_mlflow(uri: str):
    """Point MLflow at `uri` (creating the folder of a sqlite store) and return the module."""
    import mlflow

    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return mlflow


def get_experiment_id(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    db = _sqlite_path(uri)
    # artifacts beside the database, so that one folder (mlruns/) holds the whole store
    location = (db.resolve().parent / "artifacts").as_uri() if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a parallel sweep job
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_state(repo: Path = SOURCE_DIR) -> dict[str, str]:
    """Commit, branch and dirty flag of the code's git checkout, and the diff when dirty."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "branch": "", "dirty": "unknown", "diff": ""}
    status = git("status", "--porcelain", "--untracked-files=normal")
    diff = ""
    if status.strip():
        diff = git("diff", "HEAD", "--binary")
        untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
        if untracked:
            diff += "\n# untracked files (not in the diff):\n" + "\n".join(f"#   {u}" for u in untracked) + "\n"
    branch = git("rev-parse", "--abbrev-ref", "HEAD").strip()
    return {"commit": commit, "branch": branch, "dirty": str(bool(status.strip())).lower(), "diff": diff}


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.l2": "500", ...} (lists kept as their string form)."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = str(d)
    return out


class Run:
    """The MLflow run of a job. Opening it (importing MLflow, opening the store) and every logging
    call run in order on one background thread, so they overlap with the job's own work; `run_id`
    and `local_artifact_dir` wait for the opening. Every call is a no-op when tracking is disabled."""

    def __init__(self, executor: ThreadPoolExecutor | None = None, opened: Future | None = None):
        self._executor = executor
        self._opened = opened
        self._pending: list[Future] = []

    @property
    def enabled(self) -> bool:
        return self._opened is not None

    @property
    def run_id(self) -> str | None:
        return self._opened.result()[1] if self.enabled else None

    def _submit(self, fn, *args) -> None:
        if self.enabled:
            self._pending.append(self._executor.submit(fn, *args))

    def flush(self) -> None:
        """Wait for every queued call; raise the first one's error."""
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def log_params(self, params: dict[str, Any]) -> None:
        self._submit(self._log_params, dict(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if metrics:
            self._submit(self._log_metrics, {k: float(v) for k, v in metrics.items()}, step, int(time.time() * 1000))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if tags:
            self._submit(self._set_tags, dict(tags))

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._submit(lambda: self._opened.result()[0].log_artifact(self.run_id, str(path), artifact_path=folder))

    def log_text(self, text: str, name: str) -> None:
        self._submit(lambda: self._opened.result()[0].log_text(self.run_id, text, name))

    def local_artifact_dir(self) -> Path | None:
        """The run's artifact folder when the store is on this machine (files can be written there
        directly instead of being copied), else None."""
        if not self.enabled:
            return None
        from urllib.parse import unquote, urlparse

        client, run_id = self._opened.result()
        parsed = urlparse(client.get_run(run_id).info.artifact_uri)
        if parsed.scheme in ("", "file"):
            return Path(unquote(parsed.path))
        return None

    # -- executed on the background thread, after the opening
    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        client, run_id = self._opened.result()
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for s in range(0, len(items), 100):
            client.log_batch(run_id, params=items[s : s + 100])

    def _log_metrics(self, metrics: dict[str, float], step: int | None, timestamp: int) -> None:
        from mlflow.entities import Metric

        client, run_id = self._opened.result()
        items = [Metric(k, v, timestamp, step or 0) for k, v in metrics.items()]
        for s in range(0, len(items), 500):
            client.log_batch(run_id, metrics=items[s : s + 500])

    def _set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        client, run_id = self._opened.result()
        client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def _open_run(uri: str, experiment: str, run_name: str, tags: dict[str, Any]):
    mlflow = setup_mlflow(uri)
    client = mlflow.MlflowClient(uri)
    exp_id = get_experiment_id(client, experiment, uri)
    git = git_state()
    all_tags = {
        "mlflow.source.git.commit": git["commit"],
        "git_commit": git["commit"],
        "git_branch": git["branch"],
        "git_dirty": git["dirty"],
        **tags,
    }
    run = client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()})
    if git["diff"]:
        client.log_text(run.info.run_id, git["diff"], "git_diff.patch")
    return client, run.info.run_id


@contextlib.contextmanager
def start_run(
    uri: str, experiment: str, run_name: str, tags: dict[str, Any], enabled: bool = True
) -> Iterator[Run]:
    """An MLflow run around a job: FINISHED when the block ends, FAILED (+ traceback.txt) if it raises."""
    if not enabled:
        yield Run()
        return
    executor = ThreadPoolExecutor(1, thread_name_prefix="mlflow")
    run = Run(executor, executor.submit(_open_run, uri, experiment, run_name, tags))
    try:
        yield run
        run.flush()
    except BaseException as e:
        try:
            client = run._opened.result()[0]
        except Exception as open_error:  # the store itself is broken: report the job's own error
            log.warning("could not record the failure in MLflow: %s", open_error)
            raise e from None
        with contextlib.suppress(Exception):
            run.flush()
        with contextlib.suppress(Exception):
            client.log_text(run.run_id, "".join(traceback.format_exception(type(e), e, e.__traceback__)), "traceback.txt")
            run._set_tags({"error": f"{type(e).__name__}: {e}"})
        client.set_terminated(run.run_id, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    else:
        run._opened.result()[0].set_terminated(run.run_id, status="FINISHED")
    finally:
        executor.shutdown(wait=True)


def download_run_file(uri: str, run_id: str, artifact: str, dst: str | Path | None = None) -> Path:
    """Local path of a run's artifact, copied into `dst` (default: a new temporary folder)."""
    mlflow = setup_mlflow(uri)
    try:
        mlflow.get_run(run_id)
    except Exception as e:
        raise LookupError(f"MLflow run {run_id!r} not found in {uri}: {e}") from None
    dst = str(dst) if dst is not None else tempfile.mkdtemp(prefix="recmovie-")
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=dst))
