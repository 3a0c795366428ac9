"""One contract, every model: each conf/model/*.yaml builds, fits on tiny data, scores the
catalogue and a candidate set alike, ranks the same for any chunking, and its checkpoint alone
rebuilds it to the same submission."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recmovie.config import CONF_DIR
from recmovie.data.prepare import prepare_data
from recmovie.data.synthetic import generate_synthetic, write_competition_folder
from recmovie.evaluation.ranking import rank
from recmovie.errors import ConfigError
from recmovie.models.base import Recommender, build_model, load_checkpoint, model_from_yaml, plain, save_checkpoint
from recmovie.schema import Schema
from tests.conftest import make_config

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
TINY = dict(n_users=120, n_items=80, n_interactions=3000, seed=5)
# a couple of short epochs: this checks the contract, not quality (test_models and friends do that)
SHORT = {"max_epochs": 2, "batch_size": 32}
SHORT_PRETRAINING = {"pretrain_epochs": 2}  # S3-Rec: its pre-training shortened too


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "train"
    write_competition_folder(generate_synthetic(**TINY), folder)
    cfg = make_config(tmp_path_factory.mktemp("tiny_cfg"), ["data=competition", f"data.dir={folder}",
                                                            "tracking.enabled=false"])
    data = prepare_data(cfg.data, cfg.split, cfg.confidence, None, cfg.validation)
    return cfg, data


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", MODELS)
def test_the_model_meets_the_contract(tiny, tmp_path, name):
    from recmovie.selection import fit_model
    from recmovie.tracking import Run

    cfg, data = tiny
    spec = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))
    model = build_model(spec)
    if model.trained:
        model = build_model({**spec, **SHORT, **(SHORT_PRETRAINING if "pretrain_epochs" in spec else {})})
    torch.manual_seed(0)
    model.build(Schema.from_data(data))
    fitted = fit_model(model, data, cfg, Run()).model

    users = np.arange(data.n_users)
    batch = data.user_batch(users[:17])
    with torch.no_grad():
        fitted.eval()
        full = fitted.score(batch)
        assert full.shape == (17, data.n_items) and torch.isfinite(full).all()
        items = torch.from_numpy(np.random.default_rng(0).integers(0, data.n_items, (17, 9)))
        assert torch.allclose(fitted.score_items(batch, items), full.gather(1, items), rtol=1e-5, atol=1e-6)

    ref = rank(fitted, data, k=20, chunk_size=data.n_users)
    for chunk in (1, 23):
        other = rank(fitted, data, k=20, chunk_size=chunk)
        assert np.array_equal(ref.items, other.items), f"chunk {chunk}"

    ckpt = fitted.checkpoint()
    ckpt.update(config=OmegaConf.to_container(cfg, resolve=True), item_ids=plain(data.dataset.item_ids))
    path = tmp_path / "model.pt"
    save_checkpoint(ckpt, path)
    again = Recommender.from_checkpoint(load_checkpoint(path))  # weights_only: tensors and plain values
    assert type(again) is type(fitted) and again.params == fitted.params and again.schema == fitted.schema
    reloaded = rank(again, data, k=20, chunk_size=31)
    assert np.array_equal(reloaded.items, ref.items)
    assert np.allclose(reloaded.scores, ref.scores, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_that_holds_objects_is_refused(tmp_path):
    from recmovie.errors import DataError

    path = tmp_path / "evil.pt"
    torch.save({"format": 2, "payload": np.dtype("float32")}, path)  # unpickling would run numpy code
    with pytest.raises(DataError, match="not a recmovie checkpoint"):
        load_checkpoint(path)
    path.write_text("not a checkpoint")
    with pytest.raises(DataError, match="not a recmovie checkpoint"):
        load_checkpoint(path)


# one bad value per hyper-parameter check, every family: refused by the constructor (before any data
# is read), naming the key
BAD_VALUES = [
    ("ease", "l2", -5.0), ("ease", "dtype", "float16"), ("itemknn", "k", 0), ("genre_rule", "n_genres", 0),
    ("userknn", "weighting", "idf"), ("admm_slim", "rho", 0.0), ("edlae", "dropout", 1.0), ("als", "alpha", -1.0),
    ("bpr_mf", "sampling", "hard"), ("bpr_mf", "n_negatives", 0), ("bpr_mf", "loss", "multinomial"),
    ("multivae", "dropout", 1.0), ("multivae", "beta", -0.1), ("multivae", "anneal_steps", -5),
    ("multidae", "hidden", [0]), ("multivae", "hidden", 600), ("ae", "activation", "swish"), ("dae", "loss", "bpr"),
    ("recvae", "prior_weights", [0.5, 0.5, 0.5]), ("recvae", "gamma", -1.0), ("recvae", "enc_passes", 0),
    ("recvae", "hidden", [600]), ("sasrec", "max_len", 1), ("sasrec", "heads", 3), ("sasrec", "loss", "multinomial"),
    ("sasrec", "negatives", 0), ("fm", "score_budget_mb", 0), ("deepfm", "hidden", []),
    ("autoint", "heads", 0), ("autoint", "second_order", "yes"),
]


@pytest.mark.parametrize("name, key, value", BAD_VALUES, ids=lambda v: str(v))
def test_a_bad_hyper_parameter_is_refused_naming_its_key(name, key, value):
    with pytest.raises(ConfigError) as e:
        model_from_yaml(name, **{key: value})
    assert e.value.key == f"model.{key}"


def test_a_pairwise_combination_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="model.sampling"):
        model_from_yaml("bpr_mf", loss="sampled_softmax", sampling="popularity")
