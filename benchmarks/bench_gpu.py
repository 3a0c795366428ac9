"""Every gradient family on an accelerator against the same run on CPU, ready before a GPU is at hand.

    python benchmarks/bench_gpu.py                      # trainer=gpu against trainer=cpu (needs CUDA)
    python benchmarks/bench_gpu.py --device cpu --steps 20   # the same script on this machine: cpu against cpu
    python benchmarks/bench_gpu.py --models multivae,sasrec --steps 300

Each model trains for `--steps` optimiser steps of one epoch on the synthetic competition-size data
(data=synthetic: 31,360 users x 6,807 items, 5.15M rows; generated once, then read from the cache),
`split=none split@validation=none` (no probe, no refit: the steps asked for and nothing else),
once with `trainer=<device>` and once with `trainer=cpu`, seed 0 both. Printed per model: seconds of
the epoch on each (the run's `epoch_seconds`), their ratio, and the first epoch's training loss on
each, which must agree (relative difference under `--tolerance`: the same batches, the same initial
weights; kernels differ in rounding only). Closed-form models (EASE) fit on the CPU whatever the trainer; they are
not timed here.
Keep it under 8 minutes on a GPU machine: `--steps 300` per model is about that.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, run_measured, stamp  # noqa: E402

MODELS = ["multivae", "recvae", "bpr_mf", "fm", "deepfm", "sasrec", "bert4rec", "gru4rec"]


def curves(work: Path, stdout: str) -> dict[str, list[float]]:
    import mlflow

    run_id = re.search(r"mlflow run: (\w+)", stdout).group(1)
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    return {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in client.get_run(run_id).data.metrics}


def one_run(work: Path, model: str, trainer: str, steps: int, data: str = "synthetic") -> dict:
    name = f"{model}-{trainer}"
    args = [str(REPO / "train.py"), f"data={data}", "split=none", "split@validation=none", f"model={model}",
            f"trainer={trainer}", "trainer.max_epochs=1", f"+trainer.limit_train_batches={steps}", "seed=0",
            f"hydra.run.dir={work / 'runs' / name}", f"paths.cache_dir={work / 'cache'}",
            f"tracking.uri=sqlite:///{work / 'mlruns' / 'mlflow.db'}"]
    r = run_measured(args, REPO, work / "logs" / f"{name}.log")
    c = curves(work, r["stdout"])
    return {"epoch_s": c["epoch_seconds"][0], "loss": c["train_loss"][0], "wall": r["wall"], "rss_mb": r["rss_mb"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per run")
    p.add_argument("--tolerance", type=float, default=0.02, help="relative first-epoch loss difference allowed")
    p.add_argument("--work", type=Path, default=Path("/tmp") / f"bench_gpu-{stamp()}")
    args = p.parse_args()
    if args.device == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here: run with --device cpu to check the script itself")
    print(f"| model | steps | {args.device} epoch s | cpu epoch s | {args.device} / cpu | {args.device} loss | "
          f"cpu loss | losses agree |\n|---|---|---|---|---|---|---|---|", flush=True)
    failures = []
    for model in args.models.split(","):
        dev = one_run(args.work, model, args.device, args.steps)
        cpu = one_run(args.work, model, "cpu", args.steps) if args.device != "cpu" else \
            one_run(args.work / "again", model, "cpu", args.steps)
        agree = abs(dev["loss"] - cpu["loss"]) <= args.tolerance * max(abs(cpu["loss"]), 1e-12)
        failures += [] if agree else [model]
        print(f"| {model} | {args.steps} | {dev['epoch_s']:.2f} | {cpu['epoch_s']:.2f} | "
              f"{dev['epoch_s'] / cpu['epoch_s']:.3f} | {dev['loss']:.5g} | {cpu['loss']:.5g} | {agree} |", flush=True)
    if failures:
        raise SystemExit(f"first-epoch losses differ beyond {args.tolerance:.0%}: {', '.join(failures)}")


if __name__ == "__main__":
    main()
