"""The guard: a learned combination (searched weights, the re-ranker) is judged on validation users
that nothing it learned from saw, against every member's own order of the same candidates; one
that is not better than the best member by more than the standard error of the difference gives
way to that member's list (`search.fallback`, `rerank.fallback`). Also the pool's recall: the share
of the hidden items that any member listed, the ceiling of any re-ranking. The verdict also
carries each hidden part's Recall@k (last / random) for the combination and every member: where a
combination trades one part for the other (`rerank.last_gain`), validation shows it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recmovie.data.prepare import PreparedData
from recmovie.data.split import Holdout
from recmovie.ensemble.pool import Pool, ranked_lists
from recmovie.evaluation.metrics import evaluate, user_recalls
from recmovie.evaluation.ranking import TopK


def held_out_users(users: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A random `share` of the distinct `users` (dense ids, sorted): validation users kept from what
    learns, for early stopping and for the guard."""
    ids = np.unique(users)
    rng = np.random.default_rng(int(seed))
    return np.sort(rng.choice(ids, max(1, int(round(len(ids) * float(share)))), replace=False))


FOLDS_BELOW = 20_000  # folds=auto: five learners below this many validation users, one from there on


def held_out_folds(users: np.ndarray, folds: int | str, share: float, seed: int) -> list[np.ndarray]:
    """The validation users each learner (a ranker's booster, a weight search) holds out: one random
    `share` of them, or, with `folds` > 1, every user in exactly one of `folds` random parts.
    `folds="auto"`: 5 below FOLDS_BELOW validation users, where one learner learns from few users
    and its held-out share is too small for the guard to tell a gain from noise; 1 from there on,
    where five would cost five times as much for little."""
    ids = np.unique(users)
    folds = (5 if len(ids) < FOLDS_BELOW else 1) if folds == "auto" else int(folds)
    if folds <= 1:
        return [held_out_users(users, share, seed)]
    ids = np.random.default_rng(int(seed)).permutation(ids)
    return [np.sort(ids[f::folds]) for f in range(folds)]


def pool_recall(pool: Pool, data: PreparedData) -> float:
    """The share of `data`'s hidden items (known to the catalogue) that some member listed."""
    hidden = data.holdout
    known = hidden.item >= 0
    if not known.any():
        return float("nan")
    keys = pool.users * data.n_items + pool.items
    return float(np.isin(hidden.user[known].astype(np.int64) * data.n_items + hidden.item[known], keys).mean())


@dataclass
class Verdict:
    """The guard's figures on the held-out validation users."""

    combined: float  # the combination's Recall@k
    members: list[float]  # each member's own order of the same candidates
    best: int  # the best member (index)
    margin: float  # combined - best member's
    se: float  # standard error of the per-user difference
    users: int
    parts: dict = field(default_factory=dict)  # hidden part -> (the combination's Recall@k, each member's)

    @property
    def passed(self) -> bool:
        return self.margin > self.se

    def line(self, name: str, k: int, members: list[str] | None = None, users: str = "held-out validation users",
             passed: str = "kept") -> str:
        """One line for the summary; `members` names them (else their index), `users` whom it was
        judged on, `passed` what a pass means."""
        verdict = passed if self.passed else "not better than the best member by more than its standard error"
        best = members[self.best] if members else f"member {self.best}"
        return (f"guard: {name} on {self.users} {users}: Recall@{k} {self.combined:.4f} against the "
                f"best member's ({best}) {self.members[self.best]:.4f}, difference "
                f"{self.margin:+.4f} ± {self.se:.4f}: {verdict}")

    def parts_line(self, members: list[str]) -> str | None:
        """The same users' Recall@k on each hidden part: the combination's and the best member's there."""
        if not self.parts:
            return None
        said = []
        for part, (combined, each) in self.parts.items():
            best = int(np.argmax(each))
            said.append(f"{part} {combined:.4f} (best member there: {members[best]} {each[best]:.4f})")
        return f"parts on the same users: {', '.join(said)}"


def judge(pool: Pool, values: np.ndarray, data: PreparedData, users: np.ndarray, k: int) -> Verdict:
    """The combination's order of `pool` (one value per row, higher is better) against each
    member's own order (its ranks), on `users` (validation users nothing learned from)."""
    sub = pool.subset(users)
    rows = np.isin(pool.users, users)
    holdout = data.holdout.of_users(users)

    lists = [ranked_lists(sub, order, data, k, k)[0]
             for order in [values[rows], *(-sub.ranks[:, m] for m in range(pool.ranks.shape[1]))]]
    return compare_lists(lists, holdout, data.n_users, k)


def compare_lists(lists: list[TopK], holdout: Holdout, n_users: int, k: int) -> Verdict:
    """The verdict on `holdout`'s users from the combination's lists (first) and each member's."""
    recalls = [user_recalls(t.items, t.users, holdout, n_users, k)[1] for t in lists]
    verdict = compare(recalls[0], recalls[1:])
    figures = [evaluate(t.items, t.users, holdout, n_users, k) for t in lists]
    for part in ("last", "random"):
        key = f"recall_at_{k}_{part}"
        if key in figures[0]:
            verdict.parts[part] = (figures[0][key], [f[key] for f in figures[1:]])
    return verdict


def compare(combined: np.ndarray, members: list[np.ndarray]) -> Verdict:
    """The verdict from per-user Recall@k (the same users, the same order) of the combination and of
    each member."""
    best = int(np.argmax([r.mean() for r in members]))
    diff = combined - members[best]
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
    return Verdict(float(combined.mean()), [float(r.mean()) for r in members], best, float(diff.mean()), se,
                   len(combined))


def verdict_metrics(v: Verdict, k: int) -> dict[str, float]:
    """The guard's figures as run metrics."""
    out = {f"val_held_recall_at_{k}": v.combined, f"val_held_recall_at_{k}_best_member": v.members[v.best],
           "guard_margin": v.margin, "guard_se": v.se, "guard_passed": float(v.passed), "val_held_users": float(v.users)}
    out.update({f"val_held_recall_at_{k}_member{m}": r for m, r in enumerate(v.members)})
    for part, (combined, each) in v.parts.items():
        out[f"val_held_recall_at_{k}_{part}"] = combined
        out.update({f"val_held_recall_at_{k}_{part}_member{m}": r for m, r in enumerate(each)})
    return out
