"""Weight search: the weight vector that maximises an objective, by grid or Optuna.

It knows nothing of how the weights are used: the caller passes `objective(w) -> float` (a
validation Recall@k of some fusion), so one search serves every weighted method.
"""
from __future__ import annotations

import itertools
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from recmovie.errors import ConfigError

log = logging.getLogger(__name__)

SEARCHES = ("grid", "optuna")


class Progress:
    """A log line every `every` trials (and after the last): trials done, the best value so far and
    the time left, estimated from the mean trial so far."""

    def __init__(self, total: int, every: int = 10):
        self.total, self.every, self.done, self.t0 = total, every, 0, time.perf_counter()

    def step(self, best: float) -> None:
        self.done += 1
        if self.done % self.every and self.done != self.total:
            return
        spent = time.perf_counter() - self.t0
        log.info("weight search: %d/%d tried, best validation Recall %.4f, %.0f s so far, about %.0f s left",
                 self.done, self.total, best, spent, spent / self.done * (self.total - self.done))


def grid_vectors(values, n: int) -> list[np.ndarray]:
    """Every combination of `values` for n members; vectors equal up to scale are kept once."""
    out, seen = [], set()
    for combo in itertools.product([float(v) for v in values], repeat=n):
        w = np.array(combo)
        if not (w > 0).any():
            continue
        key = tuple(np.round(w / w.max(), 9))
        if key not in seen:
            seen.add(key)
            out.append(w)
    return out


def search_weights(objective: Callable[[np.ndarray], float], n: int, search: DictConfig
                   ) -> tuple[np.ndarray, float, int]:
    """The weight vector of n members that maximises `objective`, by `search` (the `search`
    section: method grid | optuna); returns (weights scaled to max 1, best value, trials)."""
    if search.method == "grid":
        vectors = grid_vectors(search.grid, n)
        progress = Progress(len(vectors))
        tried = []
        for w in vectors:
            tried.append((objective(w), w))
            progress.step(max(t[0] for t in tried))
        best_value, best = max(tried, key=lambda t: t[0])  # first best in grid order: deterministic
        return best / best.max(), float(best_value), len(tried)
    try:
        import optuna
    except ImportError:
        raise ConfigError("search.method", "optuna is not installed: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=int(search.seed)))
    with warnings.catch_warnings():  # enqueue_trial is "experimental" in optuna 2.x
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.enqueue_trial({f"w{i}": 1.0 for i in range(n)})

    def trial_value(trial) -> float:
        w = np.array([trial.suggest_float(f"w{i}", 0.0, 1.0) for i in range(n)])
        return objective(w) if (w > 0).any() else 0.0

    progress = Progress(int(search.trials))
    study.optimize(trial_value, n_trials=int(search.trials),
                   callbacks=[lambda study, trial: progress.step(study.best_value)])
    best = np.array([study.best_params[f"w{i}"] for i in range(n)])
    return best / best.max(), float(study.best_value), len(study.trials)


@dataclass
class FoldedSearch:
    """One weight search per fold of the validation users, each on the users its fold does not hold out."""

    weights: np.ndarray  # the folds' weights, each scaled to sum 1, averaged, then scaled to max 1
    fold_weights: list[np.ndarray]  # each fold's own: what judges the users that fold held out
    held: list[np.ndarray]  # the users each fold's search never saw
    best: float  # the folds' best objective values, averaged
    trials: int  # per fold


def search_folds(objective_on: Callable[[np.ndarray], Callable[[np.ndarray], float]], users: np.ndarray,
                 held: list[np.ndarray], n: int, search: DictConfig) -> FoldedSearch:
    """`search_weights` once per set of held-out users (`held`, from guard.held_out_folds), each on
    the rest of `users` (`objective_on(learning users)` is that search's objective). Averaging the
    folds' weights, as the re-ranker averages its boosters, steadies weights that one search on a few
    hundred users draws from its noise; every fusion is unchanged by scaling the weights, so each
    fold's are scaled to sum 1 first."""
    found, bests, trials = [], [], 0
    for f, out in enumerate(held):
        if len(held) > 1:
            log.info("weight search: fold %d/%d", f + 1, len(held))
        weights, best, trials = search_weights(objective_on(np.setdiff1d(users, out)), n, search)
        found.append(weights)
        bests.append(best)
    mean = np.mean([w / w.sum() for w in found], axis=0)
    return FoldedSearch(mean / mean.max(), found, held, float(np.mean(bests)), trials)


def check_search_config(cfg: DictConfig) -> None:
    """The `search` section (and that `weights` are not given beside it)."""
    s = cfg.search
    if s.method is None:
        return
    if s.method not in SEARCHES:
        raise ConfigError("search.method", f"must be null or one of {list(SEARCHES)}, got {s.method!r}")
    if cfg.weights is not None:
        raise ConfigError("weights", "give weights or search.method, not both")
    if s.method == "grid" and (not s.grid or any(not isinstance(v, (int, float)) or v < 0 for v in s.grid)
                               or not any(v > 0 for v in s.grid)):
        raise ConfigError("search.grid", f"must be a list of numbers >= 0, one of them > 0, got {s.grid}")
    folds = s.get("folds", 1)
    if folds != "auto" and (not isinstance(folds, int) or isinstance(folds, bool) or folds < 1):
        raise ConfigError("search.folds", f"must be auto or an integer >= 1, got {folds!r}")
    if s.method == "optuna" and (not isinstance(s.trials, int) or s.trials < 1):
        raise ConfigError("search.trials", f"must be an integer >= 1, got {s.trials!r}")
