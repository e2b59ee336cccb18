"""Inference precision and compiled copies of the backbone, in one home: what each precision setting
(``evaluator.precision``, ``mine.precision``) means and how ``auto`` resolves on this hardware, the token
budget of an encoding batch, the dtype embeddings are kept in, the bf16 weights an encode call runs with,
and the ``torch.compile``-d backbones (a frozen copy for encoding, the training step's ``compile``).

Training precision (``trainer.precision``) is Lightning's, resolved by the run plan (:mod:`hbt.plan`).
"""

from __future__ import annotations

import copy
import logging
import weakref

import torch
from torch import nn

from hbt import hardware
from hbt.compat import compile_errors, inductor_freezing, without_duck_shaping
from hbt.errors import ConfigError, first_line

log = logging.getLogger(__name__)

# Encoding precisions (evaluator.precision, mine.precision): how each runs the backbone, and in what dtype.
# bf16: its floating weights cast to bf16 once per encode call, so matmuls, attention and norms all run in
# bf16 with no per-operation casts (as inference usually runs; pooling, Dense heads and normalization stay
# fp32). bf16-mixed and fp16: fp32 weights under autocast, the matmuls in the low precision (fp16 stays
# mixed: T5-family activations overflow fp16's range). An FSDP-sharded backbone, whose weights are
# gathered inside its own forward, runs bf16 as bf16-mixed.
PRECISIONS = {
    "fp32": (None, None),
    "bf16": ("cast", torch.bfloat16),
    "bf16-mixed": ("autocast", torch.bfloat16),
    "fp16": ("autocast", torch.float16),
}

# encode(compile=True): the precisions a compiled pass runs in. Its copy of the backbone holds the weights
# as constants (inductor's freezing: linear layers pre-packed, element-wise work fused into them), which
# autocast over fp32 weights (bf16-mixed, fp16) would defeat.
COMPILE_PRECISIONS = ("fp32", "bf16")

# Each encoder's compiled copy of its backbone, with the key of the weights it was made from
# (:meth:`Encoder.compiled_backbone`). Held here, not on the module, so the encoder still pickles.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Each encoder's torch.compile-d backbone for training steps (:meth:`Encoder.compile_for_training`): the
# same module and weights, so nothing is registered twice in the state dict; held here for the same reason.
_TRAINING_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# The training step's compile setting (``compile`` in conf/train.yaml): true is inductor's default mode.
TRAINING_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def training_compile_mode(value) -> str | None:
    """``compile`` (conf/train.yaml) as a torch.compile mode, None when off; anything else is one line."""
    if value is False or value is None:
        return None
    mode = "default" if value is True else value
    if mode not in TRAINING_COMPILE_MODES:
        raise ConfigError("compile", f"expected true, false or one of {', '.join(TRAINING_COMPILE_MODES)}; got {value!r}")
    return mode


