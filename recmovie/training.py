"""Training of gradient models: the Lightning Trainer, its callbacks and its logger, built from config.

- `trainer.*` (conf/trainer/): any argument of Lightning's Trainer; an unknown one is refused by
  name. `trainer.max_epochs: null` leaves the model's own `max_epochs`.
- `callbacks.*` (conf/callbacks/): each entry is instantiated by Hydra (`_target_` + arguments);
  those that watch validation (early stopping, best weights) are left out when nothing is held
  out for validation. Early stopping's `patience: null` takes the model's own; `monitor: null`
  the model's `select_on` part of validation Recall@k (`val_recall_at_k`, `..._last`, `..._random`).
- The logger is Lightning's MLFlowLogger attached to the pipeline's MLflow run (curves indexed by
  epoch, so two fits in one run line up); it logs on the global rank zero only.
"""
from __future__ import annotations

import copy
import inspect
import logging
import signal
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, Checkpoint, EarlyStopping, Timer
from pytorch_lightning.loggers import MLFlowLogger
from lightning_fabric.utilities.exceptions import MisconfigurationException

from recmovie.data.datamodule import RecDataModule
from recmovie.data.prepare import PreparedData
from recmovie.errors import ConfigError
from recmovie.models.lightning import LitRecommender, selection_metric

log = logging.getLogger(__name__)
# Lightning's own calls into torch's pytree (pytorch_lightning/utilities/_pytree.py), deprecated by
# torch: nothing a user of recmovie can act on, printed on every run
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# its warning about any IterableDataset with a length, for loaders with several workers: each worker
# of a PairStream (recmovie/data/samplers.py) yields every n-th of its `steps` batches, so the length is exact
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
# and its advertisement for a cloud logger, printed by every Trainer: runs here log to MLflow
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "try installing [litlogger]" not in record.getMessage())

# set here, not by `trainer.*`: they come from the callbacks group and the run
OWNED_KEYS = ("logger", "callbacks")
DEFAULTS = {
    "enable_checkpointing": False,  # the best epoch is kept in memory (BestWeights); the model is saved once, by the pipeline
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "use_distributed_sampler": False,  # the views shard their batches themselves (recmovie/data/samplers.py)
}


class BestWeights(Callback):
    """Keep the best validation epoch's weights in memory (no checkpoint files) and restore them
    when training ends. The result (`best_epoch` counted from 1, `best_score`, `epochs` trained)
    goes into the trainer's callback metrics, which Lightning hands back from spawned DDP processes."""

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.best_score = -float("inf")
        self.best_epoch = -1
        self.state: dict | None = None

    # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before the
    # module's, which logs this epoch's metrics (they would see the previous epoch's)
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) > self.best_score:
            self.best_score, self.best_epoch = float(value), trainer.current_epoch + 1  # counted from 1
            self.state = copy.deepcopy({k: v.detach().cpu() for k, v in pl_module.state_dict().items()})

    # carried by the resume checkpoint (ResumeCheckpoint): a resumed training keeps the best epoch
    # found before the interruption
    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_epoch, self.state = state["best_score"], state["best_epoch"], state["state"]

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.callback_metrics["epochs"] = torch.tensor(float(trainer.current_epoch))
        if self.state is not None:
            pl_module.load_state_dict(self.state)
            trainer.callback_metrics["best_epoch"] = torch.tensor(float(self.best_epoch))
            trainer.callback_metrics["best_score"] = torch.tensor(self.best_score)


