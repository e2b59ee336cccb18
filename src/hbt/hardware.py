"""What the machine has: the CPU's model and native bf16 instructions, whether the trainer runs on a GPU,
and the training precision that follows from both (bf16-mixed on GPUs with bf16, 16-mixed on older ones,
bf16-mixed on CPUs with AVX512_BF16 / AMX, 32-true on other CPUs). Detection only: the run plan
(:mod:`hbt.plan`) and inference precision (:mod:`hbt.models.precision`) decide with it."""

from __future__ import annotations

from collections.abc import Mapping

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 arithmetic: AVX-512 dot products, AMX tiles


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """The CPU's model name and its feature flags, read from Linux's /proc/cpuinfo (first processor);
    ("", set()) where it cannot be read."""
    model, flags = "", set()
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bf16 natively (the AVX512_BF16 or AMX-BF16 flags): there bf16
    autocast is about twice as fast as fp32; elsewhere it is emulated and slower."""
    return bool(set(BF16_CPU_FLAGS) & cpu_info(cpuinfo)[1])


def describe_cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model and its bf16 instruction sets, e.g. ``AMD EPYC (avx512_bf16)``: what a bf16
    speed figure is of (AMX tiles multiply several times faster than AVX-512 BF16's dot products)."""
    model, flags = cpu_info(cpuinfo)
    bf16 = sorted((set(BF16_CPU_FLAGS) | {"amx_tile"}) & flags)
    return f"{model or 'unknown CPU'} ({', '.join(bf16) or 'no native bf16'})"


def uses_gpu(trainer_cfg: Mapping) -> bool:
    """Whether the trainer config (``accelerator``) trains on a GPU."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def default_precision(gpu: bool) -> str:
    """``trainer.precision`` where it is left null."""
    if not gpu:
        return "bf16-mixed" if cpu_has_bf16() else "32-true"
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
