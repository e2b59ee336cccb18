"""Train a multilingual retriever with hybrid batches: `python train.py model=xlmr_base sampler.ratio=0.3`."""

import hydra
from omegaconf import DictConfig

from hbt.tasks import optimized_value, run_task, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns ``optimized_metric`` to sweepers (Optuna and the like)."""
    return optimized_value(cfg, run_task(train, cfg))


if __name__ == "__main__":
    main()
