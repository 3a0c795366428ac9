"""Figures of the autoencoder issue, printed (never asserted):

  quality:    each autoencoder's DEFAULT config on the ml-100k black-box benchmark: train.py
              split=none on its input/, scored on hidden.csv by the benchmark's own scorer; beside it a
              validation run (split=competition carved from input/, as tuning saw it): best epoch,
              training seconds until that epoch, validation Recall@10;
  confidence: the best model of that table with each confidence variant, same protocol;
  scale:      Multi-VAE and RecVAE at the competition's size (synthetic data, split=none, a few
              epochs): seconds per epoch and peak RSS of the whole run.

  peer:       --peer PYTHON (an interpreter with RecBole installed, e.g. a venv of its own): the same
              synthetic data written as RecBole atomic files, RecBole's MultiVAE and RecVAE (their
              default configs, 2 epochs, no evaluation) alternated with ours (default configs, 2
              epochs) for --rounds rounds; seconds per training epoch as each library reports it
              (RecBole's log line, our epoch_seconds curve), medians and the ratio ours / RecBole.
              RecBole is never imported by this repo: it runs in its own interpreter.

    python benchmarks/bench_autoencoders.py [--quality] [--confidence] [--scale] [--peer PYTHON]
                                            [--rounds 3] [--bench DIR] [--work DIR]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from common import BENCH, REPO, median, peer_epoch_seconds, print_peer_table, run_measured, score, timings

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


RECBOLE_MODELS = {"multivae": "MultiVAE", "recvae": "RecVAE"}
# RecBole's own runner, in its interpreter: argv = data folder, model, epochs; its trainer's fit
# without validation data (no evaluation, no checkpoint), every default of the model kept
_RECBOLE_RUN = """
import sys
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_logger, init_seed
path, name, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = Config(model=name, dataset="synthetic", config_dict={
    "data_path": path, "epochs": epochs, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "train_neg_sample_args": None, "eval_args": {"split": {"RS": [0.98, 0.01, 0.01]}, "order": "RO",
    "group_by": "user", "mode": "full"}, "show_progress": False, "save_dataset": False,
    "save_dataloaders": False, "use_gpu": False, "checkpoint_dir": path + "/saved", "seed": 0})
init_seed(config["seed"], config["reproducibility"])
init_logger(config)
train_data, _, _ = data_preparation(config, create_dataset(config))
model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
get_trainer(config["MODEL_TYPE"], config["model"])(config, model).fit(train_data, None, saved=False)
"""


def peer(work: Path, python: str, rounds: int) -> None:
    """Ours against RecBole on the same competition-size synthetic data, alternated."""
    sys.path.insert(0, str(REPO))
    from recmovie.data.synthetic import generate_synthetic

    folder = work / "recbole" / "synthetic"
    inter = folder / "synthetic.inter"
    if not inter.exists():
        import pandas as pd

        ds = generate_synthetic()  # conf/data/synthetic.yaml's defaults: the data our runs use
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"user_id:token": ds.user_ids[ds.user], "item_id:token": ds.item_ids[ds.item],
                      "timestamp:float": ds.time}).to_csv(inter, sep="\t", index=False)

    def ours_args(m: str, r: int) -> list[str]:
        return [str(REPO / "train.py"), "data=synthetic", "split=none", "split@validation=none", "tune=false",
                f"model={m}", "model.max_epochs=2", f"hydra.run.dir={work / 'runs' / f'{m}-peer-{r}'}",
                f"paths.cache_dir={work / 'cache'}", f"tracking.uri=sqlite:///{work / 'mlruns' / 'mlflow.db'}"]

    times: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for m, theirs in RECBOLE_MODELS.items():
            out = run_measured(ours_args(m, r), REPO, work / "logs" / f"{m}-peer-{r}.log")
            times.setdefault((m, "ours"), []).extend(run_curves(work, out["stdout"])["epoch_seconds"])
            secs = peer_epoch_seconds(python, _RECBOLE_RUN, [str(folder.parent), theirs, "2"], work,
                                      work / "logs" / f"{m}-recbole-{r}.log", r"epoch \d+ training \[time: ([0-9.]+)s",
                                      f"RecBole {theirs}")
            times.setdefault((m, "RecBole"), []).extend(secs)
            print(f"round {r + 1}: {m} ours {times[(m, 'ours')][-2:]} s, RecBole {secs} s", flush=True)
    print_peer_table(times, list(RECBOLE_MODELS), "RecBole",
                     f"competition size (synthetic), seconds per training epoch, {rounds} alternating rounds of 2 epochs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--confidence", action="store_true")
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--peer", default=None, help="python interpreter with RecBole installed: epoch times side by side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--best", default=None, help="model(s) for the confidence table, comma-separated "
                                                 "(default: the best of --quality)")
    ap.add_argument("--bench", type=Path, default=BENCH)
    ap.add_argument("--work", type=Path, default=Path("/tmp/recmovie-bench-ae"))
    a = ap.parse_args()
    if a.peer:
        peer(a.work, a.peer, a.rounds)
        return
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
