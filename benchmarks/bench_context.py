"""Figures of the context-aware models (FM, DeepFM, Wide&Deep, AutoInt), printed (never asserted):

  quality: each model's DEFAULT config with features=ids and features=all on the ml-100k black-box
           benchmark: train.py split=none on its input/ (refit=auto: the epoch count is found on a
           validation part carved from input/, then the model trains on all of it; refit=false as
           an override: the model selected on the validation part is the one submitted), scored on
           hidden.csv by the benchmark's own scorer, with the validation figure. The deep models are
           also re-ranked on a candidate set (EASE's top-50 of the same input) through score_items:
           predict.py run_id=<their run> candidates_from=<EASE's candidates.csv>.
  scale:   competition size (data=synthetic: 31,360 users x 6,807 items, 5.15M interactions, every
           side file), features=all (or --scale-features): each model trained for --steps steps (its ranking does not
           depend on how long it trained), then every user ranked; fit and ranking seconds, peak
           RSS of the whole run. The deep models are also re-ranked on EASE's top-50 there.

    python benchmarks/bench_context.py [--quality] [--scale] [--models fm,deepfm,wide_deep]
                                       [--features ids,all] [--steps 20] [--bench DIR] [--work DIR]
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from bench_autoencoders import selection, train_args
from common import BENCH, REPO, run_measured, score, stamp, timings

MODELS = ["fm", "deepfm", "wide_deep", "autoint"]
DEEP = ("deepfm", "wide_deep", "autoint")
TARGETS = {("fm", "all"): ">= 0.2245", ("fm", "ids"): ">= 0.219", ("autoint", "ids_genre"): ">= 0.1936"}


def rerank_measured(work: Path, name: str, train_stdout: str, candidates: Path) -> dict:
    """predict.py on the run that printed `train_stdout`, re-ranking `candidates` (another run's
    candidates.csv) through score_items, measured; seconds = its ranking alone."""
    run_id = re.search(r"mlflow run: (\w+)", train_stdout).group(1)
    out = work / "runs" / f"{name}-rerank"
    m = run_measured([str(REPO / "predict.py"), f"run_id={run_id}", f"candidates_from={candidates}",
                      f"hydra.run.dir={out}", f"paths.cache_dir={work / 'cache'}",
                      f"tracking.uri=sqlite:///{work / 'mlruns' / 'mlflow.db'}"], REPO, work / "logs" / f"{name}-rerank.log")
    m["seconds"] = timings(m["stdout"])["predict_seconds"]
    m["submission"] = out / "submission.csv"
    return m


def quality(work: Path, bench: Path, models: list[str], feature_sets: list[str], overrides: list[str]) -> None:
    print(f"\n## ml-100k benchmark ({bench}), default configs {' '.join(overrides)}, split=none\n")
    run_measured(train_args(work, "ease", bench / "input", "split=none", "model=ease"), REPO, work / "logs" / "ease.log")
    print("| model | features | Recall@10 hidden | target | validation Recall@10 | best epoch / epochs run "
          "| fit s (probe + refit) | EASE top-50 re-ranked: Recall@10, s |")
    print("|---|---|---|---|---|---|---|---|")
    for m in models:
        for f in feature_sets:
            name = f"{m}-{f}"
            r = run_measured(train_args(work, name, bench / "input", "split=none", f"model={m}", f"features={f}",
                                        *overrides),
                             REPO, work / "logs" / f"{name}.log")
            rec = score(work / "runs" / name / "submission.csv", bench)
            v = selection(work, r["stdout"])
            t = timings(r["stdout"])
            again = ""
            if m in DEEP:
                rr = rerank_measured(work, name, r["stdout"], work / "runs" / "ease" / "candidates.csv")
                again = f"{score(rr['submission'], bench):.4f}, {rr['seconds']:.1f} s"
            print(f"| {m} | {f} | {rec:.4f} | {TARGETS.get((m, f), '> 0.1097' if m in DEEP else '')} | "
                  f"{v['val']:.4f} | {v['best_epoch']} / {v['epochs']} | {t.get('fit_seconds', float('nan')):.1f} | "
                  f"{again} |", flush=True)


def scale(work: Path, models: list[str], steps: int, features: str = "all") -> None:
    print(f"\n## competition size (data=synthetic, features={features}), {steps} training steps, split=none, "
          "every user ranked\n")
    data = ["data=synthetic"]

    def args(name: str, *overrides: str) -> list[str]:
        return [str(REPO / "train.py"), *data, "split=none", *overrides, f"hydra.run.dir={work / 'runs' / name}",
                f"paths.cache_dir={work / 'cache'}", f"tracking.uri=sqlite:///{work / 'mlruns' / 'mlflow.db'}"]

    # the data cache first (no model's figures include generating the data), and EASE's top-50
    run_measured(args("ease", "model=ease"), REPO, work / "logs" / "scale-ease.log")
    print("| model | fit s | rank s (all items) | wall s | peak RSS MB | EASE top-50 re-ranked: s, peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for m in models:
        name = f"scale-{m}"
        # split@validation=none: train the steps asked for, no probe before a refit
        r = run_measured(args(name, f"model={m}", f"features={features}", "model.max_epochs=1", "split@validation=none",
                              f"+trainer.limit_train_batches={steps}"), REPO, work / "logs" / f"{name}.log")
        t = timings(r["stdout"])
        again = ""
        if m in DEEP:
            rr = rerank_measured(work, name, r["stdout"], work / "runs" / "ease" / "candidates.csv")
            again = f"{rr['seconds']:.1f}, {rr['rss_mb']:.0f}"
        print(f"| {m} | {t['fit_seconds']:.1f} | {t['predict_seconds']:.1f} | {r['wall']:.1f} | {r['rss_mb']:.0f} | "
              f"{again} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--features", default="ids,all")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--scale-features", default="all", help="the feature set of the --scale runs")
    ap.add_argument("--bench", type=Path, default=BENCH, help="benchmark folder: input/, hidden.csv, train.csv")
    ap.add_argument("--work", type=Path, default=Path("/tmp") / f"bench_context-{stamp()}")
    ap.add_argument("overrides", nargs="*", help="extra train.py overrides for every quality run (e.g. refit=false)")
    a = ap.parse_args()
    models = [m for m in a.models.split(",") if m]
    every = not (a.quality or a.scale)
    print(f"work folder: {a.work}")
    if a.quality or every:
        quality(a.work, a.bench.resolve(), models, [f for f in a.features.split(",") if f], a.overrides)
    if a.scale or every:
        scale(a.work, models, a.steps, a.scale_features)


if __name__ == "__main__":
    main()
