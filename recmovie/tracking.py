"""MLflow tracking: one run per training job with everything needed to reproduce and compare it.

Logged per run: the git commit (+ the diff when the tree is dirty), the resolved config as params
and as config.yaml, the Hydra overrides, a fingerprint of the input data, the sweep a job belongs
to, the Python environment (versions as tags, every installed package in environment.txt), metrics,
and artifacts. A crash marks the run FAILED with its traceback attached.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import sqlite3
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from recmovie.errors import TrackingError
from recmovie.provenance import environment_tags, environment_text, git_state, process_gone, process_tags

log = logging.getLogger(__name__)


def resolve_tracking_uri(configured: str) -> str:
    """MLFLOW_TRACKING_URI wins over the config, as MLflow users expect."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite store (`sqlite:///path`, or SQLite's URI form
    `sqlite:///file:path?mode=ro&uri=true`), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):]
    if path.startswith("file:"):
        path = path[len("file:"):].split("?", 1)[0]
    return Path(path)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on a file beside a sqlite store (nothing for other stores): parallel jobs
    that each find an empty database all create its tables, and all but one fail."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f"{db.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed, also if the process dies
        yield


def setup_mlflow(uri: str):
    """Point MLflow at `uri` and return the module. A sqlite store (and its folder) is created
    here, under a lock, so that parallel jobs can share a fresh one."""
    import mlflow

    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # MLflow also writes the URI into MLFLOW_TRACKING_URI (for subprocesses), which
    # resolve_tracking_uri would then prefer over the config of every later run in this process
    # (sweep jobs, a predict after a train, tests): the variable stays the user's
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_uri
    if _sqlite_path(uri) is not None:
        with _store_lock(uri):
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
    return mlflow


def check_sqlite_store(uri: str) -> bool:
    """Whether a sqlite store can be written, found in milliseconds without MLflow (whose import
    and set-up take seconds): its folder is made, the database opened, and a write tried inside a
    transaction that is rolled back (SQLite takes the write lock of a read-only database). Raises
    TrackingError as opening the store would; False (nothing checked) for any other store."""
    db = _sqlite_path(uri)
    if db is None:
        return False
    target = uri[len("sqlite:///"):]
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(target, uri=target.startswith("file:"), timeout=60, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("CREATE TABLE recmovie_write_check (x)")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except (OSError, sqlite3.Error) as e:
        raise TrackingError(uri, _problem(e)) from e
    return True


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


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.l2": "500", ...} (lists kept as their string form)."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = str(d)
    return out


# overrides that say where things are, not how the model was trained
_LOCATION_KEYS = ("paths", "tracking", "hydra", "data.dir")
MAX_RUN_NAME = 250


def run_name(model_name: str, overrides: list[str]) -> str:
    """A run name that tells sweep jobs apart: the model's name and the Hydra task overrides, e.g.
    "recvae beta=0.1 dropout=0.3" for `model=recvae model.beta=0.1 model.dropout=0.3`."""
    parts = [model_name]
    for override in overrides:
        override = override.lstrip("+")
        key = override.split("=", 1)[0]
        # `data=...` names the experiment the run is in already
        if key in ("model", "data") or any(key == k or key.startswith((f"{k}.", f"{k}/")) for k in _LOCATION_KEYS):
            continue
        parts.append(override.removeprefix("model."))
    name = " ".join(parts)
    return name if len(name) <= MAX_RUN_NAME else name[: MAX_RUN_NAME - 3] + "..."


class Run:
    """The MLflow run of a job, opened before the job starts. Every logging call runs in order on
    one background thread, so it overlaps with the job's own work; `flush` waits for them. Every
    call is a no-op when tracking is disabled."""

    def __init__(self, executor: ThreadPoolExecutor | None = None, opening: Future | None = None,
                 store_checked: bool = False):
        self._executor = executor
        self._opening = opening  # -> (client, run_id); raises TrackingError if the store failed
        self._pending: list[Future] = []
        # a sqlite store found writable before the run began (`check_sqlite_store`): work may start
        # while MLflow is still being imported and set up
        self.store_checked = store_checked

    @property
    def enabled(self) -> bool:
        return self._opening is not None

    def opened(self) -> None:
        """Wait until the run exists; raise TrackingError if the store could not be opened."""
        if self.enabled:
            self._opening.result()

    @property
    def _client(self):
        return self._opening.result()[0]

    @property
    def _run_id(self) -> str:
        return self._opening.result()[1]

    @property
    def run_id(self) -> str | None:
        return self._run_id if self.enabled else None

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
        self._submit(lambda: self._client.log_artifact(self._run_id, str(path), artifact_path=folder))

    def log_text(self, text: str, name: str) -> None:
        self._submit(lambda: self._client.log_text(self._run_id, text, name))

    def local_artifact_dir(self) -> Path | None:
        """The run's artifact folder when the store is on this machine (files can be written there
        directly instead of being copied), else None."""
        if not self.enabled:
            return None
        from urllib.parse import unquote

        parsed = urlparse(self._client.get_run(self._run_id).info.artifact_uri)
        if parsed.scheme in ("", "file"):
            return Path(unquote(parsed.path))
        return None

    # -- executed on the background thread
    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for s in range(0, len(items), 100):
            self._client.log_batch(self._run_id, params=items[s : s + 100])

    def _log_metrics(self, metrics: dict[str, float], step: int | None, timestamp: int) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, v, timestamp, step or 0) for k, v in metrics.items()]
        for s in range(0, len(items), 500):
            self._client.log_batch(self._run_id, metrics=items[s : s + 500])

    def _set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self._run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def _log_git_state(self) -> None:
        git = git_state()
        self._set_tags({"mlflow.source.git.commit": git["commit"], "git_commit": git["commit"],
                        "git_branch": git["branch"], "git_dirty": git["dirty"]})
        if git["diff"]:
            self._client.log_text(self._run_id, git["diff"], "git_diff.patch")


