"""Checkpoints: what hbt adds to Lightning's format, and interrupted runs made resumable exactly, on one
process or under DDP.

hbt's part of a checkpoint is written and read here only: ``hbt_config`` (the resolved run config, from
which ``evaluate.py ckpt_path=...`` rebuilds the encoder) and ``hbt_rng`` (every rank's torch, CUDA, numpy
and Python RNG states). Everything in a checkpoint is tensors and plain values, so it loads with
``torch.load(weights_only=True)`` (Lightning's resume and :func:`read_checkpoint` both do).

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

import contextlib
import json
import logging
import os
import random
import signal
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hbt.compat import launched_processes, request_graceful_stop
from hbt.distributed import rank_and_world
from hbt.errors import ConfigError, OutputError, first_line, write_failure

log = logging.getLogger(__name__)
INTERRUPTS = (KeyboardInterrupt, SIGTERMException)
CONFIG_KEY = "hbt_config"
RNG_KEY = "hbt_rng"
ENCODER_PREFIX = "encoder."  # the RetrieverModule's encoder attribute, in Lightning's state_dict


def add_run_state(checkpoint: dict, config: dict | None) -> None:
    """On save (every rank calls it: Lightning runs the hook on all). Lightning restores model, optimizer,
    scheduler and loop state; the RNGs (dropout) are hbt's to keep, every rank's: their streams drift
    apart (each rank's batch slice has its own padded shape, so dropout draws differ), and a resumed rank
    must continue its own."""
    checkpoint[CONFIG_KEY] = config
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": random.getstate(),
    }
    _, world = rank_and_world()
    states = [state]
    if world > 1:
        states = [None] * world
        dist.all_gather_object(states, state)
    checkpoint[RNG_KEY] = states


def restore_rng(checkpoint: dict) -> None:
    """On load: this rank's RNG states (rank 0's where the run had fewer ranks)."""
    states = checkpoint.get(RNG_KEY)
    rank, _ = rank_and_world()
    state = states[rank] if isinstance(states, list) and rank < len(states) else (states[0] if isinstance(states, list) else states)
    if state:
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(_numpy_state_from_plain(state["numpy"]))
        random.setstate(state["python"])


def read_checkpoint(path: str | os.PathLike) -> dict:
    """An hbt training checkpoint (``weights_only=True``), or one line naming ``ckpt_path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("ckpt_path", f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        raise ConfigError("ckpt_path", f"{path} is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(checkpoint, dict) or not checkpoint.get(CONFIG_KEY) or "state_dict" not in checkpoint:
        raise ConfigError("ckpt_path", f"{path} is not an hbt training checkpoint")
    return checkpoint


def encoder_state(state_dict: dict) -> dict:
    """The encoder's own state dict out of the module's (Lightning's ``state_dict``, FSDP's full one)."""
    return {key.removeprefix(ENCODER_PREFIX): value for key, value in state_dict.items() if key.startswith(ENCODER_PREFIX)}


# numpy's RNG state holds a uint32 array, which weights_only loading refuses: kept as an int64 tensor.
def _numpy_state_to_plain(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _numpy_state_from_plain(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached


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
        for proc in launched_processes(self._trainer) if self._trainer is not None else []:
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
            request_graceful_stop(trainer)

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


# -- which checkpoint a run resumes from ----------------------------------------------------------------
DAMAGED_SUFFIX = ".damaged"  # a checkpoint ckpt_path=auto skipped is kept under this name, never deleted
_CHOICE_ENV = "_HBT_RESUME_CHOICE"  # rank zero's choice, read by the ranks Lightning launches from it


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot resume a run, or None when it loads. The check opens the file as a resume would
    (``weights_only``), memory-mapped, so only its directory and pickled structure are read, not its
    tensors: a truncated or unreadable file is caught; damage inside tensor data that leaves the zip
    directory intact is not (docs/reliability.md)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for a damaged file
        return _loading_problem(err)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "loops" not in checkpoint:
        return "not a Lightning training checkpoint"
    if not checkpoint.get(CONFIG_KEY):
        return "not an hbt training checkpoint"
    return None


def _loading_problem(err: Exception) -> str:
    text = first_line(err)
    if "central directory" in text or "mmap can only be used" in text:
        return "truncated or not a checkpoint archive"
    return text.split(". ")[0][:160]


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from, checked before training starts.

    ``last``: this run directory's ``checkpoints/last.ckpt``; a path: that file; either must load, else one
    line names it. ``auto`` (a requeued job): the newest ``checkpoints/*.ckpt`` (by modification time) that
    loads, or none when the directory holds no checkpoint (a first start). Each newer one that does not
    load is skipped with a warning and renamed to ``<name>.damaged`` (kept, never overwritten by the resumed
    run's next checkpoint of that name); when none loads the run stops with one line.

    Rank zero decides; the ranks Lightning launches from it take its choice (they inherit it through the
    environment: :func:`share_choice`); ranks started by a cluster launcher decide alike from the same
    files, and :func:`agree_on_resume` checks that they did."""
    if not ckpt_path:
        return None
    shared = os.environ.get(_CHOICE_ENV)
    if shared is not None:
        directory, choice = json.loads(shared)
        if directory == str(output_dir):
            return choice
    folder = output_dir / "checkpoints"
    if ckpt_path != "auto":
        path = folder / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
        if not path.is_file():
            hint = "; point hydra.run.dir at the interrupted run's directory" if ckpt_path == "last" else ""
            raise ConfigError("ckpt_path", f"no checkpoint at {path}{hint}")
        problem = checkpoint_problem(path)
        if problem:
            raise ConfigError("ckpt_path", f"{path} does not load ({problem}); ckpt_path=auto resumes from the newest checkpoint that does")
        return str(path)
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True) if folder.is_dir() else []
    skipped = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            for damaged, why in skipped:
                _set_aside(damaged, why, path)
            return str(path)
        skipped.append((path, problem))
    if skipped:
        listed = "; ".join(f"{p.name}: {why}" for p, why in skipped)
        raise ConfigError("ckpt_path", f"auto: no checkpoint in {folder} loads ({listed}); start afresh in a new hydra.run.dir")
    return None


def _set_aside(path: Path, why: str, chosen: Path) -> None:
    if not _launching_rank_zero():
        log.warning("ckpt_path=auto: skipped %s (%s); resuming from %s", path, why, chosen)
        return
    target = path.with_name(path.name + DAMAGED_SUFFIX)
    number = 1
    while target.exists():
        target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}.{number}")
        number += 1
    path.rename(target)
    log.warning("ckpt_path=auto: skipped %s (%s), kept as %s; resuming from %s", path, why, target.name, chosen)


def _launching_rank_zero() -> bool:
    """Before the process group exists: is this the job's first process (no launcher gave it a rank)?"""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@contextlib.contextmanager
def share_choice(output_dir: Path, choice: str | None):
    """While ``trainer.fit`` launches the other ranks of this node, they inherit rank zero's choice."""
    previous = os.environ.get(_CHOICE_ENV)
    os.environ[_CHOICE_ENV] = json.dumps([str(output_dir), choice])
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_CHOICE_ENV, None)
        else:
            os.environ[_CHOICE_ENV] = previous


def agree_on_resume(choice: str | None) -> None:
    """Once the process group exists: every rank resumes from the same checkpoint, or one line says not."""
    _, world = rank_and_world()
    if world == 1:
        return
    choices: list = [None] * world
    dist.all_gather_object(choices, choice)
    if len(set(choices)) > 1:
        raise ConfigError("ckpt_path", f"the ranks chose different checkpoints to resume from ({choices}); give ckpt_path=<file>")


# -- writing: atomic, and a failed write is one line -------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made safe for full or failing disks. Lightning serialises the whole
    checkpoint in memory, writes it to the system's temporary directory and moves it into place (a copy
    when that is another filesystem, so a failure can leave a half file under the final name). This one
    streams ``torch.save`` into a temporary file beside the target, syncs it and renames it over the
    target: the target is either the earlier complete file or the new complete one. A write that fails
    (no space, quota, permissions) removes the temporary file and is one line naming the checkpoint; the
    earlier checkpoints stay as they were."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        with atomic_file(path) as tmp, open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yields a temporary path beside ``path``; on success it replaces ``path`` (synced), on failure it is
    removed and an ``OSError`` becomes one :class:`~hbt.errors.OutputError` line naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        why = write_failure(err) if isinstance(err, Exception) else None
        if why is not None:
            raise OutputError(str(path), f"could not be written ({why}); earlier files are as they were") from None
        raise
