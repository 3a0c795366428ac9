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


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(key, f"must be an integer >= 1, got {value!r}")
    return value


def check_run_config(cfg: DictConfig) -> None:
    """Everything but the model (whose constructor checks its own values): fail before reading data."""
    from recmovie.data.confidence import check_confidence_config
    from recmovie.data.prepare import check_data_config

    k = _positive_int(cfg, "eval.k")
    _positive_int(cfg, "eval.chunk_size")
    n = _positive_int(cfg, "candidates.n")
    if n < k:
        raise ConfigError("candidates.n", f"must be >= eval.k ({k}), got {n}")
    check_data_config(cfg.data)
    _check_split(cfg.split, "split")
    _check_split(cfg.validation, "validation")
    if cfg.refit not in ("auto", True, False):
        raise ConfigError("refit", f"must be auto, true or false, got {cfg.refit!r}")
    if cfg.refit is True and cfg.validation.name == "none":
        raise ConfigError("refit", "needs a validation part to select on (validation=none): split@validation=competition")
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
