"""hbt: hybrid batch training of multilingual dense retrievers.

Pipeline, one module per stage: data (parallel QA items) -> sampling (X-X / X-Y / hybrid batches)
-> models.encoder + loss (InfoNCE) -> module (LightningModule) -> eval (retrieval benchmarks)
-> tasks (train / evaluate entry points, results.json).
"""

__version__ = "0.1.0"

import os as _os

from omegaconf import OmegaConf as _OmegaConf

# ``${hbt.cwd:}`` (paths.root_dir): the directory the command was started from, taken when hbt is first
# imported. Hydra's ``${hydra:runtime.cwd}`` cannot serve: a multirun's sweeper computes hydra.sweep.dir
# (under paths.log_dir) before Hydra's runtime config exists, and every `python train.py -m ...` without
# an explicit hydra.sweep.dir failed there.
_START_DIR = _os.getcwd()
if not _OmegaConf.has_resolver("hbt.cwd"):
    _OmegaConf.register_new_resolver("hbt.cwd", lambda: _START_DIR)
