"""Compare the runs of an MLflow experiment: a table (markdown + CSV) and plots, as files and as
the artifacts of a `report` run in the same experiment.

    python -m recmovie.report experiment=competition
    python -m recmovie.report experiment=competition split_name=competition per_model=all
    python -m recmovie.report experiment=competition filter="\"metrics.fit_seconds < 60\""

Hydra, like train.py / ensemble.py: the same key=value syntax and the same tracking config
(conf/tracking/mlflow.yaml, MLFLOW_TRACKING_URI wins), and a run folder under outputs/.
"""
from __future__ import annotations

import math
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from recmovie.cli import run_cli, run_script, say
from recmovie.config import CONF_DIR
from recmovie.errors import ConfigError
from recmovie.io import atomic_path
from recmovie.runs import PER_MODEL, model_of, search_experiment, select_runs
from recmovie.tracking import resolve_tracking_uri, setup_mlflow, start_run

HIDDEN_PARTS = ("all", "last", "random")
SKIPPED_PARAMS = ("model._target_", "model.name", "model.members")


def key_params(run) -> str:
    """The model's own hyper-parameters, plus confidence and loss when they are not the default."""
    params = run.data.params
    parts = [f"{k[len('model.'):]}={v}" for k, v in sorted(params.items())
             if k.startswith("model.") and k not in SKIPPED_PARAMS and not k.startswith(("model.tune.", "model.tune_extend"))]
    tags = run.data.tags
    parts += [f"{name}={tags[name]}" for name in ("confidence", "loss")
              if tags.get(name, "none") not in ("none", "") and f"model.{name}" not in params]
    return ", ".join(parts)


def comparison_table(runs: list, k: int) -> pd.DataFrame:
    # val_: the figure runs were selected by; the rest: the test part, which nothing selected on
    metrics = [f"val_recall_at_{k}", f"recall_at_{k}", f"recall_at_{k}_last", f"recall_at_{k}_random",
               f"ndcg_at_{k}", "fit_seconds"]
    return pd.DataFrame([
        {"model": model_of(r), "run_id": r.info.run_id, "split": r.data.tags.get("split", ""),
         "params": key_params(r), **{m: r.data.metrics.get(m, np.nan) for m in metrics}}
        for r in runs
    ], columns=["model", "run_id", "split", "params", *metrics])


def to_markdown(df: pd.DataFrame) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def labels(df: pd.DataFrame) -> list[str]:
    """The model name, with the run id's start where a model appears more than once."""
    counts = df["model"].value_counts()
    return [m if counts[m] == 1 else f"{m} {r[:6]}" for m, r in zip(df["model"], df["run_id"])]


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG through a temporary file, and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def plot_recall(df: pd.DataFrame, k: int, path: Path) -> Path | None:
    """Grouped bars: Recall@k of each run overall and per hidden part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = df[df[f"recall_at_{k}"].notna()]
    if scored.empty:
        return None
    cols = [f"recall_at_{k}", f"recall_at_{k}_last", f"recall_at_{k}_random"]
    x = np.arange(len(scored))
    width = 0.8 / len(cols)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(scored) + 2), 5))
    for j, (col, part) in enumerate(zip(cols, HIDDEN_PARTS)):
        bars = ax.bar(x + (j - 1) * width, scored[col].fillna(0.0), width, label=part)
        if part == "all":
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, labels(scored), rotation=30, ha="right")
    ax.set_ylabel(f"Recall@{k}")
    ax.set_title(f"Recall@{k} by model and hidden part")
    ax.legend(title="hidden part")
    return save_figure(fig, path)


def plot_curves(client, df: pd.DataFrame, k: int, path: Path) -> Path | None:
    """Validation Recall@k per epoch of the gradient-trained runs (None when there are none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    for label, run_id in zip(labels(df), df["run_id"]):
        history = sorted(client.get_metric_history(run_id, f"val_recall_at_{k}"), key=lambda m: m.step)
        if len(history) > 2:  # a closed-form run has one validation figure, not a curve
            history = history[:-1]  # the last point, one step past the epochs, is the kept model's figure
            curves.append((label, [m.step for m in history], [m.value for m in history]))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, steps, values in curves:
        ax.plot(steps, values, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation Recall@{k}")
    ax.set_title("validation curves")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_report(cfg: DictConfig) -> Path:
    """Select the runs, write report.md / report.csv / plots into the run folder, log them to MLflow."""
    if cfg.per_model not in PER_MODEL:
        raise ConfigError("per_model", f"must be one of {list(PER_MODEL)}, got {cfg.per_model!r}")
    k = int(cfg.k)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    client = setup_mlflow(uri).MlflowClient()
    found = search_experiment(client, str(cfg.experiment), str(cfg.filter or ""), cfg.split_name, key="")
    runs = select_runs(found, str(cfg.per_model), str(cfg.metric), cfg.models, exclude=("report",))
    if not runs:
        raise ConfigError("filter", f"no finished runs in experiment {cfg.experiment!r} match")
    df = comparison_table(runs, k)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "report.csv") as tmp:
        df.to_csv(tmp, index=False)
    bars = plot_recall(df, k, out / "recall_by_model.png")
    curves = plot_curves(client, df, k, out / "validation_curves.png")
    where = [f"split {cfg.split_name}"] * bool(cfg.split_name) + [f"`{cfg.filter}`"] * bool(cfg.filter)
    title = f"# Runs of experiment `{cfg.experiment}`" + (" where " + " and ".join(where) if where else "")
    notes = [f"{len(df)} run(s), {cfg.per_model} per model by {cfg.metric}."]
    notes.append(f"![Recall@{k}](recall_by_model.png)" if bars else "No run has holdout metrics (split=none): no bar chart.")
    notes.append("![validation curves](validation_curves.png)" if curves
                 else "No gradient-trained run logged validation curves.")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(title + "\n\n" + to_markdown(df) + "\n" + "\n\n".join(notes) + "\n")

    with start_run(uri, str(cfg.experiment), "report", {"model": "report", "filter": cfg.filter or "",
                                                         "report_split": cfg.split_name or ""},
                   cfg.tracking.enabled) as run:
        for name in ("report.md", "report.csv", "recall_by_model.png", "validation_curves.png"):
            if (out / name).exists():
                run.log_artifact(out / name, "report")
    say(df.drop(columns=["run_id"]).to_string(index=False, max_colwidth=50, float_format=lambda v: f"{v:.4f}") + "\n"
        + f"report: {out / 'report.md'}" + (f"   (mlflow run {run.run_id})" if run.run_id else ""))
    return out / "report.md"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
def main(cfg: DictConfig) -> None:
    run_cli(write_report, cfg)


if __name__ == "__main__":
    run_script(main)
