"""Checkpoints that make an interrupted run resumable exactly, on one process or under DDP.

On Ctrl-C or SIGTERM (a cluster's pre-emption) training stops after the current batch and this callback
writes ``checkpoints/last.ckpt`` (through a temporary file and a rename, so an earlier ``last.ckpt`` is
never half-overwritten). ``ckpt_path=last`` with ``hydra.run.dir`` set to the run's directory resumes
from it with optimizer, scheduler, sampler position and RNG states; ``ckpt_path=auto`` does the same
when the checkpoint exists and starts afresh otherwise (for jobs a scheduler requeues). Other failures
(a diverged loss, a bug) leave the checkpoints as they were.

Under DDP, Lightning's own SIGTERM handler runs a collective inside the signal handler; when the
signal reaches the ranks at different points of a step, the collectives no longer pair up and every
rank hangs. This callback replaces that handler by one that only records the signal (and, on rank
zero, forwards it to the ranks it launched). At the end of each batch the ranks agree on it with one
small all-reduce, so they all stop after the same step and write the checkpoint together.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hbt.errors import ConfigError

INTERRUPTS = (KeyboardInterrupt, SIGTERMException)


class InterruptCheckpoint(L.Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename
        self.requested = False
        self._trainer: L.Trainer | None = None
        self._previous_handler = None

    # -- the signal: recorded, never acted on inside the handler ------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.requested = False
        self._trainer = trainer
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def _on_sigterm(self, signum, frame) -> None:
        if self.requested:
            return
        self.requested = True
        # Rank zero launched the other ranks of this node: a signal sent to it alone reaches them too.
        launcher = getattr(self._trainer.strategy, "launcher", None) if self._trainer is not None else None
        for proc in getattr(launcher, "procs", None) or []:
            if proc.poll() is None:
                proc.send_signal(signum)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        """All ranks stop after the same batch: the signal counts if any rank has it. Lightning is then
        told on every rank, and raises at the end of this batch's loop iteration, after the scheduler
        step (raising here, before it, would resume with the learning rate one step behind)."""
        stop = self.requested
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            flag = torch.tensor([1.0 if stop else 0.0], device=trainer.strategy.root_device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            trainer._signal_connector.received_sigterm = True  # read by Lightning's loop (lightning 2.x)

    # -- the checkpoint ------------------------------------------------------------------------------
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handler()
        if not isinstance(exception, INTERRUPTS):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp)  # every rank takes part (sharded strategies gather here)
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
    """``last``: this run directory's ``checkpoints/last.ckpt``; ``auto``: the same if it exists, else
    none (a requeued job's first start); otherwise a path that must exist."""
    if not ckpt_path:
        return None
    last = output_dir / "checkpoints" / "last.ckpt"
    if ckpt_path == "auto":
        return str(last) if last.is_file() else None
    path = last if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        hint = "; point hydra.run.dir at the interrupted run's directory" if ckpt_path == "last" else ""
        raise ConfigError("ckpt_path", f"no checkpoint at {path}{hint}")
    return str(path)
