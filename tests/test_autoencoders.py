"""The autoencoder family: what each piece computes, and that every model learns on small data."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf

from recmovie.data.datamodule import RecDataModule
from recmovie.data.prepare import PreparedData
from recmovie.errors import ConfigError
from recmovie.evaluation.metrics import evaluate
from recmovie.evaluation.ranking import rank
from recmovie.models.autoencoders import gaussian_log_density, kl_weight
from recmovie.models.base import Recommender, build_model, model_from_yaml
from recmovie.models.baselines import Popularity
from recmovie.training import fit_lightning
from recmovie.models.losses import reconstruction_loss
from recmovie.data.prepare import load_run_data as load_data
from recmovie.pipeline import train
from recmovie.schema import Schema
from tests.conftest import REPO, make_config

MODELS = ["ae", "dae", "vae", "multidae", "multivae", "recvae"]
# a few steps on 400 users: small batches so that an epoch is several updates
FAST = ["model.batch_size=32", "model.lr=0.01", "model.patience=3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory, small_dir):
    work = tmp_path_factory.mktemp("ae")  # one data cache for the module
    return lambda overrides=(): make_config(work, [
        "data=competition", f"data.dir={small_dir}", "tracking.enabled=false", *overrides])


def built(cfg) -> tuple[Recommender, PreparedData]:
    """The config's model, built for its data (untrained), and the data."""
    data = load_data(cfg)
    torch.manual_seed(int(cfg.seed))
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True))
    model.build(Schema.from_data(data))
    return model, data


def fit(cfg) -> tuple[Recommender, dict]:
    model, data = built(cfg)
    found = fit_lightning(model, data, data, cfg)
    top = rank(model, data, k=10)
    metrics = evaluate(top.items, top.users, data.holdout, data.n_users, 10)
    # the restored weights are those of the best validation epoch
    assert metrics["recall_at_10"] == pytest.approx(found["best_score"])
    return model, metrics


class Recorder(Logger):
    """A Lightning logger standing in for the MLflow run: every logged metric's values in order."""

    def __init__(self):
        super().__init__()
        self.metrics: dict[str, list[float]] = {}

    name, version = "recorder", 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        for key, value in metrics.items():
            if key != "epoch":
                self.metrics.setdefault(key, []).append(value)


@pytest.mark.parametrize("name", MODELS)
def test_each_model_trains_and_beats_popularity(small_cfg, name):
    size = ["model.max_epochs=4", "model.hidden=64"] if name == "recvae" else ["model.max_epochs=10"]
    cfg = small_cfg([f"model={name}", *size, *FAST])
    _, metrics = fit(cfg)
    data = load_data(cfg)
    pop = Popularity()
    pop.fit(data)
    top = rank(pop, data, k=10)
    baseline = evaluate(top.items, top.users, data.holdout, data.n_users, 10)["recall_at_10"]
    assert metrics["recall_at_10"] > baseline + 0.05, (metrics["recall_at_10"], baseline)


# ------------------------------------------------------------------ units
def test_reconstruction_losses_by_hand():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    x = torch.tensor([[2.0, 0.0, 0.5], [0.0, 1.0, 0.0]])  # confidence weights on seen items
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    multinomial = -(2.0 * logp[0, 0] + 0.5 * logp[0, 2] + logp[1, 1]) / 2
    assert reconstruction_loss("multinomial", logits, x) == pytest.approx(float(multinomial))

    def bce(z, y):
        return -math.log(1 / (1 + math.exp(-z))) if y else -math.log(1 - 1 / (1 + math.exp(-z)))

    logistic = (2.0 * bce(1.0, 1) + bce(0.0, 0) + 0.5 * bce(-1.0, 1) + bce(0.5, 0) + bce(0.5, 1) + bce(2.0, 0)) / 2
    assert reconstruction_loss("logistic", logits, x) == pytest.approx(logistic, rel=1e-5)
    gaussian = (2.0 * 0.0 + 0.0 + 0.5 * 4.0 + 0.25 + 0.25 + 4.0) / 2
    assert reconstruction_loss("gaussian", logits, x) == pytest.approx(gaussian)


def test_kl_schedule_fixed_and_linear_annealing_to_the_cap():
    assert [kl_weight(s, 0.3, 0) for s in (0, 10, 10_000)] == [0.3, 0.3, 0.3]
    assert [kl_weight(s, 0.2, 100) for s in (0, 25, 50, 100, 1000)] == pytest.approx([0.0, 0.05, 0.1, 0.2, 0.2])


def test_the_kl_schedule_is_followed_and_logged_per_epoch(small_cfg):
    # 400 users in batches of 32: 13 steps an epoch; beta reaches its cap of 0.4 at step 26
    cfg = small_cfg(["split=none", "model=multivae", "model.max_epochs=3", "model.anneal_steps=26", "model.beta=0.4",
                     *FAST])
    model, data = built(cfg)
    run = Recorder()
    fit_lightning(model, data, None, cfg, run)
    sizes = np.array([32] * 12 + [16])  # the epoch's mean weighs each step by its batch size
    ramp = [float((0.4 * np.arange(s, s + 13) / 26 * sizes).sum() / sizes.sum()) for s in (0, 13)]
    assert run.metrics["train_beta"] == pytest.approx([*ramp, 0.4])
    assert len(run.metrics["train_kl"]) == 3


