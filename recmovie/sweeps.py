"""Hydra callback for multiruns (conf/hydra/default.yaml registers it)."""
from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from recmovie.tracking import resolve_tracking_uri, setup_mlflow


class OpenTrackingStore(Callback):
    """Create the MLflow store once, in the sweep's own process, before any job starts: jobs run in
    parallel (hydra/launcher=parallel) that each find an empty sqlite store race to create its
    tables, and all but one fail."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.tracking.enabled:
            uri = resolve_tracking_uri(str(config.tracking.uri))
            setup_mlflow(uri).MlflowClient(uri).search_experiments(max_results=1)
