"""The network behind an encoder: loading a hub name or local directory (the encoder half of seq2seq
models), its size from the config alone, the tiny offline model, LoRA adapters and activation
checkpointing."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel, ByT5Tokenizer

from hbt.errors import ConfigError, first_line
from hbt.models.st_modules import read_spec


def build_tiny(hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4, intermediate_size: int = 512, max_positions: int = 256):
    """A small random-init BERT over UTF-8 bytes: every script is covered and nothing is downloaded."""
    tokenizer = ByT5Tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertModel(config, add_pooling_layer=False), tokenizer


def load_error(name_or_path: str, err: Exception) -> ConfigError:
    return ConfigError("model.name_or_path", f"cannot load {name_or_path!r}: {first_line(err)}")


def _encoder_class(config):
    """The class whose weights are the encoder: T5-family encoders directly, else AutoModel."""
    if config.model_type in ("t5", "mt5", "umt5"):
        from transformers import MT5EncoderModel, T5EncoderModel, UMT5EncoderModel

        return {"t5": T5EncoderModel, "mt5": MT5EncoderModel, "umt5": UMT5EncoderModel}[config.model_type]
    return None


def _encoder_half(model: nn.Module) -> nn.Module:
    return model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model


def load_backbone(name_or_path: str, trust_remote_code: bool = False, subfolder: str = "") -> tuple[nn.Module, nn.Module | None]:
    """The encoder network of a hub name or local directory, and the whole seq2seq model it belongs to
    (None for encoders): mBART-style models have no encoder-only class, so the export writes the whole
    model (with the trained encoder inside) to stay loadable by its own architecture."""
    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
        cls = _encoder_class(config)
        if cls is not None:  # a full T5 checkpoint: its decoder weights are skipped on purpose, so no load report
            from transformers.utils import logging as hf_logging

            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                return cls.from_pretrained(name_or_path, **kwargs), None
            finally:
                hf_logging.set_verbosity(level)
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as err:
        raise load_error(name_or_path, err) from None
    encoder = _encoder_half(model)
    return encoder, (model if encoder is not model else None)


def count_parameters(name_or_path: str, trust_remote_code: bool = False) -> int:
    """Parameters of the encoder a directory or hub name describes, from its config alone: the
    network is built on the meta device, so nothing is allocated or downloaded beyond config.json."""
    spec = read_spec(str(name_or_path))
    kwargs = {"subfolder": spec.transformer_path} if spec and spec.transformer_path else {}
    try:
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as err:
        raise load_error(str(name_or_path), err) from None
    with torch.device("meta"):
        cls = _encoder_class(config)
        model = cls(config) if cls is not None else AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in _encoder_half(model).parameters())


def add_lora(backbone: nn.Module, options: Mapping) -> nn.Module:
    """``model.lora``: LoRA adapters (peft) on the backbone, everything else frozen. Keys: ``r``,
    ``alpha``, ``dropout``, ``target_modules`` (null: peft's defaults for the architecture: the
    attention query/value projections)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("model.lora", "needs the peft package: pip install peft") from None
    unknown = sorted(set(options) - {"r", "alpha", "dropout", "target_modules"})
    if unknown:
        raise ConfigError(f"model.lora.{unknown[0]}", "unknown key; expected r, alpha, dropout, target_modules")
    r = int(options.get("r", 8))
    if r < 1:
        raise ConfigError("model.lora.r", f"must be >= 1, got {r}")
    config = LoraConfig(
        r=r,
        lora_alpha=float(options.get("alpha", 2 * r)),
        lora_dropout=float(options.get("dropout", 0.0)),
        target_modules=options.get("target_modules") or attention_query_value(backbone),
    )
    try:
        return get_peft_model(backbone, config)
    except ValueError as err:  # an architecture peft has no defaults for, or modules that do not exist
        raise ConfigError("model.lora.target_modules", str(err).splitlines()[0]) from None


def attention_query_value(backbone: nn.Module) -> list[str] | None:
    """The attention query and value projections, by the names the families use (BERT/XLM-R
    ``query``/``value``, T5 ``q``/``v``, BART ``q_proj``/``v_proj``); None: let peft decide."""
    leaves = {name.rsplit(".", 1)[-1] for name, module in backbone.named_modules() if isinstance(module, nn.Linear)}
    for pair in (["query", "value"], ["q_proj", "v_proj"], ["q", "v"]):
        if set(pair) <= leaves:
            return pair
    return None


def enable_gradient_checkpointing(backbone: nn.Module) -> None:
    """Non-reentrant activation checkpointing (what DDP, FSDP and GradCache's replay need); the method's
    name changed in transformers 5."""
    if hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
