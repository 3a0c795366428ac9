"""Two-stage recommendation: the union of tracked runs' top-N candidates, re-ranked by a learned
ranker (LightGBM LambdaRank), as `ensemble.py method=rerank`
(recmovie/ensemble/command.py).

Leakage: the ranker learns from the members' VALIDATION candidates (`val_candidates.csv`: each
member as fitted without the validation part, its history the fit part), labelled by the
validation part; it then ranks the members' final candidates (`candidates.csv`: the members as
fitted for the test ranking or the submission, the whole training part as history). Every feature
is computed from the history the candidates were ranked with, so neither the validation labels nor
the test part ever enter a feature. LightGBM's early stopping holds out a share of the validation
users (`rerank.valid_share`); the test part is only scored.

Features of a (user, candidate) pair, `FEATURES`:
  m<i>_score, m<i>_rank  each member's min-max normalised score and rank (top_n + 1: not listed)
  n_listed               how many members listed the candidate
  item_pop, item_recent  log(1 + the candidate's interactions), overall and in the newest
                         `rerank.recent_share` of the history (by time)
  item_at_user_time      log(1 + the candidate's interactions in the `rerank.window_days` before the
                         user's last interaction): what was being watched when the user was last seen
  year_gap               the user's last interaction year minus the candidate's release year
                         (NaN without years.tsv)
  user_len               log(1 + the user's history length)
  user_idle_days         days from the user's last interaction to the newest one in the data
  genre_share            mean, over the candidate's genres, of the share of the user's history
                         in that genre (NaN without genres.tsv)
  after_last, after_recent
                         how often the candidate came within `rerank.sequence_window` steps after
                         the user's last item (after_last) or, summed, after each of the user's
                         `rerank.recent_items` last items (after_recent), in everyone's histories
                         ordered by time, as a share of that item's followers: the sequential
                         signal (what users watch next) that the members' scores mostly lack, for
                         the holdout's last items
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from recmovie.data.prepare import PreparedData
from recmovie.data.split import PART_LAST
from recmovie.ensemble.guard import held_out_folds
from recmovie.ensemble.pool import Pool, hidden_rows
from recmovie.errors import ConfigError

log = logging.getLogger(__name__)

DAY = 86400
CONTEXT_FEATURES = ("n_listed", "item_pop", "item_recent", "item_at_user_time", "year_gap", "user_len",
                    "user_idle_days", "genre_share", "after_last", "after_recent")


def feature_names(n_members: int) -> list[str]:
    return [f"m{i}_{kind}" for i in range(n_members) for kind in ("score", "rank")] + list(CONTEXT_FEATURES)


def pair_features(pool: Pool, data: PreparedData, recent_share: float = 0.1, window_days: float = 30.0,
                  sequence_window: int = 3, recent_items: int = 5) -> np.ndarray:
    """[rows, features] float32 for every pool row (see the module docstring); `data` is the
    history the pool's candidates were ranked with."""
    users, items = pool.users.astype(np.int64), pool.items.astype(np.int64)
    n_items = data.n_items
    cols = []
    for m in range(pool.ranks.shape[1]):
        cols += [pool.scores[:, m], pool.ranks[:, m]]
    cols.append((pool.ranks <= pool.top_n).sum(1))
    t_item, t_time = data.train_item.astype(np.int64), data.train_time.astype(np.int64)
    cols.append(np.log1p(np.bincount(t_item, minlength=n_items))[items])
    cut = np.quantile(t_time, 1 - recent_share) if len(t_time) else 0
    cols.append(np.log1p(np.bincount(t_item[t_time >= cut], minlength=n_items))[items])
    # interactions of the item in (last - window, last] of each pair's user: two binary searches in
    # the training rows sorted by (item, time), keyed item * 2^40 + seconds since the first row
    t0 = t_time.min(initial=0)
    key = np.sort(t_item * (1 << 40) + (t_time - t0))
    last = data.user_last_time
    base = items * (1 << 40) - t0
    hi = base + last[users]
    count = np.searchsorted(key, hi, "right") - np.searchsorted(key, hi - int(window_days * DAY), "right")
    cols.append(np.log1p(count))
    years = data.dataset.item_years()
    cols.append(data.user_last_year[users] - years[items])
    length = np.bincount(data.train_user, minlength=data.n_users)
    cols.append(np.log1p(length)[users])
    cols.append(((t_time.max(initial=0) - last) / DAY)[users])
    genre = data.side_matrix("genre")
    if genre is not None and genre.shape[1]:
        g = genre.tocsr().astype(np.float32)
        user_genre = np.asarray((data.train_matrix.astype(bool).astype(np.float32) @ g).todense())  # [users, genres]
        share = user_genre / np.maximum(length, 1)[:, None]
        item_genre = np.asarray(g.todense()) > 0  # [items, genres]
        n_genres = item_genre.sum(1)
        total = np.zeros(len(items), np.float32)
        for j in range(g.shape[1]):  # one genre at a time: never a [pairs, genres] array
            total += np.where(item_genre[items, j], share[users, j], 0.0)
        cols.append(np.where(n_genres[items] > 0, total / np.maximum(n_genres[items], 1), np.nan))
    else:
        cols.append(np.full(len(items), np.nan))
    cols += sequence_features(pool, data, sequence_window, recent_items)
    return np.column_stack(cols).astype(np.float32)


