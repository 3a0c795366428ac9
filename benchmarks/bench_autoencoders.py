"""Figures of the autoencoder issue, printed (never asserted):

  quality:    each autoencoder's DEFAULT config on the ml-100k black-box benchmark: train.py
              split=none on its input/, scored on hidden.csv by the benchmark's own scorer; beside it a
              validation run (split=competition carved from input/, as tuning saw it): best epoch,
              training seconds until that epoch, validation Recall@10;
  confidence: the best model of that table with each confidence variant, same protocol;
  scale:      Multi-VAE and RecVAE at the competition's size (synthetic data, split=none, a few
              epochs): seconds per epoch and peak RSS of the whole run.

    python benchmarks/bench_autoencoders.py [--quality] [--confidence] [--scale] [--bench DIR] [--work DIR]
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from common import BENCH, REPO, median, run_measured, score, timings

MODELS = ["ae", "dae", "vae", "multidae", "multivae", "recvae"]
CONFIDENCE = ["none", "time", "itempop", "genre", "time_genre", "all"]
RECBOLE = {"multivae": 0.2295, "multidae": 0.2243, "recvae": 0.2261}  # RecBole 1.2.1 on this split (the issue)


def train_args(work: Path, name: str, data_dir: Path, *overrides: str) -> list[str]:
    return [str(REPO / "train.py"), "data=competition", f"data.dir={data_dir}", *overrides,
            f"hydra.run.dir={work / 'runs' / name}", f"paths.cache_dir={work / 'cache'}",
            f"tracking.uri=sqlite:///{work / 'mlruns' / 'mlflow.db'}"]


def run_curves(work: Path, stdout: str) -> dict[str, list[float]]:
    """The per-epoch MLflow curves of the run that printed `stdout`."""
    import mlflow

    run_id = re.search(r"mlflow run: (\w+)", stdout).group(1)
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    metrics = client.get_run(run_id).data.metrics
    return {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)] for k in metrics}


def final(work: Path, bench: Path, name: str, *overrides: str) -> tuple[float, dict]:
    """split=none on the benchmark's input, scored on its hidden truth; with refit=auto the run
    first finds its epoch count on a validation part of the input, then trains on all of it."""
    m = run_measured(train_args(work, name, bench / "input", "split=none", *overrides), REPO, work / "logs" / f"{name}.log")
    return score(work / "runs" / name / "submission.csv", bench), {**timings(m["stdout"]), "stdout": m["stdout"]}


def selection(work: Path, stdout: str) -> dict:
    """The validation part's figures of a split=none run: the epoch count it chose and the
    seconds the probe took to reach it."""
    curves = run_curves(work, stdout)
    best = int(curves["best_epoch"][0])  # counted from 1
    return {"best_epoch": best, "val": curves["val_recall_at_10"][-1], "epochs": len(curves["epoch_seconds"]),
            "to_best": sum(curves["epoch_seconds"][:best])}


def quality(work: Path, bench: Path, models: list[str]) -> str:
    print(f"\n## ml-100k benchmark ({bench}), default configs, split=none (refit=auto)\n")
    print("| model | Recall@10 hidden | RecBole 1.2.1 | validation Recall@10 | best epoch / epochs run "
          "| s to best epoch | fit s (probe + refit) |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for m in models:
        rec, t = final(work, bench, m, f"model={m}")
        v = selection(work, t["stdout"])
        results[m] = rec
        print(f"| {m} | {rec:.4f} | {RECBOLE.get(m, '')} | {v['val']:.4f} | {v['best_epoch']} / {v['epochs']} | "
              f"{v['to_best']:.1f} | {t['fit_seconds']:.1f} |", flush=True)
    return max(results, key=results.get)


def confidence(work: Path, bench: Path, model: str) -> None:
    print(f"\n## {model}: confidence variants (default config otherwise), split=none, hidden truth\n")
    print("| confidence | Recall@10 hidden | fit s |\n|---|---|---|")
    for c in CONFIDENCE:
        rec, t = final(work, bench, f"{model}-{c}", f"model={model}", f"confidence={c}")
        print(f"| {c} | {rec:.4f} | {t['fit_seconds']:.1f} |", flush=True)


def scale(work: Path, epochs: dict[str, int]) -> None:
    print("\n## competition size (data=synthetic: 31,360 users, 6,807 items, 5.15M interactions), split=none\n")
    print("| model | epochs | s per epoch (median) | first epoch s | peak RSS MB | wall s |\n|---|---|---|---|---|---|")
    for m, n in epochs.items():
        # split@validation=none: no probe and refit, so the epochs timed are the ones asked for
        args = [str(REPO / "train.py"), "data=synthetic", "split=none", "split@validation=none", f"model={m}",
                f"model.max_epochs={n}",
                f"hydra.run.dir={work / 'runs' / (m + '-synthetic')}", f"paths.cache_dir={work / 'cache'}",
                f"tracking.uri=sqlite:///{work / 'mlruns' / 'mlflow.db'}"]
        r = run_measured(args, REPO, work / "logs" / f"{m}-synthetic.log")
        secs = run_curves(work, r["stdout"])["epoch_seconds"]
        print(f"| {m} | {n} | {median(secs):.1f} | {secs[0]:.1f} | {r['rss_mb']:.0f} | {r['wall']:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--confidence", action="store_true")
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--best", default=None, help="model(s) for the confidence table, comma-separated "
                                                 "(default: the best of --quality)")
    ap.add_argument("--bench", type=Path, default=BENCH)
    ap.add_argument("--work", type=Path, default=Path("/tmp/recmovie-bench-ae"))
    a = ap.parse_args()
    every = not (a.quality or a.confidence or a.scale)
    best = a.best
    if a.quality or every:
        top = quality(a.work, a.bench, a.models.split(","))
        best = best or top
    if a.confidence or every:
        for model in (best or "multivae").split(","):
            confidence(a.work, a.bench, model)
    if a.scale or every:
        scale(a.work, {"multivae": 3, "recvae": 2})


if __name__ == "__main__":
    main()
