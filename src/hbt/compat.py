"""Every use of a framework's private internals, in one place, so that a Lightning, torch or Hydra upgrade
that moves one touches this file alone. Each function is tested (tests/test_compat.py) against the
installed versions; pyproject.toml bounds Lightning for them.

- Lightning: the trainer a LightningModule is attached to (``LightningModule._trainer``: the public
  ``trainer`` property raises when there is none), the SIGTERM flag its loop reads
  (``trainer._signal_connector.received_sigterm``), and the full-state-dict context of its FSDP strategy
  (``lightning.pytorch.strategies.fsdp._get_full_state_dict_context``).
- torch: FSDP's full-precision evaluation switch (the ``FSDP_USE_FULL_PREC_IN_EVAL`` variable that
  FullyShardedDataParallel reads when it wraps a module).
- Hydra: its command-line parser (``hydra._internal.utils.get_args_parser``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager


def attached_trainer(module):
    """The Lightning trainer ``module`` is attached to, or None outside a trainer (unit tests call the
    module's methods directly)."""
    return module._trainer


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
