"""Config composition of every group option, and wrong values that fail before any work."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from recmovie.config import CONF_DIR, check_run_config
from recmovie.errors import ConfigError
from recmovie.models.base import Recommender, build_model
from tests.conftest import make_config

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_composes_and_builds(tmp_path, model):
    cfg = make_config(tmp_path, [f"model={model}"])
    assert cfg.model.name == model
    m = build_model(OmegaConf.to_container(cfg.model, resolve=True))
    assert isinstance(m, Recommender)  # several YAMLs may share a class (ae, dae, multidae)


@pytest.mark.parametrize("group", ["data", "split", "confidence", "loss", "trainer"])
def test_every_option_of_each_group_composes(tmp_path, group):
    for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
        make_config(tmp_path, [f"{group}={option}"])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["eval.k=-1"], "eval.k"),
        (["eval.k=0"], "eval.k"),
        (["candidates.n=5"], "candidates.n"),
        (["eval.chunk_size=0"], "eval.chunk_size"),
        (["split.n_last=-2"], "split.n_last"),
        (["confidence.kinds=[tiem]"], "confidence.kinds"),
        (["confidence.time.floor=2"], "confidence.time.floor"),
        (["data=competition", "data.dir=/no/such/folder"], "data.dir"),
        (["data=synthetic", "data.n_users=1"], "data.n_users"),
    ],
)
def test_wrong_values_name_the_key(tmp_path, overrides, key):
    cfg = make_config(tmp_path, overrides)
    with pytest.raises(ConfigError) as e:
        check_run_config(cfg)
    assert e.value.key == key


def test_unknown_model_and_unknown_key_are_refused_by_composition(tmp_path):
    with pytest.raises(ConfigCompositionException):
        make_config(tmp_path, ["model=nosuchmodel"])
    with pytest.raises(ConfigCompositionException):
        make_config(tmp_path, ["model.lamda=3"])


def test_loss_on_a_model_without_one_is_refused(tmp_path):
    cfg = make_config(tmp_path, ["model=ease"])
    with pytest.raises(ConfigError, match="has no loss"):
        build_model(OmegaConf.to_container(cfg.model, resolve=True), loss="bpr")


def test_bad_config_fails_before_data_is_read(small_config, monkeypatch):
    from recmovie import pipeline

    monkeypatch.setattr(pipeline, "load_run_data", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(ConfigError):
        pipeline.train(small_config(["model=itemknn", "model.shrink=-1"]))
