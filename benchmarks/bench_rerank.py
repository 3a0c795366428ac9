"""Two-stage re-ranking against its members and the best blend, on a black-box benchmark folder.

    python benchmarks/bench_rerank.py                                   # ml-100k, default members
    python benchmarks/bench_rerank.py --members ease als "multivae" sasrec --top-n 100
    python benchmarks/bench_rerank.py --synthetic --members ease als "multivae model.max_epochs=3"

Every member is trained once on <bench>/input with split=none and refit=true (closed-form models
fit on the fit part first, so that they too leave validation candidates, then on everything),
keeping `--top-n` candidates per user. Then, from the same runs: `method=rerank` (the ranker
learns on the validation candidates) and the weight-searched blends (`rank_vote`, `score_blend`;
weights searched on the same validation candidates), and score_blend over the members' full score
rows (`full_scores=true`, reloaded checkpoints), its weights searched on the validation users' full
scores from the members as fitted without the validation part (`save_val_model=true`).
Everything is scored on hidden.csv by the
benchmark's scorer, with its standard error; nothing that selects sees hidden.csv.

--slot-mix: after the table, the lists made of the LAST member's top s items, then the FIRST member's,
for s = 0..5, scored on hidden.csv: what simply giving a sequential member (say SASRec, named last)
a few places at the top of the best member's list (named first) trades between the last and the
random part. A diagnostic of what is possible (it reads hidden.csv, so it selects nothing).

--synthetic: the same two-stage run at the competition's size (data=synthetic: 31,360 users x 6,807
items, 5.15M rows, every side file), which has no hidden truth: each step's seconds and the peak
RSS of the process after it (monotonic, so the step where it rises is the one that set it).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench_ensemble import REPO, compose, latest_run_id, score

DEFAULT_MEMBERS = ["ease", "als", "multivae", "sasrec"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", type=Path, default=REPO.parent / "shared/bench/ml-100k")
    p.add_argument("--scorer", type=Path, default=REPO.parent / "shared/tools/score_submission.py")
    p.add_argument("--members", nargs="+", default=DEFAULT_MEMBERS, help="each: a model name, then train.py overrides")
    p.add_argument("--top-n", type=int, default=100)
    p.add_argument("--synthetic", action="store_true", help="competition-size synthetic data: time and peak RSS only")
    p.add_argument("--blends", nargs="*", default=["rank_vote", "score_blend"])
    p.add_argument("--full-scores", action=argparse.BooleanOptionalAction, default=True,
                   help="also blend the members' full score rows (score_blend full_scores=true), weights searched")
    p.add_argument("--trials", type=int, default=100, help="optuna trials of the blends' weight search")
    p.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder (reused if given)")
    p.add_argument("--slot-mix", action="store_true", help="the last member's top s, then the first member's (see above)")
    p.add_argument("rerank", nargs="*", help="extra ensemble.py overrides for the re-ranker (e.g. rerank.params.num_leaves=15)")
    args = p.parse_args()

    from recmovie.ensemble.command import run_ensemble
    from recmovie.pipeline import train

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-rerank-"))
    uri = f"sqlite:///{work.resolve() / 'mlruns' / 'mlflow.db'}"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    source = ["data=synthetic"] if args.synthetic else ["data=competition", f"data.dir={args.bench / 'input'}"]
    data = [*source, "split=none", "refit=true", f"candidates.n={args.top_n}", "save_val_model=true",
            f"paths.cache_dir={work.resolve() / 'cache'}"]

    def measured(name: str, seconds: float, submission: Path, run_id: str | None = None) -> dict:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        hidden = None if args.synthetic else score(args.scorer, args.bench, submission)
        return {"name": name, "seconds": seconds, "rss_gb": rss, "hidden": hidden, "val": validation(uri, run_id)}

    rows, ids = [], []
    for n, spec in enumerate(args.members):
        model, *extra = spec.split()
        out = work / "runs" / f"{n}-{model}"
        cfg = compose("train", [*data, f"model={model}", *extra], out, uri)
        t0 = time.perf_counter()
        if (out / "submission.csv").exists() and (out / "run_id").exists():  # a rerun with --workdir: reuse
            run_id = (out / "run_id").read_text().strip()
        else:
            train(cfg)
            run_id = latest_run_id(uri)
            (out / "run_id").write_text(run_id)
        ids.append(run_id)
        rows.append(measured(spec, time.perf_counter() - t0, out / "submission.csv", run_id))

    runs = f"runs=[{','.join(ids)}]"
    jobs = [("rerank", ["method=rerank", f"top_n={args.top_n}", *args.rerank])]
    # the blends' weights are searched on the same validation candidates (split=none runs hold them)
    jobs += [(m, [f"method={m}", f"top_n={min(args.top_n, 50)}", "search.method=optuna", f"search.trials={args.trials}"])
             for m in args.blends]
    if "score_blend" in args.blends and args.full_scores:
        jobs.append(("score_blend_full", ["method=score_blend", "full_scores=true", "search.method=optuna",
                                          f"search.trials={args.trials}"]))
    for name, overrides in jobs:
        out = work / "runs" / f"ens-{name}"
        t0 = time.perf_counter()
        run_ensemble(compose("ensemble", [runs, *overrides], out, uri))
        if name != "rerank":
            weights = [line.split(",")[2] for line in (out / "members.csv").read_text().splitlines()[1:]]
            name = f"{name} (weights {','.join(weights)})"
        rows.append(measured(name, time.perf_counter() - t0, out / "submission.csv", latest_run_id(uri)))

    if args.synthetic:
        print(f"\nsynthetic (competition size): members {args.members}, top_n {args.top_n}, split=none refit=true; "
              f"store {uri}")
        print("| step | seconds | peak RSS so far (GB) |\n|---|---|---|")
        for r in rows:
            print(f"| {r['name']} | {r['seconds']:.1f} | {r['rss_gb']:.2f} |")
        members = sum(r["seconds"] for r in rows[:len(args.members)])
        print(f"members {members:.1f} s, rerank {rows[len(args.members)]['seconds']:.1f} s; the whole two-stage run "
              f"{members + rows[len(args.members)]['seconds']:.1f} s (members + rerank), peak RSS "
              f"{max(r['rss_gb'] for r in rows):.2f} GB")
        return

    n_members = len(args.members)
    best = max(rows[:n_members], key=lambda r: r["hidden"]["recall"]["all"])
    print(f"\n{args.bench.name}: members {args.members}, top_n {args.top_n}, split=none refit=true; store {uri}")
    print("| run | validation R@10; last / random | hidden R@10 (± se) | last | random | NDCG@10 | x best member | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        h = r["hidden"]
        print(f"| {r['name']} | {r['val']} | {h['recall']['all']:.4f} (± {h['recall_se']['all']:.4f}) | "
              f"{h['recall']['last']:.4f} | {h['recall']['random']:.4f} | {h['ndcg']['all']:.4f} | "
              f"{h['recall']['all'] / best['hidden']['recall']['all']:.3f} | {r['seconds']:.1f} |", flush=True)
    print(f"best member: {best['name']}; seconds: members = train(), ensembles = ensemble.py (search included); "
          "validation R@10: what selects (a member's on the whole validation part; a combination's on the "
          "validation users its guard held out, with its margin over the best member there), then its two parts")
    if args.slot_mix:
        slot_mix(args, work, n_members)


def validation(uri: str, run_id: str | None) -> str:
    """A run's validation Recall@10 as its MLflow run logged it (and a combination's guard margin), then
    its last / random parts: the figures that choose (member sets, `rerank.last_gain`), beside the
    hidden ones that only report."""
    if run_id is None:
        return ""
    import mlflow

    m = mlflow.MlflowClient(uri).get_run(run_id).data.metrics
    if "val_recall_at_10" not in m:
        return ""
    margin = f" ({m['guard_margin']:+.4f} ± {m['guard_se']:.4f})" if "guard_margin" in m else ""
    # the parts on the same users: a combination's held-out ones, a member's whole validation part
    parts = [m.get(f"val_held_recall_at_10_{p}", m.get(f"val_recall_at_10_{p}")) for p in ("last", "random")]
    return f"{m['val_recall_at_10']:.4f}{margin}" + ("" if None in parts else f"; {parts[0]:.4f} / {parts[1]:.4f}")


def slot_mix(args, work: Path, n_members: int) -> None:
    """The last member's top s, then the first member's list, for s = 0..5 (module docstring)."""
    import pandas as pd

    runs = sorted((work / "runs").glob("[0-9]*-*"), key=lambda p: int(p.name.split("-")[0]))[:n_members]
    first, last = (pd.read_csv(r / "candidates.csv").sort_values(["user", "rank"]) for r in (runs[0], runs[-1]))
    print(f"\n| {runs[-1].name}'s top s, then {runs[0].name}'s | all | last | random |\n|---|---|---|---|")
    for s in range(6):
        head = last[last["rank"] <= s][["user", "item"]]
        rest = first[["user", "item"]]
        lists = pd.concat([head, rest]).drop_duplicates(["user", "item"]).groupby("user", sort=False).head(10)
        out = work / f"slot-mix-{s}.csv"
        lists.to_csv(out, index=False)
        r = score(args.scorer, args.bench, out)["recall"]
        print(f"| s = {s} | {r['all']:.4f} | {r['last']:.4f} | {r['random']:.4f} |")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
