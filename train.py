"""Train one model (or a sweep with -m), evaluate it, write the submission and log an MLflow run.

    python train.py                                  # EASE on the bundled sample
    python train.py model=itemknn confidence=time
    python train.py data=competition data.dir=/path/to/train split=none model=ease
    python train.py -m model=ease,itemknn
"""
import sys

import hydra
from omegaconf import DictConfig

from recmovie.cli import check_output_folder, quote_overrides, run_cli
from recmovie.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from recmovie.pipeline import train

    return run_cli(train, cfg)


if __name__ == "__main__":
    sys.argv[1:] = quote_overrides(sys.argv[1:])  # data.dir=/data/데이터 needs no quotes
    check_output_folder("train", sys.argv[1:])
    main()