def test_vae_kl_term_and_log_density_match_torch_distributions(small_cfg):
    data = load_data(small_cfg())
    model = model_from_yaml("vae", hidden=[8], latent=4)
    model.build(Schema.from_data(data))
    with torch.no_grad():
        mu, logvar = model.posterior(data.user_batch(np.arange(5)), 0.0)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1).mean()
    assert float(model.kl(mu, logvar)) == pytest.approx(float(expected), rel=1e-5)
    z = torch.randn(5, 4)
    assert torch.allclose(gaussian_log_density(z, mu, logvar), q.log_prob(z), atol=1e-5)


def test_composite_prior_is_the_weighted_mixture(small_cfg):
    data = load_data(small_cfg())
    model = model_from_yaml("recvae", hidden=16, layers=2, latent=3, prior_weights=[0.2, 0.5, 0.3])
    model.build(Schema.from_data(data))
    batch = data.user_batch(np.arange(4))
    z = torch.randn(4, 3)
    old_mu, old_logvar = model.prior_encoder(batch, 0.0)
    normal = torch.distributions.Normal
    density = (0.2 * normal(0.0, 1.0).log_prob(z).exp() + 0.5 * normal(old_mu, (0.5 * old_logvar).exp()).log_prob(z).exp()
               + 0.3 * normal(0.0, math.exp(5.0)).log_prob(z).exp())
    assert torch.allclose(model.log_prior(batch, z), density.log(), atol=1e-5)


def test_sparse_input_layer_equals_the_dense_product(small_cfg):
    data = load_data(small_cfg(["confidence=time"]))
    model = model_from_yaml("dae", hidden=[], latent=6, dropout=0.5)
    model.build(Schema.from_data(data))
    batch = data.user_batch(np.arange(30))
    x = batch.dense()
    expected = F.normalize(x, dim=1) @ model.encoder.input.bag.weight + model.encoder.input.bias
    model.eval()
    assert torch.allclose(model.encoder.input(batch, 0.5), expected, atol=1e-5)
    # training: entries dropped with probability `dropout`, the kept ones scaled by 1 / (1 - dropout)
    model.train()
    torch.manual_seed(0)
    noisy = model.encoder.input(batch, 0.5)
    assert not torch.allclose(noisy, expected, atol=1e-3)
    empty = data.user_batch(np.array([], dtype=np.int64))
    assert model.encoder.input(empty, 0.0).shape == (0, 6)


def test_confidence_weights_change_what_the_model_trains_on(small_cfg):
    plain, timed = load_data(small_cfg()), load_data(small_cfg(["confidence=time"]))
    users = np.arange(40)
    a, b = plain.user_batch(users), timed.user_batch(users)
    assert torch.equal(a.indices, b.indices) and not torch.allclose(a.values, b.values)
    model = model_from_yaml("vae", hidden=[16], latent=8)
    model.build(Schema.from_data(plain))
    model.eval()  # no noise: the only difference is the weights
    assert not torch.allclose(model.score(a), model.score(b))
    # the likelihood weighs each seen item by its confidence weight: the target is the weighted history
    logits = model.score(b).detach()
    assert float(reconstruction_loss("multinomial", logits, b.dense())) != pytest.approx(
        float(reconstruction_loss("multinomial", logits, a.dense())))
    # every loss reads the batch's sparse rows as it reads their dense matrix
    for loss in ("multinomial", "logistic", "gaussian"):
        assert torch.allclose(reconstruction_loss(loss, logits, b), reconstruction_loss(loss, logits, b.dense()),
                              rtol=1e-5)


def test_every_loss_is_switchable_on_every_model(small_cfg):
    for name in MODELS:
        cfg = OmegaConf.to_container(small_cfg([f"model={name}"]).model)
        for loss in ("multinomial", "logistic", "gaussian"):
            assert build_model(cfg, loss=loss).params.loss == loss


# ------------------------------------------------------------------ RecVAE's alternating updates
def test_recvae_alternates_encoder_and_decoder_passes(small_cfg):
    data = load_data(small_cfg(["split=none"]))
    model = model_from_yaml("recvae", hidden=16, layers=2, latent=4, enc_passes=2, dec_passes=1, batch_size=200,
                            max_epochs=1)
    model.build(Schema.from_data(data))
    snapshots = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            snapshots.append({k: v.detach().clone() for k, v in module.state_dict().items()})

    start = {k: v.clone() for k, v in model.state_dict().items()}
    dm = RecDataModule(data, "user_vectors", 200, view_options=model.view_options())
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[Watch()]).fit(model, datamodule=dm)
    assert len(snapshots) == 6  # 400 users, 2 batches a pass, 3 passes

    def changed(a, b, part):
        return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(part + "."))

    states = [start, *snapshots]
    for i in range(1, 7):
        encoder_phase = i <= 4
        assert changed(states[i - 1], states[i], "encoder") == encoder_phase
        assert changed(states[i - 1], states[i], "decoder") != encoder_phase
    # the previous encoder is refreshed once, between the encoder and the decoder passes
    assert not changed(start, states[4], "prior_encoder")
    refreshed = {k.replace("prior_encoder.", "encoder."): v for k, v in states[5].items() if k.startswith("prior_encoder.")}
    assert all(torch.equal(v, states[4][k]) for k, v in refreshed.items())


