"""The sharded strategies: FSDP on GPUs with each transformer block its own unit, the same code path over
gloo on CPU processes (``trainer=fsdp_cpu``, what CI runs), and the whole parameters gathered for evaluation
and export. Which combinations FSDP is refused with is decided by the run plan (:mod:`hbt.plan`)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from omegaconf import DictConfig

from hbt.compat import cpu_fsdp_strategy as compat_cpu_fsdp_strategy


def fsdp_wrap_classes(encoder: torch.nn.Module) -> set[type]:
    """The backbone's transformer block classes (Hugging Face's ``_no_split_modules``), one FSDP unit each."""
    names = set(getattr(encoder.backbone, "_no_split_modules", None) or [])
    return {type(module) for module in encoder.modules() if type(module).__name__ in names}


def cpu_fsdp_strategy(**kwargs):
    """``trainer=fsdp_cpu``: Lightning's FSDP strategy over gloo on CPU processes, the same sharding,
    wrapping, state-dict and checkpoint code as ``trainer=fsdp`` on GPUs, so that CI tests the FSDP path.
    Full precision only: FSDP's bf16 parameters meet fp32 inputs in CPU layer norms, which torch does not
    support. (What it changes of Lightning's strategy: :func:`hbt.compat.cpu_fsdp_strategy`.)"""
    return compat_cpu_fsdp_strategy(**kwargs)


def fsdp_strategy(strategy_cfg: DictConfig, encoder: torch.nn.Module):
    """The FSDP strategy of ``trainer.strategy`` with each of the encoder's transformer blocks its own unit.
    Wrap it (``trainer.fit``) inside :func:`hbt.compat.fsdp_full_precision_in_eval`: evaluation then
    unshards full-precision weights, as evaluate.py runs the export."""
    from hydra.utils import instantiate

    classes = fsdp_wrap_classes(encoder)
    return instantiate(strategy_cfg, **({"auto_wrap_policy": classes} if classes else {}))


@contextmanager
def full_parameters(trainer):
    """Under FSDP, the whole encoder's parameters on every rank for the duration (evaluation, export);
    elsewhere nothing to do. Every rank must enter it."""
    model = getattr(getattr(trainer, "strategy", None), "model", None)
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield
    else:
        yield
