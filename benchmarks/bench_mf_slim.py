"""Figures of the MF / neighbourhood / SLIM issue, printed (never asserted):

  quality: each model's DEFAULT config on the ml-100k black-box benchmark (train.py split=none on
           its input/, scored by the benchmark's own scorer): Recall@10, fit seconds, peak RSS;
  scale:   each model end to end (train.py split=none) at the competition's size on synthetic data,
           one process per model: fit and ranking seconds, peak RSS. BPR-MF is timed over
           --bpr-epochs epochs (its per-epoch cost; a full run is max_epochs of them);
  ratio:   the EASE variants' fit time relative to EASE's, fitted in turn in one process,
           --repeats times (medians: on a shared machine single runs vary severalfold).

    python benchmarks/bench_mf_slim.py [--quality] [--scale] [--ratio] [--models als,bpr_mf,...]
                                       [--bench ../shared/bench/ml-100k] [--bpr-epochs 1]
                                       [--repeats 3] [--work DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import BENCH, REPO, median, run_measured, score, stamp, timings

sys.path.insert(0, str(REPO))  # the ratio part imports recmovie: this checkout's, not an installed one

MODELS = ["popularity", "ease", "edlae", "admm_slim", "als", "bpr_mf", "userknn", "itemknn"]
EASE_VARIANTS = ["edlae", "admm_slim"]


def train_args(work: Path, name: str, data: list[str], *overrides: str) -> list[str]:
    return [str(REPO / "train.py"), *data, "split=none", *overrides, f"hydra.run.dir={work / 'runs' / name}",
            f"paths.cache_dir={work / 'cache'}", f"tracking.uri=sqlite:///{work / 'mlruns' / 'mlflow.db'}"]


def quality(work: Path, bench: Path, models: list[str]) -> None:
    print(f"\n## ml-100k benchmark ({bench}), default configs, split=none on input/\n")
    print("| model | Recall@10 (hidden) | fit s | wall s | peak RSS MB |\n|---|---|---|---|---|")
    for m in models:
        name = f"quality-{m}"
        r = run_measured(train_args(work, name, ["data=competition", f"data.dir={bench / 'input'}"], f"model={m}"),
                         REPO, work / "logs" / f"{name}.log")
        rec = score(work / "runs" / name / "submission.csv", bench)
        fit = timings(r["stdout"]).get("fit_seconds", float("nan"))
        print(f"| {m} | {rec:.4f} | {fit:.2f} | {r['wall']:.1f} | {r['rss_mb']:.0f} |", flush=True)


def scale(work: Path, models: list[str], bpr_epochs: int) -> None:
    print("\n## competition size (data=synthetic: 31,360 users, 6,807 items, 5.15M interactions), split=none\n")
    data = ["data=synthetic"]
    # fill the prepared-data cache first, so that no model's figures include generating the data
    run_measured(train_args(work, "scale-warmup", data, "model=popularity"), REPO, work / "logs" / "scale-warmup.log")
    print("| model | fit s | rank s | wall s | peak RSS MB |\n|---|---|---|---|---|")
    for m in models:
        # split@validation=none: BPR-MF trains the epochs asked for, with no probe before a refit
        extra = [f"model.max_epochs={bpr_epochs}", "split@validation=none"] if m == "bpr_mf" else []
        name = f"scale-{m}"
        r = run_measured(train_args(work, name, data, f"model={m}", *extra), REPO, work / "logs" / f"{name}.log")
        t = timings(r["stdout"])
        label = f"{m} ({bpr_epochs} epoch{'s' if bpr_epochs > 1 else ''})" if m == "bpr_mf" else m
        print(f"| {label} | {t['fit_seconds']:.1f} | {t['predict_seconds']:.1f} | {r['wall']:.1f} | "
              f"{r['rss_mb']:.0f} |", flush=True)


def ratio(work: Path, repeats: int) -> None:
    """Fit EASE and its variants in turn in this process (same data, same moment of the machine)."""
    import time

    from omegaconf import OmegaConf

    from recmovie.config import CONF_DIR
    from recmovie.data.prepare import prepare_data
    from recmovie.models.base import build_model
    from recmovie.schema import Schema

    data = prepare_data(OmegaConf.load(CONF_DIR / "data" / "synthetic.yaml"), OmegaConf.create({"name": "none"}),
                        OmegaConf.load(CONF_DIR / "confidence" / "none.yaml"), work / "cache")
    names = ["ease", *EASE_VARIANTS]
    fits: dict[str, list[float]] = {m: [] for m in names}
    for _ in range(repeats):
        for m in names:
            model = build_model(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{m}.yaml")))
            model.build(Schema.from_data(data))
            t0 = time.perf_counter()
            model.fit(data)
            fits[m].append(time.perf_counter() - t0)
            del model
    print(f"\n## fit time relative to EASE at competition size, {repeats} rounds in one process\n")
    print("| model | fit s (median) | all rounds | median / EASE median |\n|---|---|---|---|")
    for m in names:
        print(f"| {m} | {median(fits[m]):.1f} | {', '.join(f'{x:.1f}' for x in fits[m])} | "
              f"{median(fits[m]) / median(fits['ease']):.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--bench", type=Path, default=BENCH, help="benchmark folder: input/, hidden.csv, train.csv")
    ap.add_argument("--ratio", action="store_true")
    ap.add_argument("--bpr-epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp") / f"bench_mf_slim-{stamp()}")
    a = ap.parse_args()
    models = [m for m in a.models.split(",") if m]
    every = not (a.quality or a.scale or a.ratio)
    print(f"work folder: {a.work}")
    if a.quality or every:
        quality(a.work, a.bench.resolve(), models)
    if a.scale or every:
        scale(a.work, models, a.bpr_epochs)
    if a.ratio or every:
        ratio(a.work, a.repeats)


if __name__ == "__main__":
    main()
