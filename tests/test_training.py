"""Training of gradient models: the Trainer from config, callbacks, samplers per DDP process, and a
real 2-process DDP run (slow)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from recmovie.data.samplers import PairSampler, PairStream, ShardedBatches
from recmovie.errors import ConfigError
from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import rank
from recmovie.models.base import build_model
from recmovie.data.prepare import load_run_data as load_data
from recmovie.schema import Schema
from recmovie.training import build_trainer, fit_lightning, trainer_arguments
from tests.conftest import REPO, make_config


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory, small_dir):
    work = tmp_path_factory.mktemp("training")
    return lambda overrides=(): make_config(work, [
        "data=competition", f"data.dir={small_dir}", "tracking.enabled=false", "model=multidae",
        "model.latent=16", "model.batch_size=64", *overrides])


def _model(cfg, data):
    torch.manual_seed(0)
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True))
    model.build(Schema.from_data(data))
    return model


def test_trainer_arguments_are_lightnings_and_unknown_ones_are_refused():
    assert trainer_arguments({"max_epochs": 3, "limit_train_batches": 2, "devices": None}) == {
        **trainer_arguments({}), "max_epochs": 3, "limit_train_batches": 2}
    with pytest.raises(ConfigError, match="trainer.max_epoch`: not an argument"):
        trainer_arguments({"max_epoch": 3})
    with pytest.raises(ConfigError, match="trainer.callbacks`: set by recmovie"):
        trainer_arguments({"callbacks": []})


def test_any_trainer_key_reaches_the_trainer(small_cfg):
    cfg = small_cfg(["+trainer.limit_train_batches=2", "trainer.max_epochs=1", "+trainer.log_every_n_steps=7"])
    data = load_data(cfg)
    trainer = build_trainer(cfg, _model(cfg, data), validate=True)
    assert (trainer.limit_train_batches, trainer.max_epochs, trainer.log_every_n_steps) == (2, 1, 7)
    assert trainer.max_epochs == 1  # trainer.max_epochs wins over the model's own


def test_a_time_budget_caps_the_probe_but_not_the_refit(small_cfg):
    from pytorch_lightning.callbacks import Timer

    cfg = small_cfg(["+trainer.max_time=00:00:01:00"])
    data = load_data(cfg)
    probe = build_trainer(cfg, _model(cfg, data), validate=True)
    refit = build_trainer(cfg, _model(cfg, data), validate=False, max_epochs=3)  # the count the probe found
    assert any(isinstance(c, Timer) for c in probe.callbacks)
    assert not any(isinstance(c, Timer) for c in refit.callbacks) and refit.max_epochs == 3


def test_early_stopping_says_when_and_why_it_stopped(small_cfg, caplog):
    # a learning rate this small never improves the validation figure: stops after `patience` epochs
    cfg = small_cfg(["model.lr=1e-12", "model.patience=2", "model.max_epochs=20"])
    data = load_data(cfg).fit_part()
    with caplog.at_level(logging.INFO, logger="recmovie.training"):
        found = fit_lightning(_model(cfg, data), data, data, cfg)
    assert found["epochs"] < 20 and found["best_epoch"] >= 1
    text = caplog.text
    assert "early stopping after epoch" in text and "did not improve for 2 epochs" in text
    assert text.count("val_recall_at_10") >= found["epochs"]  # one line per epoch


@pytest.mark.parametrize("select_on,metric", [("all", "val_recall_at_10"), ("last", "val_recall_at_10_last"),
                                              ("random", "val_recall_at_10_random")])
def test_callbacks_watch_the_part_the_model_selects_on(small_cfg, select_on, metric):
    cfg = small_cfg([f"model.select_on={select_on}", "trainer.max_epochs=2"])
    data = load_data(cfg).fit_part()
    model = _model(cfg, data)
    model.eval_k = 10
    trainer = build_trainer(cfg, model, validate=True)
    watching = {type(c).__name__: c.monitor for c in trainer.callbacks if hasattr(c, "monitor")}
    assert watching == {"EarlyStopping": metric, "BestWeights": metric, "EpochReport": metric}
    found = fit_lightning(model, data, data, cfg)
    top = rank(model, data, k=10)  # the restored weights score the watched part as the best epoch did
    assert evaluate(top.items, top.users, data.holdout, data.n_users, 10)[metric[4:]] == pytest.approx(found["best_score"])


def test_an_unknown_selection_part_is_refused_by_key(small_cfg):
    with pytest.raises(ConfigError, match="model.select_on"):
        _model(small_cfg(["model.select_on=first"]), None)


def test_without_callbacks_training_runs_its_epochs(small_cfg):
    cfg = small_cfg(["callbacks=none", "model.lr=1e-12", "model.patience=1", "model.max_epochs=4"])
    data = load_data(cfg).fit_part()
    found = fit_lightning(_model(cfg, data), data, data, cfg)
    assert found["epochs"] == 4 and found["best_epoch"] == 0  # nothing kept: the last epoch's weights


@pytest.mark.parametrize("n,world", [(10, 1), (11, 2), (7, 3)])
def test_sharded_batches_cover_every_row_with_equal_steps_per_process(n, world):
    shares = [ShardedBatches(n, 3, seed=5, passes=2, rank=r, world=world) for r in range(world)]
    for s in shares:
        s.set_epoch(4)
    batches = [list(s) for s in shares]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(shares[0])
    seen = np.concatenate([np.concatenate(b) for b in batches])
    assert set(seen.tolist()) == set(range(n))  # every row (padding repeats a few)
    again = ShardedBatches(n, 3, seed=5, passes=2, rank=0, world=world)
    again.set_epoch(4)
    assert all(np.array_equal(a, b) for a, b in zip(again, batches[0]))  # seeded by (seed, epoch, rank)
    again.set_epoch(5)
    assert not all(np.array_equal(a, b) for a, b in zip(again, batches[0]))  # a new order each epoch


def test_pair_streams_differ_between_processes(small_cfg):
    data = load_data(small_cfg())
    sampler = PairSampler(data, n_negatives=2)
    first, second = (list(PairStream(sampler, 500, seed=1, rank=r, world=2)) for r in (0, 1))
    assert len(first) == len(second) == -(-len(sampler) // 1000)
    assert not torch.equal(first[0].users, second[0].users)


@pytest.mark.slow
def test_two_process_ddp_run_gives_one_run_one_submission_and_validates_every_user(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    p = subprocess.run([sys.executable, str(REPO / "train.py"), "model=multivae", "trainer=ddp", "trainer.devices=2",
                        "model.max_epochs=2", "model.latent=32", "hydra.run.dir=out"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FINISHED" and run.data.params["trainer.strategy"] == "ddp_spawn"
    sub = pd.read_csv(tmp_path / "out" / "submission.csv")
    assert sub["user"].nunique() == 610 and (sub.groupby("user")["item"].nunique() == 10).all()
    cfg = make_config(tmp_path / "check", [])
    data = load_data(cfg)
    n_val_users = len(np.unique(data.validation.user))
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_users")
    assert [h.value for h in history] == [n_val_users] * 2  # both processes' users, every epoch
    assert run.data.metrics["val_recall_at_10"] > 0


@pytest.mark.slow
def test_s3rec_fine_tunes_with_its_objectives_under_ddp(tmp_path):
    # its heads join the model for the fit only: DDP must see each of them used in every step
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    p = subprocess.run([sys.executable, str(REPO / "train.py"), "model=s3rec", "trainer=ddp", "trainer.devices=2",
                        "model.max_epochs=2", "model.pretrain_epochs=1", "model.max_len=20", "hydra.run.dir=out"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FINISHED" and "train_aux" in run.data.metrics


def test_a_trainer_lightning_refuses_is_one_config_error(small_cfg):
    cfg = small_cfg(["trainer.accelerator=mps"])  # Apple's GPUs: never on Linux
    data = load_data(cfg)
    with pytest.raises(ConfigError, match="config `trainer`"):
        build_trainer(cfg, _model(cfg, data), validate=True)