# ------------------------------------------------------------------ through the pipeline
def test_seeded_runs_repeat_exactly(small_cfg):
    subs = []
    for _ in range(2):
        cfg = small_cfg(["model=multivae", "model.max_epochs=2", "model.latent=32", *FAST])
        train(cfg)
        subs.append(pd.read_csv(f"{cfg.paths.output_dir}/submission.csv"))
    pd.testing.assert_frame_equal(*subs)


def test_refit_finds_the_epoch_count_on_validation_then_trains_on_everything(small_cfg):
    # split=none: refit=auto first early-stops on the validation part, then trains on every interaction
    cfg = small_cfg(["split=none", "model=multidae", "model.max_epochs=6", "model.latent=32", *FAST,
                     "model.patience=2", "tracking.enabled=true"])
    val_recall = train(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1)[0]  # the newest
    client = mlflow.MlflowClient()
    m = run.data.metrics
    assert run.data.tags["fit_mode"] == "refit"
    assert val_recall == pytest.approx(m["val_recall_at_10"]) and 0 < val_recall <= 1
    assert val_recall == pytest.approx(max(h.value for h in client.get_metric_history(run.info.run_id, "val_recall_at_10")))
    assert m["refit_epochs"] == m["best_epoch"] <= m["epochs"]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == m["epochs"]  # the probe
    assert len(client.get_metric_history(run.info.run_id, "refit-train_loss")) == m["refit_epochs"]
    assert "refit-val_recall_at_10" not in m  # on everything: nothing held out
    assert "recall_at_10" not in m  # split=none: no test part


def test_early_stopping_selects_on_validation_never_on_the_test_part(small_cfg):
    cfg = small_cfg(["model=multidae", "model.max_epochs=4", "model.latent=32", *FAST, "tracking.enabled=true"])
    val_recall = train(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1)[0]  # the newest
    m = run.data.metrics
    assert run.data.tags["fit_mode"] == "validate"
    assert val_recall == pytest.approx(m["val_recall_at_10"]) == pytest.approx(m["best_score"] if "best_score" in m
                                                                              else m["val_recall_at_10"])
    assert m["recall_at_10"] != pytest.approx(m["val_recall_at_10"])  # two parts, two figures
    # the validation part comes out of the training part: no validation row is a test row
    data = load_data(cfg)
    test = set(zip(data.holdout.user.tolist(), data.holdout.item.tolist()))
    val = set(zip(data.validation.user.tolist(), data.validation.item.tolist()))
    assert val and test and not (val & test)
    assert not data.train_mask[data.val_mask].sum() < data.val_mask.sum()  # validation rows are training rows


def test_refit_needs_a_validation_part(small_cfg):
    with pytest.raises(ConfigError, match="refit"):
        train(small_cfg(["refit=true", "split@validation=none", "model=multidae"]))
    with pytest.raises(ConfigError, match="refit"):
        train(small_cfg(["refit=sometimes", "model=multidae"]))
    with pytest.raises(ConfigError, match="validation.n_last"):
        train(small_cfg(["split=none", "model=multidae", "validation.n_last=-1"]))


# ------------------------------------------------------------------ sweeps through the command line
def _cli(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    p = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


@pytest.mark.slow
def test_optuna_search_runs_parallel_trials_as_mlflow_runs_and_reports_the_best(tmp_path, small_dir):
    found = _cli(tmp_path, "hparams_search=recvae_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                 "hydra/launcher=parallel", "data=competition", f"data.dir={small_dir}", "model.max_epochs=1",
                 "model.hidden=32", "model.layers=2")
    assert len(found) == 2 and len({r.data.tags["sweep_id"] for r in found}) == 1
    assert sorted(r.data.tags["sweep_job"] for r in found) == ["0", "1"]
    assert len({r.data.params["model.beta"] for r in found}) == 2  # the search space was sampled
    assert all(r.info.status == "FINISHED" for r in found)
    (result,) = (tmp_path / "outputs" / "multiruns").glob("*/optimization_results.yaml")
    best = yaml.safe_load(result.read_text())
    # the objective is the validation figure, never the test one
    assert best["best_value"] == pytest.approx(max(r.data.metrics["val_recall_at_10"] for r in found))
    assert set(best["best_params"]) == {"model.beta", "model.dropout", "model.latent", "model.lr"}
