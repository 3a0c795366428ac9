"""Config helpers: the `${sample_dir:}` and `${run_token:}` resolvers and validation that runs before any work."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recmovie.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("sample_dir"):
        from recmovie.data.prepare import sample_dir

        OmegaConf.register_new_resolver("sample_dir", lambda: str(sample_dir()))
    if not OmegaConf.has_resolver("run_token"):
        # run folders are named by the second they start in: the process id and random digits keep
        # two runs started in the same second apart. Cached like `now`, so that every reference in a
        # config (and Hydra's copy of it for each sweep job) gets the same token.
        OmegaConf.register_new_resolver("run_token", lambda: f"{os.getpid():x}{secrets.token_hex(2)}",
                                        use_cache=True)


register_resolvers()


_ABSENT = object()
KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def is_kind(value: object, kind: type) -> bool:
    """Whether a config value is of `kind` (int, float, bool or str); an int is a number, a bool is
    neither an int nor a number (YAML's `true` is no count)."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def check_value(cfg: DictConfig, key: str, kind: type, minimum: float | None = None, optional: bool = False):
    """A ConfigError naming `key` unless its value is of `kind` (and >= `minimum`); an absent key
    passes (a group that does not have it), None passes when `optional`."""
    if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
        return None
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return None
    bound = f" >= {minimum}" if minimum is not None else ""
    if not is_kind(value, kind) or (minimum is not None and value < minimum):
        raise ConfigError(key, f"must be {KIND_NAMES[kind]}{bound}{' or null' if optional else ''}, got {value!r}")
    return value


def check_ranking_config(cfg: DictConfig) -> tuple[int, int]:
    """`eval.k` (list length scored and submitted) and `candidates.n` (depth of candidates.csv,
    >= k); `eval.chunk_size` where the command has it. Returns (k, n)."""
    k = check_value(cfg, "eval.k", int, 1)
    check_value(cfg, "eval.chunk_size", int, 1)
    n = check_value(cfg, "candidates.n", int, 1)
    if n < k:
        raise ConfigError("candidates.n", f"must be >= eval.k ({k}), got {n}")
    return k, n


# top-level values read as numbers or flags somewhere in the run (the groups check their own)
RUN_VALUES = [
    ("seed", int, None, False), ("split.seed", int, None, False), ("validation.seed", int, None, False),
    ("loader.num_workers", int, 0, False), ("trainer.max_epochs", int, 1, True), ("data.cache", bool, None, False),
    ("data.min_rating", float, None, True), ("tracking.enabled", bool, None, False),
    ("tune_extra_points", int, 0, False), ("tune_users", int, 1, True), ("tune_items", int, 1, True),
    *((f"data.{k}", int, None, False) for k in ("n_users", "n_items", "n_interactions", "seed")),
]


def check_run_config(cfg: DictConfig) -> None:
    """Everything but the model (whose constructor checks its own values): fail before reading data."""
    from recmovie.data.confidence import check_confidence_config
    from recmovie.data.prepare import check_data_config

    for key, kind, minimum, optional in RUN_VALUES:
        check_value(cfg, key, kind, minimum, optional)
    check_ranking_config(cfg)
    check_data_config(cfg.data)
    _check_split(cfg.split, "split")
    _check_split(cfg.validation, "validation")
    if cfg.refit not in ("auto", True, False):
        raise ConfigError("refit", f"must be auto, true or false, got {cfg.refit!r}")
    if cfg.refit is True and cfg.validation.name == "none":
        raise ConfigError("refit", "needs a validation part to select on (validation=none): split@validation=competition")
    if not isinstance(cfg.get("save_val_model", False), bool):
        raise ConfigError("save_val_model", f"must be true or false, got {cfg.save_val_model!r}")
    check_confidence_config(cfg.confidence)


def _check_split(split: DictConfig, key: str) -> None:
    if split.name not in ("competition", "none", "given"):
        raise ConfigError(f"{key}.name", f"unknown split {split.name!r}")
    if split.name == "competition":
        for name in ("n_last", "n_random"):
            v = split[name]
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"{key}.{name}", f"must be an integer >= 0, got {v!r}")
        if split.n_last + split.n_random == 0:
            raise ConfigError(key, "n_last + n_random is 0: nothing would be hidden (use split=none)")
    if split.name == "given" and not Path(str(split.path)).is_file():
        raise ConfigError(f"{key}.path", f"file not found: {split.path}")
