"""Shared fixtures: small synthetic data written as a competition folder, and composed configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from recmovie.config import CONF_DIR
from recmovie.data.synthetic import generate_synthetic, write_competition_folder

# small but with real structure: the models must beat popularity on it
SMALL = dict(n_users=400, n_items=300, n_interactions=16_000, seed=3)


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models: a second thread only waits on a busy machine (CI shares its cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_dataset():
    return generate_synthetic(**SMALL)


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory, small_dataset) -> Path:
    folder = tmp_path_factory.mktemp("small") / "train"
    write_competition_folder(small_dataset, folder)
    return folder


@pytest.fixture(scope="session")
def small_prepared(small_dir):
    """The small competition folder prepared with the competition split (no cache, no validation)."""
    from recmovie.data.prepare import prepare_data

    cfg = OmegaConf.create({"data": {"format": "competition", "dir": str(small_dir)},
                            "split": {"name": "competition", "n_last": 2, "n_random": 8, "seed": 1},
                            "confidence": {"kinds": []}})
    return prepare_data(cfg.data, cfg.split, cfg.confidence, cache_dir=None)


def make_config(tmp_path: Path, overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    """Compose a config like the command line would, with every output under tmp_path. Training
    configs get tune=false unless the test asks for tuning: a model's grid would multiply its fits,
    and composed configs carry no command line to tell which values were set on purpose."""
    overrides = list(overrides)
    if config_name == "train" and not any(o.startswith("tune=") for o in overrides):
        overrides.append("tune=false")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.paths.cache_dir = str(tmp_path / "cache")
        cfg.tracking.uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    return cfg


@pytest.fixture
def small_config(tmp_path, small_dir):
    """make_config on the small competition folder: small_config(["model=itemknn", ...])."""
    def _make(overrides=()):
        return make_config(tmp_path, ["data=competition", f"data.dir={small_dir}", *overrides])
    return _make


REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
