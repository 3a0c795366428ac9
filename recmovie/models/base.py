"""The one contract every model meets: built from a Schema, fitted on prepared data, scoring a
batch of users against all items (`score`) or against given candidates (`score_items`).

Ranking, masking, metrics, submissions, checkpoints and ensembling only call these, so they are
written once. Models trained by gradient descent subclass `recmovie.models.lightning.LitRecommender`,
which adds the Lightning hooks; closed-form models stay plain `torch.nn.Module`s so that a run
of EASE does not pay Lightning's import time (about 5 s on 2 cores).
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from recmovie.data.batches import UserBatch
from recmovie.data.prepare import PreparedData
from recmovie.errors import ConfigError, DataError
from recmovie.schema import Schema

CHECKPOINT_FORMAT = 2  # tensors + plain metadata, loaded with torch.load(weights_only=True)


class Params(dict):
    """A model's hyper-parameters, kept once: the constructor's keyword arguments, read as
    `self.params.l2` (or `self.params["l2"]`), and saved as they are in the checkpoint."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no hyper-parameter {name!r}") from None


class Recommender(torch.nn.Module):
    """Subclasses take their hyper-parameters as keyword arguments (validated at once,
    before any data is read), and implement `build`, `fit` (closed form) or the Lightning hooks,
    and `score` (and `score_items` where scoring a few candidates is cheaper than all items)."""

    view: ClassVar[str] = "user_vectors"  # the data view it trains on
    trained: ClassVar[bool] = False  # True: fitted by a Lightning Trainer
    per_user_state: ClassVar[bool] = False  # True: holds per-user parameters (MF), so it can only
    # rank the users it was trained on; history-based models (EASE, autoencoders) rank anyone
    tune_on_popular_items: ClassVar[bool] = False  # True: each `tune` grid point inverts an items x items
    # matrix (items^3), so the grid is searched on at most `tune_items` of the most popular items

    def __init__(self, **params: Any):
        super().__init__()
        self.params = Params(params)
        self.schema: Schema | None = None
        # (step, metrics) recorded by a closed-form fit with its own solver (e.g. loss per ALS
        # iteration); the pipeline logs them into the run's curves after fit()
        self.fit_log: list[tuple[int, dict[str, float]]] = []

    @property
    def n_users(self) -> int:
        return self.schema.n_users if self.schema else 0

    @property
    def n_items(self) -> int:
        return self.schema.n_items if self.schema else 0

    # -- to implement
    def build(self, schema: Schema) -> None:
        """Create the layers/buffers whose shapes depend on the data (also used when reloading)."""
        self.schema = schema

    def fit(self, data: PreparedData) -> None:
        """Closed-form fit; gradient models are fitted by recmovie.training instead."""
        raise NotImplementedError(f"{type(self).__name__} is trained by Lightning, not in closed form")

    def shared_work(self, data: PreparedData, varying: set[str]) -> dict:
        """Keyword arguments of `fit` that are the same for every point of a `tune` grid on `data`
        whose points differ in the hyper-parameters `varying` (EASE: the Gram matrix), computed
        once by the tune; {}: nothing to share."""
        return {}

    def score(self, batch: UserBatch) -> torch.Tensor:
        """[len(batch), n_items] scores, higher is better; training items are masked by the caller."""
        raise NotImplementedError

    def memory_needed(self, schema: Schema) -> tuple[int, str] | None:
        """Bytes the fit and the ranking hold beyond the data, where that is large and known
        before the fit (an items x items matrix), and the option that lowers it; None: small."""
        return None

    def score_items(self, batch: UserBatch, items: torch.Tensor) -> torch.Tensor:
        """[B, C] scores of the candidates `items` [B, C] (dense ids; -1 = no candidate, its score
        is ignored). Default: gathered from `score`; models whose score of one item is cheap
        (feature models, re-rankers) override it to skip the full catalogue."""
        full = self.score(batch)
        return full.gather(1, items.to(full.device).clamp_min(0))

    # -- checkpoints: class path + params + schema + tensors; rebuilt without the data
    def checkpoint(self) -> dict:
        cls = type(self)
        return {
            "format": CHECKPOINT_FORMAT,
            "target": f"{cls.__module__}.{cls.__qualname__}",
            "params": dict(self.params),
            "schema": self.schema.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }

    @staticmethod
    def from_checkpoint(ckpt: dict) -> "Recommender":
        model = model_class(ckpt["target"])(**ckpt["params"])
        model.build(Schema.from_dict(ckpt["schema"]))
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


