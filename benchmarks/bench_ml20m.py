"""Figures of issue 14's ML-20M part, printed (never asserted): EASE, ALS, Multi-VAE and SASRec end
to end at MovieLens-20M's size, on the synthetic generator's data (`data=synthetic_ml20m`: 138,493
users x 26,744 items, 20.09M interactions), each one `train.py ... split=none` as a user would run
it: fit, rank every user over the whole catalogue, write submission.csv and candidates.csv, save
the checkpoint and log the run to MLflow. Wall time and peak RSS are those of the whole process
(common.run_measured); fit and ranking seconds are the ones train.py prints.

Choices (the same for every model, so the rows compare):
  - the data is generated once, by a first `model=popularity` run on a cold cache (its row: the
    generator's and the cache's cost); every model then reads the cached arrays;
  - `tune=false`: the YAML's hyper-parameters; `tune` would fit EASE 4 times and ALS 6 times on a
    validation carve before the real fit;
  - `split@validation=none`: no validation part, so no probe-then-refit (refit=auto) and no
    validation ranking: the one fit asked for, on all the interactions;
  - gradient models cannot train to convergence at this size on 2 cores: Multi-VAE trains one
    epoch (`model.max_epochs=1`), SASRec `--steps` batches of its epoch (`model.max_epochs=1
    +trainer.limit_train_batches=N`); their rows give seconds per step and per epoch (SASRec's
    extrapolated from the steps run: the epoch's steps are ceil(users / batch_size)).

    python benchmarks/bench_ml20m.py [--models ease,als,multivae,sasrec] [--steps 50] [--work DIR]
                                     [overrides ...]   # extra train.py overrides, e.g. trainer=gpu
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from omegaconf import OmegaConf

from bench_autoencoders import run_curves
from common import REPO, run_measured, timings

MODELS = ["ease", "als", "multivae", "sasrec"]
STEPPED = {"sasrec"}  # trained for --steps batches; the others' fit is whole (closed form, or one epoch)
EPOCH = {"multivae"}


def args(work: Path, name: str, *overrides: str) -> list[str]:
    return [str(REPO / "train.py"), "data=synthetic_ml20m", "split=none", "split@validation=none", "tune=false",
            *overrides, f"hydra.run.dir={work / 'runs' / name}", f"paths.cache_dir={work / 'cache'}",
            f"tracking.uri=sqlite:///{work / 'mlruns' / 'mlflow.db'}"]


def model_overrides(model: str, steps: int) -> list[str]:
    if model in STEPPED:
        return [f"model={model}", "model.max_epochs=1", f"+trainer.limit_train_batches={steps}"]
    if model in EPOCH:
        return [f"model={model}", "model.max_epochs=1"]
    return [f"model={model}"]


def steps_per_epoch(model: str) -> int:
    """Batches in one epoch over every user (the synthetic users all have >= 16 interactions)."""
    data = OmegaConf.load(REPO / "conf" / "data" / "synthetic_ml20m.yaml")
    batch = OmegaConf.load(REPO / "conf" / "model" / f"{model}.yaml").batch_size
    return math.ceil(data.n_users / batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=50, help="SASRec's training steps")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recmovie-bench-ml20m"))
    ap.add_argument("overrides", nargs="*", help="extra train.py overrides for every model run")
    a = ap.parse_args()
    work = a.work
    results = {}
    print(f"work folder: {work}\n\n## ML-20M size (data=synthetic_ml20m), split=none, every user ranked\n")
    print("| model | trained | fit s | s per step | s per epoch | ranking s | wall s | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    # the data first, on a cold cache unless a previous run of this script left it in `work`
    r = run_measured(args(work, "popularity", "model=popularity", *a.overrides), REPO, work / "logs" / "popularity.log")
    t = timings(r["stdout"])
    cache = "cold" if "data cache miss" in r["stdout"] else "warm"
    results["popularity"] = {**t, "wall": r["wall"], "rss_mb": r["rss_mb"], "cache": cache}
    print(f"| popularity (data: {t['data_seconds']:.1f} s, {cache} cache) | - | {t['fit_seconds']:.1f} | | | "
          f"{t['predict_seconds']:.1f} | {r['wall']:.1f} | {r['rss_mb'] / 1024:.2f} |", flush=True)
    for m in [m for m in a.models.split(",") if m]:
        r = run_measured(args(work, m, *model_overrides(m, a.steps), *a.overrides), REPO, work / "logs" / f"{m}.log")
        t = timings(r["stdout"])
        row = {**t, "wall": r["wall"], "rss_mb": r["rss_mb"]}
        per_step = per_epoch = ""
        trained = "closed form"
        if m in STEPPED or m in EPOCH:
            epoch_s = run_curves(work, r["stdout"])["epoch_seconds"][0]
            full = steps_per_epoch(m)
            steps = min(a.steps, full) if m in STEPPED else full
            row.update(epoch_seconds=epoch_s, steps=steps, steps_per_epoch=full)
            per_step = f"{epoch_s / steps:.2f}"
            per_epoch = f"{epoch_s / steps * full:.0f}" + (" (extrapolated)" if steps < full else "")
            trained = f"{steps} of {full} steps" if steps < full else f"1 epoch ({full} steps)"
        elif m == "als":
            trained = f"{OmegaConf.load(REPO / 'conf' / 'model' / 'als.yaml').iterations} iterations"
        results[m] = row
        print(f"| {m} | {trained} | {t['fit_seconds']:.1f} | {per_step} | {per_epoch} | {t['predict_seconds']:.1f} | "
              f"{r['wall']:.1f} | {r['rss_mb'] / 1024:.2f} |", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
