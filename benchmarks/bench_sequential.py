"""Figures of the sequential issue, printed (never asserted):

  quality: each sequential model's DEFAULT config on the ml-100k black-box benchmark: train.py
           split=none on its input/ (refit=auto: the epoch count is found on a validation part
           carved from input/, then the model trains on all of it), scored on hidden.csv by the
           benchmark's own scorer, overall and on its `last` and `random` parts, with the
           validation part's figure and the epochs chosen there. Targets (the issue): SASRec >= 0.100
           on the last part (EASE 0.082); BERT4Rec and GRU4Rec above popularity (0.1097) overall.

    python benchmarks/bench_sequential.py [--models sasrec,gru4rec,bert4rec] [--bench DIR] [--work DIR]

A model may carry its own overrides, quoted: --models "sasrec,s3rec,s3rec model.pretrain_epochs=0"
(its run is named after them: s3rec-pretrain_epochs=0).

  peer:    --peer PYTHON (an interpreter with RecTools installed, in an environment of its own):
           SASRec and BERT4Rec seconds per training epoch against RecTools' SASRecModel and
           BERT4RecModel on the same competition-size synthetic data and sizes (64-d, 2 blocks, 2
           heads, max length 50, full softmax, batch 128; no validation part on either side),
           alternated round by round; medians.

    python benchmarks/bench_sequential.py --peer /path/to/rectools-venv/bin/python [--rounds 2] [--epochs 1]
                                          [--models sasrec]   # a subset of sasrec,bert4rec
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from bench_autoencoders import selection, train_args
from common import BENCH, REPO, SCORER, peer_epoch_seconds, print_peer_table, run_measured, timings

MODELS = ["sasrec", "gru4rec", "gru4rec_titles", "bert4rec"]
REFERENCE = {"ease": {"all": 0.2396, "last": 0.082}, "popularity": {"all": 0.1097}}


def score_parts(submission: Path, bench: Path) -> dict[str, float]:
    """The scorer's table: Recall@10 per part (`all`, `last`, `random`) and the standard error."""
    p = subprocess.run([sys.executable, str(SCORER), "--submission", str(submission), "--hidden",
                        str(bench / "hidden.csv"), "--train", str(bench / "train.csv")], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"scorer refused {submission}:\n{p.stdout[-2000:]}")
    out = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+)\s+\d+\s+([0-9.]+)\s+[0-9.]+$", p.stdout, re.M)}
    out["se"] = float(re.search(r"± ([0-9.]+)", p.stdout).group(1))
    return out


def quality(work: Path, bench: Path, models: list[str], overrides: list[str]) -> None:
    print(f"\n## {bench.name} benchmark ({bench}), default configs {' '.join(overrides)}, split=none\n")
    print("| model | Recall@10 all (± se) | last | random | validation Recall@10 | best epoch / epochs run "
          "| fit s (probe + refit) |")
    print("|---|---|---|---|---|---|---|")
    for spec in models:
        m, *own = spec.split()
        name = "-".join([m, *(o.split(".", 1)[-1] for o in own)])
        args = train_args(work, name, bench / "input", "split=none", f"model={m}", *own, *overrides)
        r = run_measured(args, REPO, work / "logs" / f"{name}.log")
        parts = score_parts(work / "runs" / name / "submission.csv", bench)
        v = selection(work, r["stdout"])
        t = timings(r["stdout"])
        print(f"| {spec} | {parts['all']:.4f} (± {parts['se']:.4f}) | {parts['last']:.4f} | {parts['random']:.4f} | "
              f"{v['val']:.4f} | {v['best_epoch']} / {v['epochs']} | {t.get('fit_seconds', float('nan')):.1f} |",
              flush=True)
    if bench.name == "ml-100k":
        print(f"\nreference on the same split: EASE {REFERENCE['ease']['all']} overall, {REFERENCE['ease']['last']} "
              f"on the last part; popularity {REFERENCE['popularity']['all']} overall")


