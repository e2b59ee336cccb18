"""What the trainer runs on, settled before anything heavy starts.

- ``trainer.precision: null`` becomes bf16-mixed on GPUs with bf16 (16-mixed on older ones) and on
  CPUs with native bf16 instructions (AVX512_BF16 / AMX), 32-true on other CPUs, so the default trainer
  uses the hardware's fast arithmetic without a flag. Evaluation's ``precision: auto`` follows the
  same rule (:func:`encode_precision`).
- A model over ``cpu_max_parameters`` (default 1e9) on the CPU stops with one line naming the GPU
  trainers, before its weights are loaded (its size is read from its config on the meta device).
- ``trainer=fsdp`` gets each transformer block of the backbone as its own FSDP unit; combinations it
  does not support stop before training with one line naming the keys.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from omegaconf import DictConfig, open_dict

from hbt.errors import ConfigError
from hbt.models.encoder import COMPILE_PRECISIONS, PRECISIONS, count_parameters

# The dtypes embeddings are kept (and cached) in (evaluator.embedding_dtype).
EMBEDDING_DTYPES = {"float32": torch.float32, "float16": torch.float16}


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


def encode_precision(precision: str, device: torch.device | str, key: str = "evaluator.precision") -> str:
    """The precision inference runs in: ``auto`` is bf16 on GPUs with bf16 (fp16 on older GPUs) and on
    CPUs with native bf16, fp32 elsewhere; ``fp32``, ``bf16``, ``bf16-mixed`` and ``fp16`` force one
    (:data:`hbt.models.encoder.PRECISIONS` says how each runs)."""
    if precision != "auto" and precision not in PRECISIONS:
        raise ConfigError(key, f"expected auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if kind == "cpu" and cpu_has_bf16() else "fp32"


# Padded tokens per encoding batch under ``max_tokens: auto``. CPU: measured on 2 cores with
# multilingual-e5-small, 4096 and 8192 are the fastest of 2048-16384 (within noise; docs/benchmarks.md);
# GPUs: large batches (not measured).
AUTO_MAX_TOKENS = {"cpu": 4096, "cuda": 32768}


def token_budget(max_tokens, device: torch.device | str, key: str = "evaluator.max_tokens") -> int | None:
    """``auto`` by device (:data:`AUTO_MAX_TOKENS`), an integer as given, null for no budget."""
    if max_tokens is None:
        return None
    if max_tokens == "auto":
        return AUTO_MAX_TOKENS.get(torch.device(device).type, AUTO_MAX_TOKENS["cpu"])
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(key, f"expected auto, null or an integer >= 1, got {max_tokens!r}")
    return max_tokens


def encoding(precision: str, max_tokens, device: torch.device | str, section: str, compile: bool = False) -> dict:
    """``precision``, ``max_tokens`` and ``compile`` of :meth:`Encoder.encode` resolved for ``device``; a
    bad value is a ConfigError naming ``<section>.precision``, ``<section>.max_tokens`` or
    ``<section>.compile`` (``evaluator``, ``mine``). A compiled pass runs in fp32 or bf16 only
    (:data:`hbt.models.encoder.COMPILE_PRECISIONS`), which ``auto`` gives everywhere but on GPUs without bf16."""
    resolved = {
        "precision": encode_precision(precision, device, f"{section}.precision"),
        "max_tokens": token_budget(max_tokens, device, f"{section}.max_tokens"),
        "compile": compile,
    }
    if not isinstance(compile, bool):
        raise ConfigError(f"{section}.compile", f"expected true or false, got {compile!r}")
    if compile and resolved["precision"] not in COMPILE_PRECISIONS:
        raise ConfigError(
            f"{section}.compile",
            f"a compiled pass runs in {' or '.join(COMPILE_PRECISIONS)} (its weights are frozen into the compiled code), "
            f"but {section}.precision={precision} runs in {resolved['precision']}; set {section}.precision or {section}.compile=false",
        )
    return resolved


def uses_gpu(trainer_cfg: DictConfig) -> bool:
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def default_precision(gpu: bool) -> str:
    if not gpu:
        return "bf16-mixed" if cpu_has_bf16() else "32-true"
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


def resolve_precision(cfg: DictConfig) -> None:
    """Fill in ``trainer.precision``; under fp16 mixed precision the optimizer is not the fused kernel,
    since gradients are scaled there and Lightning's plugin refuses to clip gradients an optimizer
    unscales itself (the foreach kernel is used instead). bf16 scales nothing, so the fused kernel, ~10x
    faster on the CPU, stays (the module clips directly: :meth:`RetrieverModule.configure_gradient_clipping`)."""
    with open_dict(cfg):
        if cfg.trainer.get("precision") is None:
            cfg.trainer.precision = default_precision(uses_gpu(cfg.trainer))
        optimizer = cfg.get("optim", {}).get("optimizer") if cfg.get("optim") else None
        if str(cfg.trainer.precision) in ("16-mixed", "16") and optimizer is not None and optimizer.get("fused"):
            optimizer.fused = False


def check_fits_cpu(cfg: DictConfig) -> None:
    """Training a >1B-parameter encoder on the CPU would take days per epoch; say so before loading it."""
    limit = cfg.get("cpu_max_parameters")
    name = cfg.model.get("name_or_path")
    if limit is None or name is None or uses_gpu(cfg.trainer):
        return
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
    return strategy is not None and "fsdp" in str(strategy.get("_target_", "")).lower()


def training_compile(cfg: DictConfig) -> str | None:
    """``compile`` (conf/train.yaml) as a torch.compile mode for the training step, or None when off."""
    from hbt.models.encoder import training_compile_mode

    mode = training_compile_mode(cfg.get("compile", False))
    if mode is not None and is_fsdp(cfg.trainer):
        raise ConfigError(
            "compile",
            "not supported with trainer=fsdp: FSDP gathers and frees each layer's weights inside its own forward, "
            "which a compiled backbone would cut through; set compile=false or use trainer=ddp",
        )
    return mode


def check_fsdp(cfg: DictConfig) -> None:
    if not is_fsdp(cfg.trainer):
        return
    strategy = cfg.trainer.get("strategy")
    on_cpu = not isinstance(strategy, str) and str(strategy.get("_target_", "")).endswith("cpu_fsdp_strategy")
    if on_cpu and str(cfg.trainer.get("precision")) not in ("32-true", "32"):
        raise ConfigError(
            "trainer.precision",
            f"trainer=fsdp_cpu runs in full precision only (32-true), got {cfg.trainer.get('precision')}: "
            "FSDP's bf16 parameters meet fp32 inputs in CPU layer norms, which torch does not support",
        )
    if (cfg.get("evaluator") or {}).get("compile"):
        raise ConfigError(
            "evaluator.compile",
            "not supported with trainer=fsdp: a compiled pass needs the backbone's weights whole, and FSDP holds "
            "them sharded (gathered only inside its own forward); set evaluator.compile=false",
        )
    if (cfg.get("grad_cache") or {}).get("chunk_size") is not None:
        raise ConfigError(
            "grad_cache.chunk_size",
            "GradCache is not supported with trainer=fsdp (FSDP reduces gradients inside every chunk's backward, "
            "which GradCache's own averaging would repeat); set grad_cache.chunk_size=null or use trainer=ddp",
        )


def fsdp_wrap_classes(encoder: torch.nn.Module) -> set[type]:
    """The backbone's transformer block classes (Hugging Face's ``_no_split_modules``), one FSDP unit each."""
    names = set(getattr(encoder.backbone, "_no_split_modules", None) or [])
    return {type(module) for module in encoder.modules() if type(module).__name__ in names}


@contextmanager
def _full_state_dicts_in_place():
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


def cpu_fsdp_strategy(**kwargs):
    """``trainer=fsdp_cpu``: Lightning's FSDP strategy over gloo on CPU processes, the same sharding,
    wrapping, state-dict and checkpoint code as ``trainer=fsdp`` on GPUs, so that CI tests the FSDP path.
    torch's FSDP runs on CPU; Lightning refuses the strategy there by name only (it checks the exact
    class), which a subclass passes. Full precision only: FSDP's bf16 parameters meet fp32 inputs in
    CPU layer norms, which torch does not support."""
    from lightning.pytorch.strategies import FSDPStrategy

    class CPUFSDPStrategy(FSDPStrategy):
        def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
            from torch.distributed.fsdp import FullyShardedDataParallel

            if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
                # Lightning passes device_id=None on CPU, which torch reads as "find an accelerator".
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

        # Lightning gathers full state dicts with offload_to_cpu=True; on CPU that "offload" frees the
        # gathered storage that the clone then reads (a segfault in torch), so it is turned off here.
        def lightning_module_state_dict(self):
            with _full_state_dicts_in_place():
                return super().lightning_module_state_dict()

        def optimizer_state(self, optimizer):
            with _full_state_dicts_in_place():
                return super().optimizer_state(optimizer)

        def load_checkpoint(self, *args, **kwargs):
            with _full_state_dicts_in_place():
                return super().load_checkpoint(*args, **kwargs)

    return CPUFSDPStrategy(**kwargs)


def fsdp_strategy(strategy_cfg: DictConfig, encoder: torch.nn.Module):
    from hydra.utils import instantiate

    # Evaluation (the callback's and the final one, in eval mode) unshards full-precision weights, as
    # evaluate.py runs the export: without it FSDP's bf16 parameters give slightly different numbers.
    os.environ["FSDP_USE_FULL_PREC_IN_EVAL"] = "1"
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
