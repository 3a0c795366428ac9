"""The member runs the ensemble tests share, trained once per session into one tracking store."""
from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pytest
from omegaconf import open_dict

from recmovie.pipeline import train
from tests.conftest import make_config


@pytest.fixture(scope="session")
def members(tmp_path_factory, small_dir):
    """ease, itemknn, popularity (split=competition), genre_rule and popularity (split=none) trained on
    the small data into one tracking store, shared by every ensemble test (a new sqlite store costs seconds)."""
    root = tmp_path_factory.mktemp("members")
    ids = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for key, overrides in [("ease", ["model.l2=50"]), ("itemknn", []), ("popularity", []),
                               ("genre_rule", ["split=none"]), ("popularity-none", ["split=none"])]:
            model = key.split("-")[0]
            cfg = make_config(root, ["data=competition", f"data.dir={small_dir}", f"model={model}", *overrides])
            with open_dict(cfg):
                cfg.paths.output_dir = str(root / f"out-{key}")
            train(cfg)
            mlflow.set_tracking_uri(cfg.tracking.uri)
            ids[key] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                           order_by=["attributes.start_time DESC"])[0].info.run_id
    return SimpleNamespace(cfg=cfg, ids=ids, root=root, experiment=str(cfg.data.name))
