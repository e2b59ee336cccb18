"""Checkpoints that make an interrupted run resumable exactly.

On Ctrl-C or SIGTERM (a cluster's pre-emption) Lightning stops after the current batch; this callback
then writes ``checkpoints/last.ckpt`` (through a temporary file and a rename, so an earlier
``last.ckpt`` is never half-overwritten). ``ckpt_path=last`` with ``hydra.run.dir`` set to the run's
directory resumes from it with optimizer, scheduler, sampler position and RNG states. Other failures
(a diverged loss, a bug) leave the checkpoints as they were.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hbt.errors import ConfigError

INTERRUPTS = (KeyboardInterrupt, SIGTERMException)


class InterruptCheckpoint(L.Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, INTERRUPTS):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
            run_dir = self.path.parent.parent
            print(
                f"interrupted at step {trainer.global_step}: saved {self.path}; resume with "
                f"`python train.py <same overrides> ckpt_path=last hydra.run.dir={run_dir}`",
                file=sys.stderr,
                flush=True,
            )


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last``: this run directory's ``checkpoints/last.ckpt``; otherwise a path that must exist."""
    if not ckpt_path:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        hint = "; point hydra.run.dir at the interrupted run's directory" if ckpt_path == "last" else ""
        raise ConfigError("ckpt_path", f"no checkpoint at {path}{hint}")
    return str(path)
