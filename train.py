"""Train a multilingual retriever with hybrid batches: `python train.py model=xlmr_base sampler.ratio=0.3`."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from hbt.cli import preflight


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns ``optimized_metric`` to sweepers (Optuna and the like)."""
    from hbt.tasks import optimized_value, run_task, train  # imported once the command line is known to be good

    return optimized_value(cfg, run_task(train, cfg))


if __name__ == "__main__":
    preflight(Path(__file__).parent / "conf", "train")  # a bad override is one line, before Hydra starts
    main()
