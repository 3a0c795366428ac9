"""Write a fresh submission from a trained model, without retraining.

    python predict.py run_id=<mlflow run id>
    python predict.py checkpoint=path/to/model.pt [split_name=none] [data_dir=/path]
"""
import sys

import hydra
from omegaconf import DictConfig

from recmovie.cli import check_output_folder, quote_overrides, run_cli
from recmovie.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    from recmovie.pipeline import predict

    run_cli(predict, cfg)


if __name__ == "__main__":
    sys.argv[1:] = quote_overrides(sys.argv[1:])  # data.dir=/data/데이터 needs no quotes
    check_output_folder("predict", sys.argv[1:])
    main()
