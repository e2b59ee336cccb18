"""Reading and writing sentence-transformers directories, so hbt embeds exactly as the model's authors do.

A sentence-transformers model is a chain of modules listed in ``modules.json``: Transformer -> Pooling
-> (Dense ...) -> (Normalize). LaBSE, for example, is CLS pooling -> Dense(768, 768, tanh) -> Normalize,
and its raw CLS state is a different embedding. hbt reads that chain instead of guessing from the
backbone's config, and writes the same chain on export, in the module format that both older and
current sentence-transformers releases load.

Both config formats are read: the current one (``"pooling_mode": "cls"``) and the legacy booleans
(``"pooling_mode_cls_token": true``) that hub models such as ``sentence-transformers/LaBSE`` carry.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hbt.errors import ConfigError

KEY = "model.name_or_path"
# hbt's pooling names -> sentence-transformers' (current names; legacy booleans are mapped below).
POOLINGS = {"mean": "mean", "cls": "cls", "max": "max", "lasttoken": "lasttoken"}
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}


@dataclass
class DenseSpec:
    in_features: int
    out_features: int
    bias: bool
    activation: str  # import path of a torch.nn activation, as sentence-transformers writes it
    state: dict[str, torch.Tensor] | None = None


@dataclass
class SentenceTransformerSpec:
    """What a sentence-transformers directory prescribes beyond the backbone."""

    transformer_path: str = ""
    pooling: str | None = None
    dense: list[DenseSpec] = field(default_factory=list)
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=dict)


def _file(name_or_path: str, filename: str) -> Path | None:
    """A file of a local directory or a hub repository (None when it does not exist)."""
    local = Path(name_or_path) / filename
    if Path(name_or_path).is_dir():
        return local if local.is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    return Path(found) if found else None


def _json(name_or_path: str, filename: str) -> dict | list | None:
    path = _file(name_or_path, filename)
    return json.loads(path.read_text(encoding="utf-8")) if path else None


def read_spec(name_or_path: str) -> SentenceTransformerSpec | None:
    """The module chain of a sentence-transformers directory, or None for a plain Hugging Face model."""
    modules = _json(name_or_path, "modules.json")
    if modules is None:
        return None
    spec = SentenceTransformerSpec()
    settings = _json(name_or_path, "config_sentence_transformers.json") or {}
    prompts = settings.get("prompts") or {}
    spec.prompts = {
        k: v
        for k, v in {"query": prompts.get("query"), "passage": prompts.get("passage", prompts.get("document"))}.items()
        if v is not None
    }
    for module in sorted(modules, key=lambda m: m["idx"]):
        kind = module["type"].rsplit(".", 1)[-1]
        path = module.get("path", "")
        if kind == "Transformer":
            spec.transformer_path = path
        elif kind == "Pooling":
            spec.pooling = _pooling(name_or_path, path)
        elif kind == "Dense":
            spec.dense.append(_dense(name_or_path, path))
        elif kind == "Normalize":
            spec.normalize = True
        else:
            raise ConfigError(
                KEY,
                f"{name_or_path}: sentence-transformers module {module['type']} is not supported (hbt reads Transformer, Pooling, Dense, Normalize)",
            )
    return spec


def _pooling(name_or_path: str, path: str) -> str:
    config = _json(name_or_path, f"{path}/config.json") or {}
    if "pooling_mode" in config:
        modes = config["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:
        modes = [mode for key, mode in _LEGACY_POOLING.items() if config.get(key)]
    if len(modes) != 1 or modes[0] not in POOLINGS.values():
        raise ConfigError(KEY, f"{name_or_path}: pooling {modes} is not supported; hbt supports one of {', '.join(POOLINGS)}")
    if config.get("include_prompt") is False:
        raise ConfigError(KEY, f"{name_or_path}: pooling with include_prompt=false (prompt tokens left out of the pool) is not supported")
    return modes[0]


def _dense(name_or_path: str, path: str) -> DenseSpec:
    config = _json(name_or_path, f"{path}/config.json") or {}
    if config.get("use_residual"):
        raise ConfigError(KEY, f"{name_or_path}: residual Dense modules are not supported")
    state = None
    weights = _file(name_or_path, f"{path}/model.safetensors")
    if weights is not None:
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        weights = _file(name_or_path, f"{path}/pytorch_model.bin")
        if weights is None:
            raise ConfigError(KEY, f"{name_or_path}: {path} has no weights (model.safetensors or pytorch_model.bin)")
        state = torch.load(weights, map_location="cpu", weights_only=True)
    return DenseSpec(
        in_features=int(config["in_features"]),
        out_features=int(config["out_features"]),
        bias=bool(config.get("bias", True)),
        activation=config.get("activation_function") or "torch.nn.modules.linear.Identity",
        state=state,
    )


class DenseHead(nn.Module):
    """sentence-transformers' Dense module: ``activation(linear(x))``, with the same parameter names."""

    def __init__(self, spec: DenseSpec):
        super().__init__()
        self.spec = DenseSpec(spec.in_features, spec.out_features, spec.bias, spec.activation)
        self.linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
        self.activation = _activation(spec.activation)
        if spec.state is not None:
            self.load_state_dict({k: v for k, v in spec.state.items() if k.startswith("linear.")})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))


def _activation(path: str) -> nn.Module:
    module, _, name = path.rpartition(".")
    if not module.startswith("torch.nn"):
        raise ConfigError(KEY, f"Dense activation {path!r} is not a torch.nn module")
    try:
        return getattr(importlib.import_module(module), name)()
    except (ImportError, AttributeError):
        raise ConfigError(KEY, f"Dense activation {path!r} does not exist in this torch") from None


def write_modules(
    directory: Path, dim: int, pooling: str, heads: list[DenseHead], query_prefix: str, passage_prefix: str, max_length: int
) -> None:
    """The sentence-transformers files of an exported model: Transformer (the directory itself),
    Pooling, each Dense head with its weights, Normalize; prompts named ``query`` and ``passage``
    (and ``document``, the name current releases use for passages)."""
    from safetensors.torch import save_file

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    legacy = {key: pooling == mode for key, mode in _LEGACY_POOLING.items()}
    write_json(directory / "1_Pooling" / "config.json", {"word_embedding_dimension": dim, **legacy})
    for head in heads:
        idx = len(modules)
        path = f"{idx}_Dense"
        modules.append({"idx": idx, "name": str(idx), "path": path, "type": "sentence_transformers.models.Dense"})
        spec = head.spec
        write_json(
            directory / path / "config.json",
            {"in_features": spec.in_features, "out_features": spec.out_features, "bias": spec.bias, "activation_function": spec.activation},
        )
        save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, str(directory / path / "model.safetensors"))
    idx = len(modules)
    modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / f"{idx}_Normalize").mkdir(parents=True, exist_ok=True)
    write_json(directory / "modules.json", modules)
    write_json(directory / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    prompts = {"query": query_prefix, "passage": passage_prefix, "document": passage_prefix}
    write_json(
        directory / "config_sentence_transformers.json", {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    )


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    tmp.replace(path)
