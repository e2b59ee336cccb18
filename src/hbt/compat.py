"""Every use of a framework's private internals, in one place, so that a Lightning, torch or Hydra upgrade
that moves one touches this file alone. Each function is tested (tests/test_compat.py) against the
installed versions; pyproject.toml bounds Lightning for them.

- Lightning: the trainer a LightningModule is attached to (``LightningModule._trainer``: the public
  ``trainer`` property raises when there is none), the SIGTERM flag its loop reads
  (``trainer._signal_connector.received_sigterm``), the processes its launcher started
  (``launcher.procs``), the full-state-dict context of its FSDP strategy
  (``lightning.pytorch.strategies.fsdp._get_full_state_dict_context``) and the FSDP strategy's
  ``_setup_model``, which the CPU variant overrides.
- torch: FSDP's full-precision evaluation switch (the ``FSDP_USE_FULL_PREC_IN_EVAL`` variable that
  FullyShardedDataParallel reads when it wraps a module); torch.compile's settings for inductor's
  freezing and for symbolic shapes without duck sizing, and the errors dynamo raises.
- datasets: a Dataset's content fingerprint (``Dataset._fingerprint``).
- Hydra: its command-line parser (``hydra._internal.utils.get_args_parser``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager


def attached_trainer(module):
    """The Lightning trainer ``module`` is attached to, or None outside a trainer (unit tests call the
    module's methods directly)."""
    return module._trainer


def launched_processes(trainer) -> list:
    """The processes Lightning's launcher started for the other ranks of this node (none where it
    started none: one process, or ranks launched by a cluster)."""
    launcher = getattr(trainer.strategy, "launcher", None)
    return list(getattr(launcher, "procs", None) or [])


def stop_child_process_observer() -> int:
    """Lightning's launcher watches the ranks it started from a thread that, when one exits with an error,
    SIGKILLs every rank of the node, this one included, without a word. hbt's rank watchdog does that job
    itself (with one line naming the rank, and telling the other nodes); this gives the observer nothing
    left to watch, so it ends at its next look. Returns how many observers were stopped."""
    import threading

    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    stopped = 0
    for thread in threading.enumerate():
        if isinstance(thread, _ChildProcessObserver):
            thread._child_processes = []  # the launcher keeps its own list (launched_processes reads that)
            stopped += 1
    return stopped


def default_store():
    """The store the default process group was rendezvoused through (torch keeps it private): the rank
    watchdog's fallback where no MASTER_ADDR / MASTER_PORT names it."""
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


def request_graceful_stop(trainer) -> None:
    """Tell Lightning's loop that SIGTERM arrived: it stops at the end of the current batch as if it had
    caught the signal itself (Lightning 2.x reads this flag)."""
    trainer._signal_connector.received_sigterm = True


@contextmanager
def full_state_dicts_in_place():
    """Lightning's FSDP strategy gathers full state dicts with ``offload_to_cpu=True``; on CPU ranks that
    "offload" frees the gathered storage that the clone then reads (a segfault in torch). For the duration,
    the strategy gathers them without it."""
    import lightning.pytorch.strategies.fsdp as lightning_fsdp
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    def context(module, world_size, rank0_only=True):
        return FSDP.state_dict_type(
            module,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        )

    saved = lightning_fsdp._get_full_state_dict_context
    lightning_fsdp._get_full_state_dict_context = context
    try:
        yield
    finally:
        lightning_fsdp._get_full_state_dict_context = saved


FSDP_FULL_PRECISION_IN_EVAL = "FSDP_USE_FULL_PREC_IN_EVAL"


@contextmanager
def fsdp_full_precision_in_eval():
    """FSDP modules wrapped inside this block unshard full-precision weights in eval mode (the callback's
    and the final evaluation run as ``evaluate.py`` runs the export: with FSDP's bf16 parameters the
    numbers differ slightly). torch reads the switch from the environment when it wraps; it is set for
    the block only and restored afterwards."""
    saved = os.environ.get(FSDP_FULL_PRECISION_IN_EVAL)
    os.environ[FSDP_FULL_PRECISION_IN_EVAL] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(FSDP_FULL_PRECISION_IN_EVAL, None)
        else:
            os.environ[FSDP_FULL_PRECISION_IN_EVAL] = saved


def hydra_args_parser():
    """Hydra's own command-line parser (the flags and overrides ``@hydra.main`` accepts)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def cpu_fsdp_strategy(**kwargs):
    """Lightning's FSDP strategy on CPU processes over gloo (``trainer=fsdp_cpu``, :mod:`hbt.strategies`).
    torch's FSDP runs on CPU; Lightning refuses the strategy there by name only (it checks the exact
    class), which a subclass passes. Lightning passes ``device_id=None`` on CPU, which torch reads as
    "find an accelerator", so the subclass wraps the module itself; and Lightning gathers full state dicts
    with ``offload_to_cpu=True``, which on CPU frees the storage the clone then reads (a segfault in
    torch), so its state-dict calls run inside :func:`full_state_dicts_in_place`."""
    import torch
    from lightning.pytorch.strategies import FSDPStrategy

    class CPUFSDPStrategy(FSDPStrategy):
        def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
            from torch.distributed.fsdp import FullyShardedDataParallel

            if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
                model = FullyShardedDataParallel(
                    module=model,
                    cpu_offload=self.cpu_offload,
                    mixed_precision=self.mixed_precision_config,
                    sharding_strategy=self.sharding_strategy,
                    device_id=torch.device("cpu"),
                    **self.kwargs,
                )
                self.kwargs.pop("auto_wrap_policy", None)  # applied above
            return super()._setup_model(model)

        def lightning_module_state_dict(self):
            with full_state_dicts_in_place():
                return super().lightning_module_state_dict()

        def optimizer_state(self, optimizer):
            with full_state_dicts_in_place():
                return super().optimizer_state(optimizer)

        def load_checkpoint(self, *args, **kwargs):
            with full_state_dicts_in_place():
                return super().load_checkpoint(*args, **kwargs)

    return CPUFSDPStrategy(**kwargs)


def compile_errors() -> tuple[type[Exception], ...]:
    """What torch.compile raises for a module it cannot compile (dynamo's errors)."""
    import torch._dynamo.exc

    return (torch._dynamo.exc.BackendCompilerFailed, torch._dynamo.exc.Unsupported)


@contextmanager
def without_duck_shaping():
    """torch.compile's dynamic shapes without duck sizing inside the block: sizes that happen to be equal
    (a batch of 64 texts of 64 tokens) are not assumed equal ever after."""
    import torch.fx.experimental._config

    with torch.fx.experimental._config.patch(use_duck_shape=False):
        yield


@contextmanager
def inductor_freezing():
    """Inductor's freezing inside the block: a module compiled here holds its weights as constants."""
    import torch._inductor.config

    with torch._inductor.config.patch(freezing=True):
        yield


def dataset_fingerprint(table) -> str:
    """The content fingerprint ``datasets`` keeps for a Dataset (it keys its own caches by it)."""
    return table._fingerprint