def duration(seconds: float) -> str:
    """'45 s', '12 min', '2.3 h': how long, at a glance."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class EpochReport(Callback):
    """One line per epoch in the log (epoch, training loss, validation Recall@k, best so far,
    seconds), then why training stopped. Lightning's progress bar is the alternative
    (`trainer.enable_progress_bar=true`); these lines also read well in a log file and in sweeps."""

    def __init__(self, monitor: str = "val_recall_at_10"):
        self.monitor = monitor
        self.best = (-float("inf"), -1)
        self.t0 = 0.0
        self.seconds: list[float] = []  # this process's epochs: what the time left is estimated from

    def on_fit_start(self, trainer, pl_module) -> None:
        # a process spawned for DDP (ddp_spawn) starts without the command's logging setup
        if trainer.is_global_zero and not logging.getLogger().handlers:
            logging.basicConfig(format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
            log.setLevel(logging.INFO)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def state_dict(self) -> dict:
        return {"best": list(self.best)}

    def load_state_dict(self, state: dict) -> None:
        self.best = tuple(state["best"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self.t0
        pl_module.log("epoch_seconds", seconds, on_epoch=True, on_step=False, sync_dist=trainer.world_size > 1)
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        if "train_loss" in metrics:
            parts.append(f"train_loss {float(metrics['train_loss']):.4f}")
        if self.monitor in metrics:
            value = float(metrics[self.monitor])
            if value > self.best[0]:
                self.best = (value, trainer.current_epoch + 1)
            parts.append(f"{self.monitor} {value:.4f} (best {self.best[0]:.4f}, epoch {self.best[1]})")
        parts.append(f"{seconds:.1f} s")
        self.seconds.append(seconds)
        left = trainer.max_epochs - trainer.current_epoch - 1
        if left > 0:  # an upper bound: early stopping may end sooner
            parts.append(f"at most {duration(left * sum(self.seconds) / len(self.seconds))} left")
        if trainer.is_global_zero:
            log.info("  ".join(parts))

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
        if stopper is not None and stopper.stopped_epoch > 0:
            log.info("early stopping after epoch %d: %s did not improve for %d epochs (best %.4f at epoch %d)",
                     stopper.stopped_epoch + 1, stopper.monitor, stopper.wait_count, self.best[0], self.best[1])
        elif any(isinstance(c, Timer) and c.time_remaining() is not None and c.time_remaining() <= 0
                 for c in trainer.callbacks):
            log.info("stopped after epoch %d: trainer.max_time ran out", trainer.current_epoch)
        else:
            log.info("stopped after epoch %d: max_epochs reached", trainer.current_epoch)


class ResumeCheckpoint(Checkpoint):
    """At the end of every epoch, the whole training state in one file: weights, optimiser, epoch
    and step counters, the other callbacks' state (early stopping's counter, BestWeights' best
    epoch), the random generators and whether training is to stop; written to a temporary file
    and renamed, so an interruption leaves the previous epoch's. `fit_lightning(resume=True)`
    continues from it (Lightning's `ckpt_path`). A Checkpoint, so Lightning runs it after the
    other callbacks' epoch-end hooks."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._stop = False

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from recmovie.io import atomic_path

        if trainer.sanity_checking:
            return
        self._stop = bool(trainer.should_stop)
        if not trainer.is_global_zero:  # every DDP process takes part in saving, only rank zero writes
            trainer.save_checkpoint(self.path, weights_only=False)
            return
        with atomic_path(self.path) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)

    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"stop": self._stop, "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        # after seed_everything: the random streams go on where the interrupted training was
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self._stop = bool(state["stop"])

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # Lightning sets the epoch of samplers, not of a stream that counts its own (the pairs view):
        # set here, before the epoch's iterator (and any loader worker) starts, so that a resumed
        # training draws the batches the uninterrupted one would
        stream = getattr(trainer.train_dataloader, "dataset", None)
        if hasattr(stream, "set_epoch"):
            stream.set_epoch(trainer.current_epoch)

    def on_train_start(self, trainer, pl_module) -> None:
        if self._stop:  # the checkpoint's epoch had decided to stop (early stopping): nothing left to train
            trainer.should_stop = True


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger on the pipeline's run. Two things differ, hence the subclass:
    curves are indexed by epoch, counted from 1 (Lightning indexes them by optimiser step, so a
    refit's curves would not line up with the probe's), and `finalize` leaves the run open: the
    pipeline still ranks, writes and logs after training, then ends the run itself."""

    def log_metrics(self, metrics, step=None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        super().log_metrics(metrics, step=int(epoch) + 1 if epoch is not None else step)

    def finalize(self, status: str) -> None:
        pass


def trainer_arguments(trainer_cfg: DictConfig | dict) -> dict:
    """`trainer.*` checked against Lightning's Trainer; None values are left to the defaults."""
    given = OmegaConf.to_container(trainer_cfg, resolve=True) if isinstance(trainer_cfg, DictConfig) else dict(trainer_cfg)
    known = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    for key in given:
        if key in OWNED_KEYS:
            raise ConfigError(f"trainer.{key}", f"set by recmovie ({'the callbacks group' if key == 'callbacks' else 'the MLflow run'}), not by trainer.*")
        if key not in known:
            raise ConfigError(f"trainer.{key}", "not an argument of Lightning's Trainer "
                              "(https://lightning.ai/docs/pytorch/stable/common/trainer.html)")
    return {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}


