"""Fuse the top-N candidates of tracked runs into one submission, logged as its own MLflow run.

    python ensemble.py runs=[<run id>,<run id>,...] method=rank_vote top_n=30
    python ensemble.py runs=[...] method=rrf weights={ease:2,itemknn:1}
    python ensemble.py query.experiment=competition query.split=competition search.method=grid
Methods: rank_vote | rrf | score_blend | rerank (recmovie/ensemble/). Members must share data and split.
"""
import sys

import hydra
from omegaconf import DictConfig

from recmovie.cli import check_output_folder, quote_overrides, run_cli
from recmovie.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="ensemble")
def main(cfg: DictConfig) -> float | None:
    from recmovie.ensemble.command import run_ensemble

    return run_cli(run_ensemble, cfg)


if __name__ == "__main__":
    sys.argv[1:] = quote_overrides(sys.argv[1:])  # data.dir=/data/데이터 needs no quotes
    check_output_folder("ensemble", sys.argv[1:])
    main()