def _accepts(cls: type, argument: str) -> bool:
    """Whether the class or a base it passes its keyword arguments on to takes `argument`."""
    return any(argument in inspect.signature(c.__init__).parameters for c in cls.__mro__ if "__init__" in vars(c))


def build_model(model_cfg: dict, loss: str | None = None, features: dict | None = None) -> Recommender:
    """Instantiate from the `model` config group: `_target_`, `name`, then the class's keyword args.
    `loss` (from the `loss` group; None = the model's own default) is passed as the `loss` argument;
    `features` (the `features` group, resolved) as the `features` argument of the models that read
    side features; the others accept only a feature set without fields (`ids`)."""
    cfg = dict(model_cfg)
    target = cfg.pop("_target_", None)
    name = cfg.pop("name", None)
    cfg.pop("tune", None)  # the grid `tune` chooses values from (recmovie.selection.tune_model), not an argument
    cfg.pop("tune_extend", None)  # the grid's keys it may extend past the edges
    if not target:
        raise ConfigError("model._target_", "missing: a model config names its class in `_target_`")
    cls = model_class(target)
    if loss is not None:
        if not _accepts(cls, "loss"):
            raise ConfigError("loss", f"model {name} has no loss to choose (got loss={loss}); leave loss=default")
        cfg["loss"] = loss
    if features is not None:
        if _accepts(cls, "features"):
            cfg["features"] = features
        elif features.get("item") or features.get("user"):
            raise ConfigError("features", f"model {name} reads no side features (got features={features.get('name')});"
                              " leave features=ids")
    check_argument_types(cls, cfg)
    try:
        return cls(**cfg)
    except TypeError as e:
        raise ConfigError("model", f"{e}".replace("__init__()", cls.__name__)) from None


def _kinds(hint: object) -> tuple[set[type], bool] | None:
    """The plain kinds (int, float, bool, str) a type hint allows and whether it allows None;
    None for hints beyond them (lists, tuples, literals, ...), which are left to the constructor."""
    import types
    import typing

    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    kinds = {a for a in args if a in (int, float, bool, str)}
    optional = type(None) in args
    return (kinds, optional) if kinds and len(kinds) + optional == len(args) else None


def check_argument_types(cls: type, arguments: dict[str, Any]) -> None:
    """Each hyper-parameter against its constructor's annotation (the class's and those of the
    bases it passes its keyword arguments on to): `model.l2=abc` names `model.l2`, instead of
    failing later inside a comparison or the fit."""
    import typing

    from recmovie.config import KIND_NAMES, is_kind

    hints: dict[str, Any] = {}
    for c in reversed(cls.__mro__):
        if "__init__" in vars(c):
            try:
                hints.update(typing.get_type_hints(c.__init__))
            except Exception:  # an annotation that cannot be evaluated here: nothing to check by it
                continue
    for key, value in arguments.items():
        allowed = _kinds(hints.get(key))
        if allowed is None or (value is None and allowed[1]) or any(is_kind(value, k) for k in allowed[0]):
            continue
        expected = " or ".join(KIND_NAMES[k] for k in sorted(allowed[0], key=str)) + (" or null" if allowed[1] else "")
        raise ConfigError(f"model.{key}", f"must be {expected}, got {value!r}")


def check(condition: bool, key: str, problem: str) -> None:
    """Validate a hyper-parameter: raise a ConfigError naming `model.<key>`."""
    if not condition:
        raise ConfigError(f"model.{key}", problem)


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    from recmovie.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def plain(value: Any) -> Any:
    """Checkpoint metadata as tensors and plain values only (numpy arrays become tensors)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's tensors and metadata; never unpickles arbitrary objects (weights_only), so a
    downloaded artifact cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or objects beyond tensors and plain values
        raise DataError(path, f"not a recmovie checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DataError(path, f"not a recmovie checkpoint of format {CHECKPOINT_FORMAT} (retrain the run "
                        "with this version)")
    return ckpt


def model_from_yaml(name: str, **overrides: Any) -> Recommender:
    """The model `train.py model=<name>` builds (conf/model/<name>.yaml), with `overrides` over its
    hyper-parameters: the YAML is the one source of a model's defaults, also in code and notebooks."""
    from omegaconf import OmegaConf

    from recmovie.config import CONF_DIR

    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError("model", f"no model config {name!r} ({path}); known: {', '.join(known)}")
    return build_model({**OmegaConf.to_container(OmegaConf.load(path), resolve=True), **overrides})