def _check_reachable(uri: str) -> None:
    """Fail at once on a tracking server nobody answers at: MLflow retries for minutes."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        socket.create_connection((parsed.hostname, port), timeout=10).close()
    except (OSError, ValueError) as e:
        raise TrackingError(uri, f"cannot connect to {parsed.netloc} ({e})") from None


def _problem(e: BaseException) -> str:
    """One line on why the store failed: the root cause (the database driver's own error, not
    SQLAlchemy's or MLflow's wrapping of it), whose first line leaves out the SQL."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror}: {e.filename}"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


@contextlib.contextmanager
def _quiet_store() -> Iterator[None]:
    """MLflow logs a failing database call with its whole traceback before raising; the caller
    reports it in one line (TrackingError)."""
    store_log = logging.getLogger("mlflow.store.db.utils")
    level = store_log.level
    store_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        store_log.setLevel(level)


def mark_stale_runs(client, own_run_id: str | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose process is gone (kill -9, a crash of the
    machine, a closed terminal): MLflow would show them running forever. Returns their ids."""
    host = socket.gethostname().replace("'", "")
    exps = [e.experiment_id for e in client.search_experiments()]
    if not exps:
        return []
    stale = [r for r in client.search_runs(exps, f"attributes.status = 'RUNNING' and tags.host = '{host}'",
                                           max_results=1000)
             if r.info.run_id != own_run_id and process_gone(r.data.tags)]
    for r in stale:
        client.set_tag(r.info.run_id, "error", f"process {r.data.tags['pid']} on {r.data.tags['host']} ended "
                       f"without closing the run (found by run {own_run_id})")
        client.set_terminated(r.info.run_id, status="KILLED")
        log.warning("MLflow run %s was RUNNING but its process is gone: marked KILLED", r.info.run_id)
    return [r.info.run_id for r in stale]


def _open_run(uri: str, experiment: str, name: str, tags: dict[str, Any], start_ms: int, resume: str | None = None):
    """Create the run (and the store and experiment if new), or reopen run `resume`; a
    TrackingError if it cannot."""
    _check_reachable(uri)
    tags = {k: str(v) for k, v in {**environment_tags(), **tags, **process_tags()}.items()}
    try:
        with _quiet_store():
            mlflow = setup_mlflow(uri)
            client = mlflow.MlflowClient(uri)
            if resume:
                from mlflow.entities import RunTag

                client.update_run(resume, status="RUNNING")
                client.log_batch(resume, tags=[RunTag(k, v) for k, v in tags.items()])
                with contextlib.suppress(Exception):  # the interruption's error is over
                    client.delete_tag(resume, "error")
                run_id = resume
            else:
                with _store_lock(uri):  # parallel jobs of a new sweep create its experiment together
                    exp_id = get_experiment_id(client, experiment, uri)
                run_id = client.create_run(exp_id, start_time=start_ms, run_name=name, tags=tags).info.run_id
    except Exception as e:
        raise TrackingError(uri, _problem(e)) from e
    try:  # housekeeping: a failure here must not stop the run
        mark_stale_runs(client, run_id)
    except Exception as e:
        log.warning("could not look for stale MLflow runs: %s", _problem(e))
    return client, run_id


@contextlib.contextmanager
def start_run(
    uri: str, experiment: str, run_name: str, tags: dict[str, Any], enabled: bool = True, overlap: bool = False,
    resume: str | None = None,
) -> Iterator[Run]:
    """An MLflow run around a job: FINISHED when the block ends, FAILED (+ traceback.txt) if it raises.
    Its start time is the call's. By default the run is open before the block starts, so a store
    that cannot be opened raises TrackingError before any work is done. With `overlap`, opening
    (importing MLflow, opening the store: 2-3 s) runs on the background thread while the block
    begins; a sqlite store is checked in milliseconds first (`run.store_checked`), so the block may
    begin costly work too (else `run.opened()` comes before it: the pipeline's fit); either way the
    block calls `run.opened()` before its first write, which raises TrackingError if opening failed.
    `resume`: the id of an existing run to continue (it is RUNNING again until the block ends).
    Ctrl-C (KeyboardInterrupt) marks the run KILLED; every RUNNING run whose process is gone is
    marked KILLED when the next run opens."""
    if not enabled:
        yield Run()
        return
    start_ms = int(time.time() * 1000)
    checked = overlap and check_sqlite_store(uri)
    executor = ThreadPoolExecutor(1, thread_name_prefix="mlflow")
    run = Run(executor, executor.submit(_open_run, uri, experiment, run_name, tags, start_ms, resume), checked)
    try:
        if not overlap:
            run.opened()
        # queued first, so they overlap with the job's start: git runs subprocesses, the package list is long
        run._submit(run._log_git_state)
        run._submit(lambda: run._client.log_text(run._run_id, environment_text(), "environment.txt"))
        yield run
        run.flush()
    except BaseException as e:
        try:
            client, run_id = run._opening.result()
        except Exception as open_error:  # no run to mark: the store itself failed
            if e is not open_error:
                log.warning("could not record the failure in MLflow: %s", open_error)
            raise e from None
        with contextlib.suppress(Exception):
            run.flush()
        with contextlib.suppress(Exception):
            client.log_text(run_id, "".join(traceback.format_exception(type(e), e, e.__traceback__)), "traceback.txt")
            run._set_tags({"error": f"{type(e).__name__}: {e}"})
        try:
            client.set_terminated(run_id, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        except Exception as store_error:  # report the job's own error, not the store's
            log.warning("could not mark MLflow run %s as failed: %s", run_id, store_error)
        raise
    else:
        run._client.set_terminated(run._run_id, status="FINISHED")
    finally:
        executor.shutdown(wait=True)
