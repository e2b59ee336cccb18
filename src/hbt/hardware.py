"""What the trainer runs on, settled before anything heavy starts.

- ``trainer.precision: null`` becomes bf16-mixed on GPUs with bf16 (16-mixed on older ones) and
  32-true on the CPU, so the default trainer uses a GPU host's tensor cores without a flag.
- A model over ``cpu_max_parameters`` (default 1e9) on the CPU stops with one line naming the GPU
  trainers, before its weights are loaded (its size is read from its config on the meta device).
- ``trainer=fsdp`` gets each transformer block of the backbone as its own FSDP unit; combinations it
  does not support stop before training with one line naming the keys.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from omegaconf import DictConfig, open_dict

from hbt.errors import ConfigError


def uses_gpu(trainer_cfg: DictConfig) -> bool:
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def default_precision(gpu: bool) -> str:
    if not gpu:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


def resolve_precision(cfg: DictConfig) -> None:
    """Fill in ``trainer.precision``; under mixed precision the optimizer is not the fused kernel,
    since Lightning's mixed-precision plugin refuses gradient clipping with an optimizer that unscales
    gradients itself (the foreach kernel is used instead; fused stays for full precision, where it is
    ~10x faster on the CPU)."""
    with open_dict(cfg):
        if cfg.trainer.get("precision") is None:
            cfg.trainer.precision = default_precision(uses_gpu(cfg.trainer))
        optimizer = cfg.get("optim", {}).get("optimizer") if cfg.get("optim") else None
        if "mixed" in str(cfg.trainer.precision) and optimizer is not None and optimizer.get("fused"):
            optimizer.fused = False


def check_fits_cpu(cfg: DictConfig) -> None:
    """Training a >1B-parameter encoder on the CPU would take days per epoch; say so before loading it."""
    limit = cfg.get("cpu_max_parameters")
    name = cfg.model.get("name_or_path")
    if limit is None or name is None or uses_gpu(cfg.trainer):
        return
    from hbt.models.encoder import count_parameters

    count = count_parameters(str(name), bool(cfg.model.get("trust_remote_code", False)))
    if count > float(limit):
        raise ConfigError(
            "trainer",
            f"{name} has {count / 1e9:.2f}B encoder parameters, too many to train on the CPU; "
            "use trainer=gpu|ddp|fsdp (or cpu_max_parameters=null to train on the CPU anyway)",
        )


def is_fsdp(trainer_cfg: DictConfig) -> bool:
    strategy = trainer_cfg.get("strategy")
    if isinstance(strategy, str):
        return strategy.startswith("fsdp")
    return strategy is not None and "FSDP" in str(strategy.get("_target_", ""))


def check_fsdp(cfg: DictConfig) -> None:
    if not is_fsdp(cfg.trainer):
        return
    if cfg.loss.get("chunk_size"):
        raise ConfigError(
            "loss.chunk_size",
            "GradCache is not supported with trainer=fsdp (FSDP reduces gradients inside every chunk's backward, "
            "which GradCache's own averaging would repeat); set loss.chunk_size=null or use trainer=ddp",
        )


def fsdp_wrap_classes(encoder: torch.nn.Module) -> set[type]:
    """The backbone's transformer block classes (Hugging Face's ``_no_split_modules``), one FSDP unit each."""
    names = set(getattr(encoder.backbone, "_no_split_modules", None) or [])
    return {type(module) for module in encoder.modules() if type(module).__name__ in names}


def fsdp_strategy(strategy_cfg: DictConfig, encoder: torch.nn.Module):
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
