"""Train a multilingual retriever with hybrid batches: `python train.py model=xlmr_base sampler.ratio=0.3`."""

import hydra
from omegaconf import DictConfig

from hbt.tasks import run_task, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_task(train, cfg)
    return None if metrics is None else metrics.get("test/toy/multi/map")


if __name__ == "__main__":
    main()
