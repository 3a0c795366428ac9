"""Adaptive defaults (`tune=true`) against a grid search scored on the test part.

    python benchmarks/bench_tune.py                       # ease and als on the bundled sample
    python benchmarks/bench_tune.py --models ease --data data=competition data.dir=/path/to/train

For each model: every combination of its YAML's `tune` grid trained with tune=false and scored on
the test part of the competition split (what an oracle grid search would pick), then the default
run (tune=true: the values chosen on the validation part, the test part never seen). Prints each
model's test Recall@10 per grid point, the tuned run's choice and figure, and its ratio to the
grid's best (the issue's target: >= 0.98).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
from pathlib import Path

from bench_ensemble import REPO, compose


def test_recall(overrides: list[str], work: Path) -> tuple[float, float]:
    from recmovie.pipeline import train

    cfg = compose("train", [*overrides, "tracking.enabled=false"], work, "sqlite:///unused.db")
    logging.getLogger("recmovie").setLevel(logging.WARNING)
    metrics = {}

    import recmovie.pipeline as pipeline

    original = pipeline.report

    def keep(name, data, k, val_metrics, metrics_, *args, **kwargs):  # the figures train() prints
        metrics.update(metrics_, **val_metrics)
        return original(name, data, k, val_metrics, metrics_, *args, **kwargs)

    pipeline.report = keep
    try:
        train(cfg)
    finally:
        pipeline.report = original
    return metrics["recall_at_10"], metrics.get("val_recall_at_10", float("nan"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ease", "als"])
    p.add_argument("--data", nargs="*", default=[], help="train.py data overrides (default: the bundled sample)")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    from omegaconf import OmegaConf

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-tune-"))
    print("| model | grid point | test R@10 | val R@10 |\n|---|---|---|---|")
    summary = []
    for model in args.models:
        grid = OmegaConf.to_container(OmegaConf.load(REPO / "conf/model" / f"{model}.yaml")["tune"])
        results = []
        for n, values in enumerate(itertools.product(*grid.values())):
            point = [f"model.{key}={value}" for key, value in zip(grid, values)]
            test, val = test_recall([*args.data, f"model={model}", "tune=false", *point], work / f"{model}-{n}")
            results.append((test, " ".join(point)))
            print(f"| {model} | {' '.join(point)} | {test:.4f} | {val:.4f} |", flush=True)
        test, val = test_recall([*args.data, f"model={model}"], work / f"{model}-tuned")
        best, where = max(results)
        summary.append(f"{model}: tuned (chosen on validation) test {test:.4f}, val {val:.4f}; grid best on test "
                       f"{best:.4f} at {where}; ratio {test / best:.3f}")
        print(f"| {model} | tune=true (default) | {test:.4f} | {val:.4f} |", flush=True)
    print("\n" + "\n".join(summary))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
