"""The run plan: a training run's config resolved and checked once, before anything heavy starts (the
encoder, the loggers and their banners, the trainer), into one typed object that the builders read.

What it settles:
- where the trainer runs and in what precision: ``trainer.precision: null`` follows the hardware
  (:func:`hbt.hardware.default_precision`); under fp16 mixed precision the fused optimizer is given up,
  since gradients are scaled there and Lightning refuses to clip for an optimizer that unscales itself
  (the foreach kernel is used instead); bf16 scales nothing and keeps the fused kernel, ~10x faster on
  the CPU (the module clips it directly: :meth:`hbt.module.RetrieverModule.configure_gradient_clipping`);
- the strategy (FSDP or not) and the combinations FSDP is refused with;
- ``compile``, GradCache's chunk, the CPU size limit, the sampler's settings, the loss and
  ``optimized_metric``.

A bad value is one :class:`~hbt.errors.ConfigError` naming its key. The run's config is not edited: the
plan holds a resolved copy (``config``), which is what the builders instantiate and what ``config.yaml``
and the checkpoints record.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from hbt.cli import check_targets
from hbt.errors import ConfigError, hbt_cause
from hbt.grad_cache import GradCache
from hbt.hardware import default_precision, uses_gpu
from hbt.loss import InfoNCELoss
from hbt.models.backbone import count_parameters
from hbt.models.precision import training_compile_mode
from hbt.sampling import check_settings


@dataclass(frozen=True)
class RunPlan:
    config: DictConfig  # the run's config with the values below filled in
    accelerator: str  # "gpu" or "cpu"
    precision: str  # trainer.precision, resolved
    fused_optimizer: bool | None  # optim.optimizer.fused after resolution (None: the optimizer has no such key)
    fsdp: bool  # trainer.strategy shards the model (trainer=fsdp, fsdp_cpu)
    compile: str | None  # the torch.compile mode of the training step, None: eager
    grad_cache_chunk: int | None  # GradCache's chunk size, None: off
    cpu_max_parameters: float | None
    loss: InfoNCELoss
    grad_cache: GradCache | None


def is_fsdp(trainer_cfg: Mapping) -> bool:
    strategy = trainer_cfg.get("strategy")
    if isinstance(strategy, str):
        return strategy.startswith("fsdp")
    return strategy is not None and "fsdp" in str(strategy.get("_target_", "")).lower()


def plan_training(cfg: DictConfig) -> RunPlan:
    """The plan of a training run (``tasks.train``); ``cfg`` is left as it is."""
    check_targets(cfg)
    config = copy.deepcopy(cfg)
    gpu = uses_gpu(config.trainer)
    fused = None
    with open_dict(config):
        if config.trainer.get("precision") is None:
            config.trainer.precision = default_precision(gpu)
        optimizer = config.get("optim", {}).get("optimizer") if config.get("optim") else None
        if optimizer is not None and "fused" in optimizer:
            if str(config.trainer.precision) in ("16-mixed", "16") and optimizer.get("fused"):
                optimizer.fused = False
            fused = bool(optimizer.fused)
    sampler = config.sampler
    check_settings(
        sampler.get("ratio"),
        sampler.get("mode", "batch"),
        config.data.get("batch_size"),
        sampler.get("ratio_schedule"),
        sampler.get("temperature"),
    )
    try:
        loss = instantiate(config.loss)  # its temperature and margin are checked by building it
    except Exception as err:  # instantiate wraps the loss's own one-line error
        cause = hbt_cause(err)
        if cause is None:
            raise
        raise cause from None
    chunk = (config.get("grad_cache") or {}).get("chunk_size")
    grad_cache = GradCache(chunk) if chunk is not None else None
    fsdp = is_fsdp(config.trainer)
    if fsdp:
        _check_fsdp(config)
    compile_mode = training_compile_mode(config.get("compile", False))
    if fsdp and compile_mode is not None:
        raise ConfigError(
            "compile",
            "not supported with trainer=fsdp: FSDP gathers and frees each layer's weights inside its own forward, "
            "which a compiled backbone would cut through; set compile=false or use trainer=ddp",
        )
    _check_optimized_metric(config)
    limit = config.get("cpu_max_parameters")
    return RunPlan(
        config=config,
        accelerator="gpu" if gpu else "cpu",
        precision=str(config.trainer.precision),
        fused_optimizer=fused,
        fsdp=fsdp,
        compile=compile_mode,
        grad_cache_chunk=chunk,
        cpu_max_parameters=float(limit) if limit is not None else None,
        loss=loss,
        grad_cache=grad_cache,
    )


def check_fits_cpu(plan: RunPlan) -> None:
    """Training a >1B-parameter encoder on the CPU would take days per epoch; say so before loading it
    (its size is read from its config on the meta device)."""
    name = plan.config.model.get("name_or_path")
    if plan.cpu_max_parameters is None or name is None or plan.accelerator == "gpu":
        return
    count = count_parameters(str(name), bool(plan.config.model.get("trust_remote_code", False)))
    if count > plan.cpu_max_parameters:
        raise ConfigError(
            "trainer",
            f"{name} has {count / 1e9:.2f}B encoder parameters, too many to train on the CPU; "
            "use trainer=gpu|ddp|fsdp (or cpu_max_parameters=null to train on the CPU anyway)",
        )


def _check_fsdp(cfg: DictConfig) -> None:
    """The combinations FSDP does not support, each one line naming its key."""
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
            "where GradCache needs them reduced once, after the last chunk); set grad_cache.chunk_size=null or use trainer=ddp",
        )


def _check_optimized_metric(cfg: DictConfig) -> None:
    name = cfg.get("optimized_metric")
    if name is None:
        return
    parts = str(name).split("/")
    benchmarks = sorted((cfg.get("eval") or {}).keys())
    if len(parts) != 4 or parts[0] != "test" or parts[1].split("[")[0] not in benchmarks:
        raise ConfigError(
            "optimized_metric",
            f"expected test/<benchmark>/<setting>/<metric> with a benchmark of eval ({', '.join(benchmarks)}); got {name}",
        )
    metric = parts[3]
    if metric.startswith(("peer@", "own_share@")):  # the language-bias cut-offs are known before training
        ks = [str(k) for k in (cfg.get("evaluator") or {}).get("bias_ks") or []]
        if metric.split("@", 1)[1] not in ks:
            raise ConfigError("optimized_metric", f"{metric} is not computed: evaluator.bias_ks is [{', '.join(ks)}]")
