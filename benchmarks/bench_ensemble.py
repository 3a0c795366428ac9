"""Ensembles of recmovie's own runs on a benchmark folder, scored by the benchmark's scorer.

    python benchmarks/bench_ensemble.py                       # ml-100k, the default members
    python benchmarks/bench_ensemble.py --members ease "ease confidence=time" itemknn multivae \
        --methods rank_vote score_blend --search optuna --trials 200

Each member (a model name plus train.py overrides) is trained twice on <bench>/input with its
default config: with split=competition (a validation holdout carved from the input) and with
split=none (the final submission). For every method, the ensemble of the split=none runs is
scored on the benchmark's hidden.csv twice: with equal weights, and with the weights searched on
the split=competition runs' holdout (never on hidden.csv) and applied, member by member, to the
split=none runs. Prints one table: validation Recall@10 and hidden Recall@10 (all/last/random) and
NDCG@10 of every member and ensemble. Everything goes into a fresh tracking store in --workdir.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# dissimilar families; those whose conf/model/<name>.yaml is missing are skipped (the autoencoder and
# MF families are built on other branches)
DEFAULT_MEMBERS = ["ease", "ease confidence=time", "itemknn", "userknn", "als", "multivae"]


def compose(name: str, overrides: list[str], output_dir: Path, uri: str):
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import open_dict

    from recmovie.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.tracking.uri = uri
    return cfg


def latest_run_id(uri: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id


def score(scorer: Path, bench: Path, submission: Path) -> dict:
    out = subprocess.run([sys.executable, str(scorer), "--submission", str(submission), "--hidden",
                          str(bench / "hidden.csv"), "--train", str(bench / "train.csv"), "--json"],
                         capture_output=True, text=True, check=False)
    result = json.loads(out.stdout.splitlines()[0])
    if not result["valid"]:
        raise SystemExit(f"invalid submission {submission}: {result['problems']}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", type=Path, default=REPO.parent / "shared/bench/ml-100k")
    p.add_argument("--scorer", type=Path, default=REPO.parent / "shared/tools/score_submission.py")
    p.add_argument("--members", nargs="+", default=None,
                   help="each: a model name, then train.py overrides, e.g. 'ease confidence=time' "
                        f"(default: those of {DEFAULT_MEMBERS} that exist)")
    p.add_argument("--methods", nargs="+", default=["rank_vote", "rrf", "score_blend"])
    p.add_argument("--top-n", type=int, default=30)
    p.add_argument("--search", choices=["grid", "optuna"], default="optuna")
    p.add_argument("--trials", type=int, default=200, help="optuna trials")
    p.add_argument("--without", nargs="+", default=[],
                   help="also ensemble the members without these models (e.g. the sequential ones), to compare")
    p.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder")
    args = p.parse_args()
    if args.members is None:
        args.members = [m for m in DEFAULT_MEMBERS if (REPO / "conf/model" / f"{m.split()[0]}.yaml").exists()]
        print("members:", args.members, flush=True)

    from recmovie.ensemble.command import run_ensemble
    from recmovie.pipeline import train

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-ensemble-"))
    uri = f"sqlite:///{work.resolve() / 'mlruns' / 'mlflow.db'}"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    data = ["data=competition", f"data.dir={args.bench / 'input'}"]
    rows, ids = [], {"competition": [], "none": []}

    for n, spec in enumerate(args.members):
        model, *extra = spec.split()
        row = {"name": spec}
        for split in ("competition", "none"):
            cfg = compose("train", [*data, f"split={split}", f"model={model}", *extra],
                          work / "runs" / f"{n}-{model}-{split}", uri)
            t0 = time.perf_counter()
            recall = train(cfg)
            ids[split].append(latest_run_id(uri))
            if split == "competition":
                row["val"] = recall
            else:
                row["seconds"] = time.perf_counter() - t0
                row["hidden"] = score(args.scorer, args.bench, Path(cfg.paths.output_dir) / "submission.csv")
        rows.append(row)

    groups = {"all members": list(range(len(args.members)))}
    if args.without:
        groups["without " + ",".join(args.without)] = [n for n, m in enumerate(args.members)
                                                       if m.split()[0] not in args.without]
    for group, members in groups.items():
        for method in args.methods:
            for searched in (False, True):
                base = [f"method={method}", f"top_n={args.top_n}"]
                search = [f"search.method={args.search}", f"search.trials={args.trials}"] if searched else []
                tag = f"{method}-{'searched' if searched else 'equal'}-{len(members)}"
                val_runs = ",".join(ids["competition"][n] for n in members)
                val_cfg = compose("ensemble", [*base, f"runs=[{val_runs}]", *search],
                                  work / "runs" / f"ens-{tag}-competition", uri)
                t0 = time.perf_counter()
                val = run_ensemble(val_cfg)
                seconds = time.perf_counter() - t0
                weights = Path(val_cfg.paths.output_dir, "members.csv").read_text().splitlines()[1:]
                weights = [line.split(",")[2] for line in weights]  # run_id,model,weight,...
                final = [*base, f"runs=[{','.join(ids['none'][n] for n in members)}]", f"weights=[{','.join(weights)}]"]
                final_cfg = compose("ensemble", final, work / "runs" / f"ens-{tag}-none", uri)
                run_ensemble(final_cfg)
                rows.append({"name": f"{method} ({'weights ' + ','.join(weights) if searched else 'equal weights'})",
                             "group": group, "val": val, "seconds": seconds,
                             "hidden": score(args.scorer, args.bench, Path(final_cfg.paths.output_dir) / "submission.csv")})

    n_members = len(args.members)
    best = max(rows[:n_members], key=lambda r: r["hidden"]["recall"]["all"])
    print(f"\n{args.bench.name}: {n_members} members, top_n {args.top_n}, weights searched by {args.search} "
          f"on the split=competition runs' validation part; hidden = {args.bench / 'hidden.csv'}; store {uri}")
    head = f"| {'run':<60} | val R@10 | hidden R@10 | last | random | NDCG@10 | seconds |"
    print(head + "\n|" + "|".join("-" * (len(c) + 0) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        h = r["hidden"]
        name = r["name"] + (f" [{r['group']}]" if r.get("group") and len(groups) > 1 else "")
        print(f"| {name:<60} | {r['val']:.4f} | {h['recall']['all']:.4f} | {h['recall']['last']:.4f} | "
              f"{h['recall']['random']:.4f} | {h['ndcg']['all']:.4f} | {r['seconds']:.1f} |")
    print(f"\nbest member: {best['name']} {best['hidden']['recall']['all']:.4f} "
          f"(se {best['hidden']['recall_se']['all']:.4f})")
    for group in groups:
        # each group's ensemble chosen by its split=competition test figure (`val` column), not by hidden.csv
        top = max((r for r in rows[n_members:] if r["group"] == group), key=lambda r: r["val"])
        h = top["hidden"]
        print(f"best ensemble of {group}: {top['name']} {h['recall']['all']:.4f} (se {h['recall_se']['all']:.4f}, "
              f"{h['recall']['all'] - best['hidden']['recall']['all']:+.4f} against the best member; "
              f"last {h['recall']['last']:.4f}, random {h['recall']['random']:.4f})")
    print("val R@10: members, their validation part; ensembles, the split=competition test part (the search "
          "saw only the validation part); "
          "seconds: members = the split=none train() call, ensembles = the validation run, search included")


if __name__ == "__main__":
    main()
