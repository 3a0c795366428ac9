"""Fuse the top-N candidates of tracked runs into one submission, logged as its own MLflow run.

    python ensemble.py runs=[<run id>,<run id>,...] method=rank_vote top_n=30
    python ensemble.py runs=[...] method=rrf weights={ease:2,itemknn:1}
    python ensemble.py query.experiment=competition query.split=competition search.method=grid
Methods: rank_vote | rrf | score_blend | rerank (recmovie/ensemble/). Members must share data and split.
"""

import hydra
from omegaconf import DictConfig

from recmovie.cli import run_cli, run_script
from recmovie.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="ensemble")
def main(cfg: DictConfig) -> float | None:
    from recmovie.ensemble.command import run_ensemble

    return run_cli(run_ensemble, cfg)


if __name__ == "__main__":
    run_script(main)
