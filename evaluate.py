"""Evaluate a checkpoint or any Hugging Face encoder: `python evaluate.py ckpt_path=... eval=xquad_r`."""

import hydra
from omegaconf import DictConfig

from hbt.tasks import evaluate, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