def build_callbacks(callbacks_cfg: DictConfig | None, model: LitRecommender, validate: bool) -> list[Callback]:
    from hydra.utils import instantiate

    out = []
    for name, spec in (callbacks_cfg or {}).items():
        if spec is None:  # callbacks.early_stopping=null switches one off
            continue
        if "_target_" not in spec:
            raise ConfigError(f"callbacks.{name}", "needs a `_target_` (the callback's class)")
        if spec.get("patience", "absent") is None:
            spec = OmegaConf.merge(spec, {"patience": int(model.params.patience)})
        if spec.get("monitor", "absent") is None:
            spec = OmegaConf.merge(spec, {"monitor": selection_metric(model.params.select_on, model.eval_k)})
        try:
            callback = instantiate(spec)
        except Exception as e:
            raise ConfigError(f"callbacks.{name}", f"cannot build it: {str(e).splitlines()[0]}") from None
        if not validate and isinstance(callback, (EarlyStopping, BestWeights)):
            continue
        out.append(callback)
    return out


def run_logger(run_id: str | None, tracking_uri: str, prefix: str = ""):
    """The Trainer's logger for an MLflow run (False without one: tracking disabled)."""
    return RunLogger(tracking_uri=tracking_uri, run_id=run_id, prefix=prefix) if run_id else False


def build_trainer(cfg: DictConfig, model: LitRecommender, validate: bool, logger=False,
                  max_epochs: int | None = None, checkpoint: str | Path | None = None) -> pl.Trainer:
    """The Trainer from `trainer.*` and `callbacks.*`; `checkpoint`: the file ResumeCheckpoint
    keeps the training state in (Lightning's own ModelCheckpoint stays off)."""
    kwargs = trainer_arguments(cfg.trainer)
    if max_epochs is not None and kwargs.pop("max_time", None) is not None:
        # a refit trains the epoch count its probe found within the budget: cut short, it would be
        # a model nobody selected
        log.info("refit: trainer.max_time does not apply; it trains the %d epochs found", max_epochs)
    kwargs["max_epochs"] = int(max_epochs or kwargs.get("max_epochs") or model.params.max_epochs)
    if not validate:
        kwargs["limit_val_batches"] = 0
    callbacks = build_callbacks(cfg.get("callbacks"), model, validate)
    if checkpoint is not None:
        callbacks.append(ResumeCheckpoint(checkpoint))
        kwargs["enable_checkpointing"] = True  # Lightning refuses a Checkpoint callback otherwise
    try:
        return pl.Trainer(**kwargs, logger=logger, callbacks=callbacks)
    except (MisconfigurationException, ImportError, ValueError, TypeError, RuntimeError) as e:  # trainer=gpu without a GPU, a TPU without torch_xla
        raise ConfigError("trainer", str(e).strip().splitlines()[0]) from None


def fit_lightning(model: LitRecommender, train: PreparedData, val: PreparedData | None, cfg: DictConfig,
                  logger=False, max_epochs: int | None = None, checkpoint: str | Path | None = None,
                  resume: bool = False) -> dict:
    """Train on `train`; with `val` (data whose holdout is the validation part), early-stop on its
    Recall@k and restore the best epoch. `logger`: a Lightning logger (`run_logger`) or False.
    `checkpoint`: where the training state is saved after every epoch (ResumeCheckpoint); with
    `resume`, training continues from that file when it exists. Ctrl-C or SIGTERM raise
    KeyboardInterrupt (Lightning would exit with status 1).
    Returns {"best_epoch" (from 1; 0 = none kept), "best_score", "epochs" (trained)}."""
    k = int(cfg.eval.k)
    validate = val is not None and len(val.holdout) > 0
    model.eval_k = k
    model.eval_holdout = val.holdout if validate else None
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    dm = RecDataModule(train, model.view, int(model.params.batch_size), val if validate else None,
                       int(cfg.eval.chunk_size), seed=int(cfg.seed), num_workers=int(cfg.loader.num_workers),
                       view_options=getattr(model, "view_options", lambda: {})())
    trainer = build_trainer(cfg, model, validate, logger, max_epochs, checkpoint)
    ckpt_path = None
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        ckpt_path = str(checkpoint)
        log.info("resuming from %s", checkpoint)
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        if not trainer.interrupted:
            raise
        # Lightning turned the interrupt into exit status 1 and ignores Ctrl-C from then on
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt("training interrupted") from None
    model.cpu()
    metrics = trainer.callback_metrics
    result = {"epochs": int(metrics["epochs"]) if "epochs" in metrics else trainer.current_epoch,
              "best_epoch": int(metrics["best_epoch"]) if "best_epoch" in metrics else 0,
              "best_score": float(metrics["best_score"]) if "best_score" in metrics else None}
    if validate and result["best_epoch"] > 0:
        log.info("restored the best epoch %d (%s %.4f)", result["best_epoch"],
                 selection_metric(model.params.select_on, k), result["best_score"])
    return result
