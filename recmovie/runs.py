"""The read side of tracking: find finished runs, fetch their files, select among them.

`tracking.py` writes runs; this module only reads them, for `predict.py`, `ensemble.py`,
`resume=<run id>`, `candidates_from=<run id>` and the report.
"""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from recmovie.errors import ConfigError
from recmovie.tracking import _problem, _quiet_store, _sqlite_path, setup_mlflow

PER_MODEL = ("best", "latest", "all")
NOT_MEMBERS = ("ensemble", "report")  # run kinds a query skips unless asked for by name


def get_run(uri: str, run_id: str, key: str = "run_id", finished: bool = True):
    """The MLflow run `run_id`; a ConfigError naming `key` when it does not exist or (with
    `finished`) did not finish: a FAILED or KILLED run has no complete outputs."""
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():  # looking a run up must not create an empty store
        raise ConfigError(key, f"no MLflow run {run_id!r}: there is no store at {uri}")
    client = setup_mlflow(uri).MlflowClient(uri)
    try:
        with _quiet_store():
            run = client.get_run(str(run_id))
    except Exception as e:
        raise ConfigError(key, f"no MLflow run {run_id!r} in {uri} ({_problem(e)})") from None
    if finished and run.info.status != "FINISHED":
        error = run.data.tags.get("error")
        raise ConfigError(key, f"run {run_id} is {run.info.status}, not FINISHED" + (f" ({error[:200]})" if error else ""))
    return run


@contextlib.contextmanager
def run_file(uri: str, run: Any, artifact: str, key: str = "run_id", hint: str = "") -> Iterator[Path]:
    """A local path of a run's artifact while the block runs: the file itself when the artifact
    store is on this machine, else a copy in a temporary folder removed afterwards. A missing
    artifact is a ConfigError naming `key` (with `hint`: what to do about it)."""
    missing = f"run {run.info.run_id} ({model_of(run)}) has no {artifact}" + (f" ({hint})" if hint else "")
    parsed = urlparse(run.info.artifact_uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path)) / artifact
        if not path.is_file():
            raise ConfigError(key, missing)
        yield path
        return
    mlflow = setup_mlflow(uri)
    with tempfile.TemporaryDirectory(prefix="recmovie-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=artifact, dst_path=tmp)
        except Exception as e:
            raise ConfigError(key, f"{missing}: cannot fetch it ({_problem(e)})") from None
        yield Path(path)


def model_of(run) -> str:
    return run.data.tags.get("model", "?")


def search_experiment(client, experiment: str, filter_string: str = "", split: str | None = None,
                      key: str = "query") -> list:
    """Every FINISHED run of an experiment that matches an MLflow filter string (and split); `key`
    is the config section named in errors."""
    prefix = f"{key}." if key else ""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"{prefix}experiment", f"no MLflow experiment named {experiment!r}")
    conditions = ["attributes.status = 'FINISHED'"] + ([f"tags.split = '{split}'"] if split else [])
    flt = " and ".join(conditions + ([filter_string] if filter_string else []))
    runs, token = [], None
    while True:
        try:
            page = client.search_runs([exp.experiment_id], flt, max_results=1000, page_token=token)
        except Exception as e:  # MLflow's parser: "Invalid clause(s) in filter string ..."
            raise ConfigError(f"{prefix}filter", f"MLflow cannot search with {flt!r}: {e}") from None
        runs += list(page)
        token = page.token
        if not token:
            return runs


def select_runs(runs: list, per_model: str, metric: str, models=None, exclude=NOT_MEMBERS) -> list:
    """Keep runs of `models` (default: all but `exclude`), then one per model (`best` by `metric`,
    runs without it last, ties to the newest; or the `latest`) or `all`; best `metric` first."""
    if models:
        runs = [r for r in runs if model_of(r) in set(models)]
    else:
        runs = [r for r in runs if model_of(r) not in exclude]

    def by_metric(r):
        value = r.data.metrics.get(metric)
        return (value is not None, -np.inf if value is None else value, r.info.start_time)

    if per_model != "all":
        key = by_metric if per_model == "best" else (lambda r: r.info.start_time)
        chosen = {}
        for r in runs:
            m = model_of(r)
            if m not in chosen or key(r) > key(chosen[m]):
                chosen[m] = r
        runs = list(chosen.values())
    return sorted(runs, key=by_metric, reverse=True)
