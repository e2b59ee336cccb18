"""Evaluate a checkpoint or any Hugging Face encoder: `python evaluate.py ckpt_path=... eval=xquad_r`."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from hbt.cli import preflight


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from hbt.tasks import evaluate, run_task  # imported once the command line is known to be good

    run_task(evaluate, cfg)


if __name__ == "__main__":
    preflight(Path(__file__).parent / "conf", "evaluate")  # a bad override is one line, before Hydra starts
    main()
