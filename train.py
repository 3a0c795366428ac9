"""Train one model (or a sweep with -m), evaluate it, write the submission and log an MLflow run.

    python train.py                                  # EASE on the bundled sample
    python train.py model=itemknn confidence=time
    python train.py data=competition data.dir=/path/to/train split=none model=ease
    python train.py -m model=ease,itemknn
"""

import hydra
from omegaconf import DictConfig

from recmovie.cli import run_cli, run_script
from recmovie.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from recmovie.pipeline import train

    return run_cli(train, cfg)


if __name__ == "__main__":
    run_script(main)
