"""Figures of the foundation issue, printed (never asserted):

  quality: the foundation models' DEFAULT configs on the ml-100k black-box benchmark
           (train.py split=none on its input/, scored by the benchmark's own scorer);
  scale:   `train.py model=ease split=none` end to end at the competition's size (synthetic data
           written as a competition folder), cold and warm cache, and warm with tune=false: wall,
           peak RSS, ranking and data seconds; beside it, run alternately in the same session, a
           plain numpy/scipy EASE.
  catalogue: `train.py model=ease split=none` at 20k items (data=synthetic, 30,000 users, 1.2M rows):
           tune on the popular items (the default, tune_items), one fit (tune=false), and the full
           grid (tune_items=null): wall, peak RSS, tune seconds and the l2 each tune chose.

    python benchmarks/bench_foundation.py [--quality] [--scale] [--catalogue] [--repeats 3] [--work DIR]
                                          [--baseline /tmp/old]   # git worktree add /tmp/old <rev>
"""
from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from common import BENCH, REPO, median, run_measured, score, timings

MODELS = ["popularity", "genre_rule", "ease", "itemknn"]


def train_args(work: Path, name: str, data_dir: Path, *overrides: str, cache: Path | None = None,
               repo: Path = REPO) -> list[str]:
    return [str(repo / "train.py"), "data=competition", f"data.dir={data_dir}", "split=none", *overrides,
            f"hydra.run.dir={work / 'runs' / name}", f"paths.cache_dir={cache or work / 'cache'}",
            f"tracking.uri=sqlite:///{work / ('mlruns-' + repo.name) / 'mlflow.db'}"]


def quality(work: Path, models: list[str]) -> None:
    print(f"\n## ml-100k benchmark ({BENCH}), default configs, split=none on input/\n")
    print("| model | Recall@10 (hidden) | fit s | wall s |\n|---|---|---|---|")
    for m in models:
        r = run_measured(train_args(work, m, BENCH / "input", f"model={m}"), REPO, work / "logs" / f"{m}.log")
        rec = score(work / "runs" / m / "submission.csv")
        print(f"| {m} | {rec:.4f} | {timings(r['stdout']).get('fit_seconds', float('nan')):.2f} | {r['wall']:.1f} |", flush=True)


def synthetic_folder(work: Path) -> Path:
    folder = work / "synthetic-competition"
    if not (folder / "train_ratings.csv").exists():
        from recmovie.data.synthetic import generate_synthetic, write_competition_folder

        write_competition_folder(generate_synthetic(), folder)
    return folder