# RecTools' own fit, in its interpreter: argv = train_ratings.csv, model, epochs, batch size. Every
# size set as ours (conf/model/*.yaml, with max_len 50 and batch 128), item ids only (no feature
# item net); a Lightning callback prints each training epoch's seconds.
_RECTOOLS_RUN = """
import sys, time
import pandas as pd
from pytorch_lightning import Callback, Trainer
from rectools import Columns
from rectools.dataset import Dataset
from rectools.models import BERT4RecModel, SASRecModel
from rectools.models.nn.item_net import IdEmbeddingsItemNet
path, name, epochs, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
df = pd.read_csv(path).rename(columns={"user": Columns.User, "item": Columns.Item, "time": Columns.Datetime})
df[Columns.Datetime] = pd.to_datetime(df[Columns.Datetime], unit="s")
df[Columns.Weight] = 1.0
class EpochTimer(Callback):
    def on_train_epoch_start(self, trainer, module):
        self.t0 = time.perf_counter()
    def on_train_epoch_end(self, trainer, module):
        print(f"epoch_seconds {time.perf_counter() - self.t0:.3f}", flush=True)
def trainer():
    return Trainer(max_epochs=epochs, min_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                   callbacks=[EpochTimer()])
sizes = dict(n_blocks=2, n_heads=2, n_factors=64, session_max_len=50, loss="softmax", batch_size=batch,
             epochs=epochs, item_net_block_types=(IdEmbeddingsItemNet,), get_trainer_func=trainer)
model = (SASRecModel(dropout_rate=0.5, **sizes) if name == "sasrec"
         else BERT4RecModel(dropout_rate=0.2, mask_prob=0.2, **sizes))
model.fit(Dataset.construct(df))
"""


PEERS = ("sasrec", "bert4rec")  # the models RecTools has


def peer(work: Path, python: str, rounds: int, epochs: int, models: list[str]) -> None:
    """Ours against RecTools on the same competition-size synthetic data, alternated."""
    from bench_autoencoders import run_curves
    from bench_foundation import synthetic_folder

    folder = synthetic_folder(work)
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for m in models:
            args = train_args(work, f"{m}-peer-{r}", folder, "split=none", "split@validation=none", "tune=false",
                              f"model={m}", "model.max_len=50", "model.batch_size=128", f"model.max_epochs={epochs}")
            out = run_measured(args, REPO, work / "logs" / f"{m}-peer-{r}.log")
            times.setdefault((m, "ours"), []).extend(run_curves(work, out["stdout"])["epoch_seconds"])
            secs = peer_epoch_seconds(python, _RECTOOLS_RUN, [str(folder / "train_ratings.csv"), m, str(epochs), "128"],
                                      work, work / "logs" / f"{m}-rectools-{r}.log", r"epoch_seconds ([0-9.]+)",
                                      f"RecTools {m}")
            times.setdefault((m, "RecTools"), []).extend(secs)
            print(f"round {r + 1}: {m} ours {times[(m, 'ours')][-epochs:]} s, RecTools {secs} s", flush=True)
    print_peer_table(times, models, "RecTools", f"competition size (synthetic), seconds per training epoch, "
                     f"{rounds} alternating rounds of {epochs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--bench", type=Path, default=BENCH)
    ap.add_argument("--work", type=Path, default=Path("/tmp/recmovie-bench-seq"))
    ap.add_argument("--peer", default=None, help="python interpreter with RecTools installed: epoch times side by side")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1, help="epochs per run with --peer")
    ap.add_argument("overrides", nargs="*", help="extra train.py overrides for every model (e.g. trainer=gpu)")
    a = ap.parse_args()
    if a.peer:
        peer(a.work, a.peer, a.rounds, a.epochs, [m for m in a.models.split(",") if m in PEERS])
    else:
        quality(a.work, a.bench, a.models.split(","), a.overrides)


if __name__ == "__main__":
    main()
