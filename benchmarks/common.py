"""Helpers shared by the benchmark scripts: run the CLI as a user would, time it, score it."""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
BENCH = SHARED / "bench" / "ml-100k"
SCORER = SHARED / "tools" / "score_submission.py"

# a child that reports its own wall time and peak RSS (ru_maxrss of its child, in KB on Linux)
_MEASURE = (
    "import resource, subprocess, sys, time, json; t = time.perf_counter(); "
    "r = subprocess.run(sys.argv[1:]); "
    "print(json.dumps({'rc': r.returncode, 'wall': time.perf_counter() - t, "
    "'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}), file=sys.stderr)"
)


def run_measured(args: list[str], cwd: Path, log: Path) -> dict:
    """Run `python <args>` from cwd; returns rc, wall seconds, peak RSS (MB) and its stdout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, *args], cwd=cwd, env=env,
                       capture_output=True, text=True)
    log.write_text(p.stdout + "\n----- stderr -----\n" + p.stderr)
    m = json.loads(p.stderr.strip().splitlines()[-1])
    m["stdout"] = p.stdout
    if m["rc"] != 0:
        raise RuntimeError(f"{' '.join(args)} failed, see {log}")
    return m


def timings(stdout: str) -> dict[str, float]:
    """The `fit_seconds 1.23, predict_seconds 0.45, ...` line that train.py prints."""
    return {k: float(v) for k, v in re.findall(r"(\w+_seconds) ([0-9.]+)", stdout)}


def score(submission: Path, bench: Path = BENCH) -> float:
    p = subprocess.run([sys.executable, str(SCORER), "--submission", str(submission), "--hidden",
                        str(bench / "hidden.csv"), "--train", str(bench / "train.csv")],
                       capture_output=True, text=True)
    last = p.stdout.strip().splitlines()[-1]
    if p.returncode != 0:
        raise RuntimeError(f"scorer refused {submission}:\n{p.stdout[-2000:]}")
    return float(last.split("=")[1])


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def peer_epoch_seconds(python: str, script: str, argv: list[str], cwd: Path, log: Path, pattern: str,
                       library: str) -> list[float]:
    """Another library's training `script`, run by its own interpreter: the seconds per epoch its
    output reports (`pattern`'s group), its output kept in `log`."""
    p = subprocess.run([python, "-c", script, *argv], cwd=cwd, capture_output=True, text=True)
    log.write_text(p.stdout + p.stderr)
    secs = [float(x) for x in re.findall(pattern, p.stdout + p.stderr)]
    if p.returncode != 0 or not secs:
        raise RuntimeError(f"{library} failed, see {log}")
    return secs


def print_peer_table(times: dict[tuple[str, str], list[float]], models: list[str], library: str, title: str) -> None:
    """Medians of ours against `library`'s seconds per epoch, per model, and their ratio."""
    print(f"\n## {title}\n")
    print(f"| model | ours (median) | {library} (median) | ours / {library} |\n|---|---|---|---|")
    for m in models:
        a, b = median(times[(m, "ours")]), median(times[(m, library)])
        print(f"| {m} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
