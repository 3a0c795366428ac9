"""Two runs' submissions compared user by user on a black-box benchmark's hidden truth, printed:
per part (all, last, random), the mean of B's Recall@10 minus A's over the users and its standard
error. The standard error of a difference between two runs scored on the same users is far smaller
than either run's own (the users' difficulty cancels), so this says whether a gap is more than noise
in which users were drawn; what it cannot say is how much a gap moves with the runs' own seeds:
give several seeded pairs, and the last line is the mean gap over them with its spread.

    python benchmarks/paired.py --bench ../shared/bench/beauty A.csv B.csv [A2.csv B2.csv ...]

Recall@10 as the competition and the benchmark's scorer define it: |top10 ∩ hidden| / min(10, |hidden|)
per user, over the users with hidden items in that part.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from recmovie.data.split import PART_NAMES, Holdout
from recmovie.evaluation.metrics import user_recalls

PARTS = ("all", "last", "random")


def per_user_recall(submission: Path, hidden: pd.DataFrame, k: int = 10) -> dict[str, pd.Series]:
    """Each part's per-user Recall@k of `submission` (the evaluation's own `user_recalls`), indexed by user."""
    top = pd.read_csv(submission).groupby("user", sort=False).head(k)
    users = pd.Index(pd.unique(pd.concat([hidden["user"], top["user"]])))
    items = pd.Index(pd.unique(pd.concat([hidden["item"], top["item"]])))
    rows = pd.Index(pd.unique(top["user"]))
    lists = np.full((len(rows), k), -1, np.int64)  # a user listing fewer than k items: -1 never hits
    lists[rows.get_indexer(top["user"]), top.groupby("user", sort=False).cumcount()] = items.get_indexer(top["item"])
    code = {name: c for c, name in PART_NAMES.items()}
    holdout = Holdout(users.get_indexer(hidden["user"]), items.get_indexer(hidden["item"]),
                      hidden["part"].map(code).fillna(-1).to_numpy(np.int8))
    out = {}
    for part in PARTS:
        h = holdout if part == "all" else Holdout(*(a[holdout.part == code[part]] for a in
                                                     (holdout.user, holdout.item, holdout.part)))
        who, recall = user_recalls(lists, users.get_indexer(rows), h, len(users), k)
        out[part] = pd.Series(recall, index=users[who])
    return out


def label(submission: Path) -> str:
    """A run's folder for its submission.csv, else the file's own name."""
    return submission.parent.name if submission.name == "submission.csv" else submission.stem


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", type=Path, required=True, help="a folder with hidden.csv (user,item,part)")
    p.add_argument("submissions", type=Path, nargs="+", help="pairs: A B [A2 B2 ...]; each difference is B - A")
    args = p.parse_args()
    if len(args.submissions) % 2:
        p.error("submissions come in pairs (A B), one pair per seed")
    hidden = pd.read_csv(args.bench / "hidden.csv")
    gaps = {part: [] for part in PARTS}
    print("| pair | " + " | ".join(f"{part}: B - A (± se)" for part in PARTS) + " |")
    print("|---|" + "---|" * len(PARTS))
    for a, b in zip(args.submissions[::2], args.submissions[1::2]):
        ra, rb = per_user_recall(a, hidden), per_user_recall(b, hidden)
        cells = []
        for part in PARTS:
            d = rb[part] - ra[part]
            gaps[part].append(d.mean())
            cells.append(f"{d.mean():+.4f} (± {d.std(ddof=1) / np.sqrt(len(d)):.4f})")
        print(f"| {label(a)} vs {label(b)} | " + " | ".join(cells) + " |")
    if len(gaps["all"]) > 1:
        print(f"| mean over {len(gaps['all'])} pairs (sd across pairs) | " + " | ".join(
            f"{np.mean(g):+.4f} (sd {np.std(g, ddof=1):.4f})" for g in gaps.values()) + " |")


if __name__ == "__main__":
    main()