def sequence_features(pool: Pool, data: PreparedData, window: int, recent: int) -> list[np.ndarray]:
    """after_last and after_recent (module docstring). The followers' table is kept as sorted
    (item, follower) keys with their shares and read by binary search for each pool row: a sparse
    users x items product would hold every follower of every user's recent items at once."""
    n = data.n_items
    user, item = data.train_user.astype(np.int64), data.train_item.astype(np.int64)  # by user, then time
    before, after = [], []
    for d in range(1, window + 1):
        same = user[:-d] == user[d:]
        before.append(item[:-d][same])
        after.append(item[d:][same])
    keys, counts = np.unique(np.concatenate(before) * n + np.concatenate(after), return_counts=True)
    followers = np.bincount(keys // n, weights=counts, minlength=n)
    share = counts / np.maximum(followers[keys // n], 1)
    ends = np.cumsum(np.bincount(user, minlength=data.n_users))
    starts = ends - np.bincount(user, minlength=data.n_users)
    users, items = pool.users.astype(np.int64), pool.items.astype(np.int64)
    shares = []
    for back in range(1, recent + 1):  # the user's last item, then the one before it, ...
        row = ends[users] - back
        has = row >= starts[users]
        query = item[np.where(has, row, 0)] * n + items
        pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        shares.append(np.where(has & (keys[pos] == query), share[pos], 0.0) if len(keys) else np.zeros(len(users)))
    return [shares[0], np.sum(shares, axis=0)]


def labels(pool: Pool, data: PreparedData, last_gain: float = 1.0) -> np.ndarray:
    """1 where the pool's pair is in `data`'s holdout, else 0; with `last_gain` != 1, 2 where it is in
    the holdout's last part (`ranker_params` gives label 2 that gain)."""
    y = hidden_rows(pool, data).astype(np.int32)
    if last_gain != 1:
        if not (data.holdout.part == PART_LAST).any():
            raise ConfigError("rerank.last_gain", "the validation part has no last items to weigh "
                              "(the members' validation carve hides them with split@validation=competition "
                              "and validation.n_last >= 1); leave it at 1")
        y[hidden_rows(pool, data, PART_LAST)] = 2
    return y


def ranker_params(cfg) -> dict:
    """LightGBM's parameters: LambdaRank, early-stopped on NDCG@k, `rerank.params` on top. A hidden item's
    gain is 1 (label 1), and `rerank.last_gain` for one of the last part (label 2, see `labels`)."""
    gain = {"label_gain": [0.0, 1.0, float(cfg["last_gain"])]} if float(cfg.get("last_gain", 1)) != 1 else {}
    return {"objective": "lambdarank", "metric": "ndcg", "eval_at": [int(cfg["k"])], "verbosity": -1,
            "seed": int(cfg["seed"]), "deterministic": True, "force_col_wise": True, "num_threads": int(cfg["threads"]),
            **gain, **dict(cfg["params"])}


@dataclass
class Ranker:
    boosters: list  # lightgbm.Booster, one per fold of the validation users
    rounds: list[int]  # each booster's best round
    held: list[np.ndarray]  # each booster's held-out validation users (dense ids): its early stopping
    names: list[str]
    val_ndcg: float  # the boosters' held-out NDCG@k, averaged

    @property
    def held_users(self) -> np.ndarray:
        """Every validation user some booster held out (all of them with several folds)."""
        return np.unique(np.concatenate(self.held))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The boosters' scores, averaged."""
        return np.mean([b.predict(x, num_iteration=r) for b, r in zip(self.boosters, self.rounds)], axis=0)

    def out_of_fold(self, x: np.ndarray, users: np.ndarray) -> np.ndarray:
        """`predict`, except that each held-out user's rows are scored by the booster that held the
        user out (never trained on them): what the guard judges."""
        values, covered = np.zeros(len(x)), np.zeros(len(x), bool)
        for booster, rounds, held in zip(self.boosters, self.rounds, self.held):
            rows = np.isin(users, held)
            if rows.any():
                values[rows], covered[rows] = booster.predict(x[rows], num_iteration=rounds), True
        if not covered.all():
            values[~covered] = self.predict(x[~covered])
        return values

    def importances(self) -> dict[str, float]:
        gain = np.sum([b.feature_importance("gain", iteration=r) for b, r in zip(self.boosters, self.rounds)], axis=0)
        return dict(zip(self.names, (float(v) for v in gain)))


def round_report(total: int, every: int = 50):
    """A LightGBM callback: a log line every `every` rounds with the held-out NDCG and the time left
    at most (early stopping may end sooner)."""
    t0 = time.perf_counter()

    def report(env) -> None:
        done = env.iteration + 1
        if done % every:
            return
        spent = time.perf_counter() - t0
        value = env.evaluation_result_list[0][2] if env.evaluation_result_list else float("nan")
        log.info("ranker: round %d/%d, held-out NDCG %.4f, %.0f s so far, at most %.0f s left",
                 done, total, value, spent, spent / done * (total - done))

    return report


def fit_ranker(x: np.ndarray, y: np.ndarray, users: np.ndarray, names: list[str], cfg) -> Ranker:
    """LambdaRank on the validation users' candidates, one booster per set of held-out users
    (`held_out_folds`), each early-stopped (NDCG@k) on the users it holds out; the boosters'
    scores are averaged. Users with no hidden item among their candidates teach a ranker nothing
    and are left out of every LightGBM set."""
    try:
        import lightgbm as lgb
    except ImportError:
        raise ConfigError("method", "rerank needs lightgbm: pip install lightgbm") from None
    positives = np.bincount(users, weights=y, minlength=int(users.max(initial=0)) + 1)
    useful = positives[users] > 0
    k, params = int(cfg["k"]), ranker_params(cfg)

    def dataset(mask, reference=None):
        # rows are grouped by user already (the pool is sorted by user, then item)
        _, counts = np.unique(users[mask], return_counts=True)
        return lgb.Dataset(x[mask], y[mask], group=counts, feature_name=names, reference=reference,
                           free_raw_data=False)

    helds = held_out_folds(users, cfg.get("folds", 1), float(cfg["valid_share"]), int(cfg["seed"]))
    boosters, rounds, ndcgs = [], [], []
    n_users = len(np.unique(users))
    for held in helds:
        in_held = np.isin(users, held)
        for name, mask in (("training", useful & ~in_held), ("held-out", useful & in_held)):
            if len(np.unique(users[mask])) < 5:
                raise ConfigError("method", f"rerank: only {len(np.unique(users[mask]))} {name} validation users "
                                  "have a hidden item among the candidates; raise top_n, add members or validation users")
        train = dataset(useful & ~in_held)
        evals: dict = {}
        booster = lgb.train(params, train, num_boost_round=int(cfg["rounds"]),
                            valid_sets=[dataset(useful & in_held, train)], valid_names=["valid"],
                            callbacks=[lgb.early_stopping(int(cfg["patience"]), verbose=False),
                                       lgb.record_evaluation(evals), round_report(int(cfg["rounds"]))])
        best = booster.best_iteration or booster.current_iteration()
        curve = evals["valid"][f"ndcg@{k}"]
        log.info("ranker %d/%d: %d rounds (best of %d), held-out NDCG@%d %.4f on %d of %d validation users",
                 len(boosters) + 1, len(helds), best, len(curve), k, curve[best - 1], len(held), n_users)
        boosters.append(booster), rounds.append(int(best)), ndcgs.append(float(curve[best - 1]))
    return Ranker(boosters, rounds, helds, names, float(np.mean(ndcgs)))


def fit_ranker_on(val_pool: Pool, val_data: PreparedData, pool: Pool, data: PreparedData, cfg, k: int
                  ) -> tuple[Ranker, np.ndarray, np.ndarray]:
    """Learn the ranker on the validation pool (labelled by `val_data`'s holdout), then score both
    pools: (ranker, one value per `val_pool` row, one value per `pool` row)."""
    r = OmegaConf.to_container(cfg, resolve=True)
    knobs = dict(recent_share=float(r["recent_share"]), window_days=float(r["window_days"]),
                 sequence_window=int(r["sequence_window"]), recent_items=int(r["recent_items"]))
    names = feature_names(val_pool.ranks.shape[1])
    exclude = set(r.get("exclude") or [])
    if exclude - set(names):
        raise ConfigError("rerank.exclude",
                          f"unknown features {sorted(exclude - set(names))}; features: {', '.join(names)}")
    cols = [j for j, name in enumerate(names) if name not in exclude]
    x_val = pair_features(val_pool, val_data, **knobs)[:, cols]
    ranker = fit_ranker(x_val, labels(val_pool, val_data, float(r["last_gain"])), val_pool.users, [names[j] for j in cols], {**r, "k": k})
    fused = ranker.predict(pair_features(pool, data, **knobs)[:, cols])
    return ranker, ranker.out_of_fold(x_val, val_pool.users), fused


def check_rerank_config(r) -> None:
    """The `rerank` section's values, each named by its key."""
    for key, ok, want in (("recent_share", lambda v: 0 < v <= 1, "a number in (0, 1]"),
                          ("window_days", lambda v: v > 0, "a number > 0"),
                          ("sequence_window", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
                          ("recent_items", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
                          ("valid_share", lambda v: 0 < v < 1, "a number in (0, 1)"),
                          ("last_gain", lambda v: v > 0, "a number > 0"),
                          ("folds", lambda v: isinstance(v, int) and v >= 1, "auto or an integer >= 1"),
                          ("rounds", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
                          ("patience", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
                          ("threads", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
                          ("seed", lambda v: isinstance(v, int), "an integer")):
        value = r.get(key)
        if key == "folds" and value == "auto":
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
            raise ConfigError(f"rerank.{key}", f"must be {want}, got {value!r}")
    if r.get("last_gain") != 1 and "label_gain" in (r.get("params") or {}):
        raise ConfigError("rerank.last_gain", "rerank.params.label_gain sets the gains as well: set one of the two")


def save_ranker(ranker: Ranker, folder: Path) -> list[Path]:
    """The boosters (LightGBM's text format; ranker-<fold>.txt with several folds), the feature
    importances summed over them (csv) and their plot (png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    models = [folder / (f"ranker-{f}.txt" if len(ranker.boosters) > 1 else "ranker.txt")
              for f in range(len(ranker.boosters))]
    for booster, rounds, path in zip(ranker.boosters, ranker.rounds, models):
        booster.save_model(str(path), num_iteration=rounds)
    imp = pd.Series(ranker.importances()).sort_values()
    table = folder / "feature_importances.csv"
    imp.rename("gain").rename_axis("feature").reset_index().iloc[::-1].to_csv(table, index=False)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(imp) + 1))
    ax.barh(imp.index, imp.to_numpy())
    ax.set_xlabel("total gain")
    ax.set_title("re-ranker feature importances")
    fig.tight_layout()
    plot = folder / "feature_importances.png"
    fig.savefig(plot, dpi=100)
    plt.close(fig)
    return [*models, table, plot]
