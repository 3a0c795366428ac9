"""The one contract every model meets: fit on prepared data, score a batch of users against all items.

Ranking, masking, metrics, submissions, checkpoints and ensembling only call `score`, so they
are written once. Models trained by gradient descent subclass `recmovie.models.lightning.LitRecommender`,
which adds the Lightning hooks; closed-form models stay plain `torch.nn.Module`s so that a run
of EASE does not pay Lightning's import time (about 5 s on 2 cores).
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, ClassVar

import torch

from recmovie.data.prepare import PreparedData, UserBatch
from recmovie.errors import ConfigError


class Recommender(torch.nn.Module):
    """Subclasses set `name`, take their hyper-parameters as keyword arguments (validated at once,
    before any data is read), and implement `fit` (closed form) or the Lightning hooks, and `score`."""

    name: ClassVar[str] = ""
    view: ClassVar[str] = "user_vectors"  # the data view it trains on
    trained: ClassVar[bool] = False  # True: fitted by a Lightning Trainer
    per_user_state: ClassVar[bool] = False  # True: holds per-user parameters (MF), so it can only
    # rank the users it was trained on; history-based models (EASE, autoencoders) rank anyone

    def __init__(self, **params: Any):
        super().__init__()
        self.params = dict(params)
        self.n_users = 0
        self.n_items = 0
        # (step, metrics) recorded by a closed-form fit with its own solver (e.g. loss per ALS
        # iteration); the pipeline logs them into the run's curves after fit()
        self.fit_log: list[tuple[int, dict[str, float]]] = []

    # -- to implement
    def build(self, n_users: int, n_items: int) -> None:
        """Create the layers/buffers whose shapes depend on the data (also used when reloading)."""
        self.n_users, self.n_items = n_users, n_items

    def fit(self, data: PreparedData) -> None:
        """Closed-form fit; gradient models are fitted by the pipeline's Trainer instead."""
        raise NotImplementedError(f"{type(self).__name__} is trained by Lightning, not in closed form")

    def score(self, batch: UserBatch) -> torch.Tensor:
        """[len(batch), n_items] scores, higher is better; training items are masked by the caller."""
        raise NotImplementedError

    # -- checkpoints: class path + params + data shapes + tensors; loadable without the data
    def checkpoint(self) -> dict:
        cls = type(self)
        return {
            "target": f"{cls.__module__}.{cls.__qualname__}",
            "params": self.params,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }

    @staticmethod
    def from_checkpoint(ckpt: dict) -> "Recommender":
        model = model_class(ckpt["target"])(**ckpt["params"])
        model.build(ckpt["n_users"], ckpt["n_items"])
        own = model.state_dict()
        for key, value in ckpt["state_dict"].items():
            if key not in own or own[key].shape != value.shape:  # data-sized buffer filled by fit()
                owner, _, leaf = key.rpartition(".")
                model.get_submodule(owner).register_buffer(leaf, torch.empty_like(value))
        model.load_state_dict(ckpt["state_dict"])
        model.eval()
        return model


def model_class(target: str) -> type[Recommender]:
    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError("model._target_", f"cannot import {target!r} ({type(e).__name__}: {e})") from None
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise ConfigError("model._target_", f"{target!r} is not a Recommender")
    return cls


def build_model(model_cfg: dict, loss: str | None = None) -> Recommender:
    """Instantiate from the `model` config group: `_target_`, `name`, then the class's keyword args.
    `loss` (from the `loss` group; None = the model's own default) is passed as the `loss` argument."""
    cfg = dict(model_cfg)
    target = cfg.pop("_target_", None)
    name = cfg.pop("name", None)
    if not target:
        raise ConfigError("model._target_", "missing: a model config names its class in `_target_`")
    cls = model_class(target)
    if loss is not None:
        if "loss" not in inspect.signature(cls.__init__).parameters:
            raise ConfigError("loss", f"model {name} has no loss to choose (got loss={loss}); leave loss=default")
        cfg["loss"] = loss
    try:
        return cls(**cfg)
    except TypeError as e:
        raise ConfigError("model", f"{e}".replace("__init__()", cls.__name__)) from None


def check(condition: bool, key: str, problem: str) -> None:
    """Validate a hyper-parameter: raise a ConfigError naming `model.<key>`."""
    if not condition:
        raise ConfigError(f"model.{key}", problem)


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    from recmovie.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return torch.load(path, map_location="cpu", weights_only=False)
