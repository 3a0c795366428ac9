"""Write a fresh submission from a trained model, without retraining.

    python predict.py run_id=<mlflow run id>
    python predict.py checkpoint=path/to/model.pt [split_name=none] [data_dir=/path]
"""

import hydra
from omegaconf import DictConfig

from recmovie.cli import run_cli, run_script
from recmovie.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    from recmovie.pipeline import predict

    run_cli(predict, cfg)


if __name__ == "__main__":
    run_script(main)