# The dtypes embeddings are kept (and cached) in (evaluator.embedding_dtype).
EMBEDDING_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def encode_precision(precision: str, device: torch.device | str, key: str = "evaluator.precision") -> str:
    """The precision inference runs in: ``auto`` is bf16 on GPUs with bf16 (fp16 on older GPUs) and on
    CPUs with native bf16, fp32 elsewhere; ``fp32``, ``bf16``, ``bf16-mixed`` and ``fp16`` force one
    (:data:`PRECISIONS` says how each runs)."""
    if precision != "auto" and precision not in PRECISIONS:
        raise ConfigError(key, f"expected auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if kind == "cpu" and hardware.cpu_has_bf16() else "fp32"


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
    (:data:`COMPILE_PRECISIONS`), which ``auto`` gives everywhere but on GPUs without bf16."""
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


class _Frozen:
    """Calls a compiled module with inductor's freezing on (it applies when the module compiles, at its
    first call on each new shape); :func:`compiled_call` does the rest."""

    def __init__(self, module):
        self.module = module

    def __call__(self, **kwargs):
        with inductor_freezing():
            return compiled_call(self.module, kwargs, "encode without compile")


def compiled_call(module, kwargs: dict, instead: str):
    """A compiled module's output, a failure to compile turned into one line ending in ``instead`` (what to
    change). Without duck shaping: a first batch whose row count equals its width (64 texts of 64 tokens,
    under a 4096-token budget) would otherwise be compiled for square batches only, and the next batch
    would compile again. The inputs are made contiguous: GradCache's chunks are views cut to their own
    longest row, whose strides would otherwise compile the backbone a second time."""
    try:
        with without_duck_shaping():
            return module(**{name: value.contiguous() for name, value in kwargs.items()})
    except compile_errors() as err:
        raise ConfigError("compile", f"torch.compile could not compile this encoder ({first_line(err)}); {instead}") from None


def compiled_backbone(encoder, precision: str) -> _Frozen:
    """A ``torch.compile``-d copy of the backbone for inference in ``precision`` (fp32 or bf16: its
    floating weights cast once), compiled for any batch shape and with inductor's freezing, which
    folds the weights into the compiled code as constants (pre-packed matmuls, element-wise work
    fused into them; docs/benchmarks.md has what it gains). The copy is made once and reused for as
    long as the weights are the same tensors with the same values (their versions and sums); a
    training step changes them in place, and the next call compiles a fresh copy (a frozen copy
    would go on computing with the old weights).
    Compiling a copy first resets torch.compile's caches, which frees the previous copy's constants
    and keeps torch from falling back to eager after its limit of recompilations."""
    if precision not in COMPILE_PRECISIONS:
        raise ValueError(f"compiled encoding runs in {' or '.join(COMPILE_PRECISIONS)}, not {precision}")
    tensors = [*encoder.backbone.parameters(), *encoder.backbone.buffers()]
    # What the weights are, not only which tensors: the fused AdamW step (hbt's default optimizer)
    # updates them in place without bumping their version counters, so each tensor's float64 sum is
    # part of the key (one read of the weights per encode call, small next to encoding with them).
    with torch.no_grad():
        sums = torch.stack([t.sum(dtype=torch.float64) for t in tensors]).tolist() if tensors else []
    key = (precision, tuple((id(t), t._version, t.device) for t in tensors), tuple(sums))
    held = _COMPILED.get(encoder)
    if held is not None and held[0] == key:
        return held[1]
    log.info("compiling a %s copy of the backbone for encoding (first use, or its weights changed)", precision)
    _COMPILED.pop(encoder, None)
    torch.compiler.reset()
    low = PRECISIONS[precision][1]
    memo = {}
    for t in tensors:  # no full-precision copy first: each tensor is cast (or shared, in fp32) as it is copied
        value = t.detach().to(low) if low is not None and t.is_floating_point() else t.detach()
        memo[id(t)] = nn.Parameter(value, requires_grad=False) if isinstance(t, nn.Parameter) else value
    module = copy.deepcopy(encoder.backbone, memo).eval()
    compiled = _Frozen(torch.compile(module, dynamic=True))
    _COMPILED[encoder] = (key, compiled)
    return compiled


def compile_for_training(encoder, mode: str = "default", backend: str = "inductor") -> None:
    """Run the backbone through ``torch.compile`` in training mode (forward and backward: fused
    element-wise work, fewer kernel launches); evaluation (``eval()`` mode, :meth:`encode`) stays
    eager, or takes :meth:`compiled_backbone` with ``evaluator.compile``. The compiled module wraps
    this backbone, weights and all, so optimizers, DDP's gradient hooks and checkpoints see the same
    parameters. It compiles once, at the first training step, for any batch shape (batches are padded
    to their longest text, so their widths vary)."""
    mode = training_compile_mode(mode)
    _TRAINING_COMPILED[encoder] = torch.compile(encoder.backbone, mode=None if mode == "default" else mode, backend=backend, dynamic=True)


def cast_backbone(backbone: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The backbone's parameters and buffers with the floating ones cast to ``dtype`` (integer
    buffers such as position ids as they are): new tensors for one encode call, the module's own
    weights untouched (training goes on in full precision)."""
    named = dict(backbone.named_parameters())
    named.update(backbone.named_buffers())
    return {name: t.detach().to(dtype) if t.is_floating_point() else t for name, t in named.items()}


def training_backbone(encoder) -> nn.Module | None:
    """The backbone compiled for training steps (:func:`compile_for_training`), or None."""
    return _TRAINING_COMPILED.get(encoder)