def scale(work: Path, repeats: int, baseline: Path | None = None) -> None:
    """EASE end to end, cold and warm cache, alternated with the plain numpy/scipy EASE (and, with
    `baseline`, with another checkout of recmovie, e.g. `git worktree add /tmp/old <rev>`)."""
    folder = synthetic_folder(work)
    trees = {"recmovie": REPO, **({f"baseline ({baseline})": baseline} if baseline else {})}
    kinds = {"cold cache": [], "warm cache": [], "warm cache, tune=false": ["tune=false"]}
    rows: dict[str, list[dict]] = {f"{t}, {kind}": [] for t in trees for kind in kinds}
    rows["reference"] = []
    for r in range(repeats):
        for t, repo in trees.items():
            cache = work / f"cache-{repo.name}-{r}"
            shutil.rmtree(cache, ignore_errors=True)
            for kind, extra in kinds.items():
                name = f"ease-{repo.name}-{kind.split()[0]}{'-notune' if extra else ''}-{r}"
                m = run_measured(train_args(work, name, folder, "model=ease", *extra, cache=cache, repo=repo), repo,
                                 work / "logs" / f"{name}.log")
                rows[f"{t}, {kind}"].append({**m, **timings(m["stdout"])})
        m = run_measured([str(REPO / "benchmarks" / "reference_ease.py"), str(folder), str(work / "reference.csv")],
                         REPO, work / "logs" / f"reference-{r}.log")
        rows["reference"].append(m)
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]['wall']:.1f}s" for k, v in rows.items()), flush=True)

    def med(kind: str, key: str) -> float:
        return median([x[key] for x in rows[kind]])

    print(f"\n## EASE end to end at competition size ({folder.name}: 31,360 users, 6,807 items), "
          f"medians of {repeats} alternating runs\n")
    print("| run | wall s | peak RSS MB | data s | fit s | ranking s |\n|---|---|---|---|---|---|")
    for kind in rows:
        if kind != "reference":
            print(f"| {kind} | {med(kind, 'wall'):.1f} | {med(kind, 'rss_mb'):.0f} | {med(kind, 'data_seconds'):.2f} | "
                  f"{med(kind, 'fit_seconds'):.2f} | {med(kind, 'predict_seconds'):.2f} |")
    print(f"| plain numpy/scipy EASE | {med('reference', 'wall'):.1f} | {med('reference', 'rss_mb'):.0f} | | | |\n")
    for t in trees:
        for kind in kinds:
            # the rounds' own ratios too: on shared cores one round can move either side by 20%
            by_round = ", ".join(f"{x['wall'] / ref['wall']:.2f}" for x, ref in zip(rows[f"{t}, {kind}"], rows["reference"]))
            print(f"{t} ({kind}) / plain wall-time ratio: {med(f'{t}, {kind}', 'wall') / med('reference', 'wall'):.2f} "
                  f"(by round: {by_round})")
        if t != "recmovie":
            for kind in kinds:
                ratio = med(f"recmovie, {kind}", "wall") / med(f"{t}, {kind}", "wall")
                print(f"recmovie / {t} ({kind}) wall-time ratio: {ratio:.2f}")


def catalogue(work: Path) -> None:
    """EASE at 20k items: the default tune against one fit and against the full grid (see above)."""
    data = ["data=synthetic", "data.n_users=30000", "data.n_items=20000", "data.n_interactions=1200000",
            "split=none", "model=ease", f"paths.cache_dir={work / 'cache-catalogue'}",
            f"tracking.uri=sqlite:///{work / 'mlruns-catalogue' / 'mlflow.db'}"]
    runs = [("tune, popular items (default)", []), ("one fit (tune=false)", ["tune=false"]),
            ("tune, every item (tune_items=null)", ["tune_items=null"])]
    print("\n## EASE at 20k items (data=synthetic, 30,000 users, 1.2M rows), split=none; the first run "
          "builds the data cache\n")
    print("| run | wall s | peak RSS MB | tune s | l2 chosen |\n|---|---|---|---|---|")
    walls = {}
    for name, extra in runs:
        tag = name.split(" (")[0].replace(" ", "-").replace(",", "")
        m = run_measured([str(REPO / "train.py"), *data, *extra, f"hydra.run.dir={work / 'runs' / tag}"], REPO,
                         work / "logs" / f"catalogue-{tag}.log")
        chose = re.search(r"tune: chose \{'l2': ([0-9.]+)\}.* in ([0-9.]+) s", m["stdout"])
        walls[name] = m["wall"]
        print(f"| {name} | {m['wall']:.1f} | {m['rss_mb']:.0f} | {chose.group(2) if chose else ''} | "
              f"{chose.group(1) if chose else ''} |", flush=True)
    one = walls["one fit (tune=false)"]
    print(f"\ndefault tune / one fit: {walls['tune, popular items (default)'] / one:.2f}; "
          f"full grid / one fit: {walls['tune, every item (tune_items=null)'] / one:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--catalogue", action="store_true", help="EASE's tune at 20k items (about 15 minutes)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another recmovie checkout to alternate with (--scale), e.g. a git worktree of main")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recmovie-bench"))
    a = ap.parse_args()
    both = not (a.quality or a.scale or a.catalogue)
    if a.quality or both:
        quality(a.work, a.models.split(","))
    if a.scale or both:
        scale(a.work, a.repeats, a.baseline)
    if a.catalogue:
        catalogue(a.work)


if __name__ == "__main__":
    main()
