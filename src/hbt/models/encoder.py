"""One encoder for queries and passages (shared weights), pooled and L2-normalized.

Works for BERT-style encoders (mBERT, XLM-R, LaBSE, multilingual-E5), the encoder half of seq2seq
models (mT5 via ``MT5EncoderModel``, mBART-50 via ``get_encoder()``), sentence-transformers directories
(their Pooling, Dense and Normalize modules and prompts are honoured), and a tiny random-init BERT with
a byte-level tokenizer that needs no download (the offline default).

Each model is used the way it was trained: prefixes only where configured (mE5's ``query: `` /
``passage: ``), mBART-50's tokenizer gets each text's own language code, and a backbone's pooler that
the embedding does not use is set aside (kept for export, but not a parameter), so DDP never sees
parameters without gradients.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, ByT5Tokenizer, PreTrainedTokenizerBase

from hbt.errors import ConfigError
from hbt.models.languages import LanguageCodes, tokenizer_language_codes
from hbt.models.st_modules import POOLINGS, DenseHead, read_spec, write_json, write_modules
from hbt.progress import progress as show_progress

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

log = logging.getLogger(__name__)

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


EXPORT_FILE = "hbt_encoder.json"
Languages = str | Sequence[str] | None


def token_batches(lengths: Sequence[int], max_rows: int, max_tokens: int | None = None) -> list[list[int]]:
    """Positions grouped into batches, longest first: each batch holds at most ``max_rows`` texts and,
    padded to its longest, at most ``max_tokens`` tokens (a text longer than the budget goes alone).
    Sorting by token count, not characters, is what keeps padding low across scripts: a Chinese
    sentence has few characters and many tokens, a German one the opposite."""
    if max_rows < 1 or (max_tokens is not None and max_tokens < 1):
        raise ValueError(f"max_rows and max_tokens must be >= 1, got {max_rows} and {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        rows = max_rows if max_tokens is None else max(1, min(max_rows, max_tokens // max(1, lengths[order[start]])))
        batches.append(order[start : start + rows])
        start += rows
    return batches


@dataclass
class TextTokenizer:
    """Turns raw texts into model inputs: prefix, language code, truncate, pad. Picklable, for
    DataLoader workers. ``languages`` is set for tokenizers that tag each text with its language."""

    tokenizer: PreTrainedTokenizerBase
    query_prefix: str
    passage_prefix: str
    max_query_length: int
    max_passage_length: int
    languages: LanguageCodes | None = None

    def __call__(self, texts: list[str], kind: str, lang: Languages = None) -> dict[str, torch.Tensor]:
        return self.pad(self.encode(texts, kind, lang))

    def encode(self, texts: list[str], kind: str, lang: Languages = None) -> list[list[int]]:
        """Token ids of prefixed, truncated texts, unpadded (what the token cache stores). ``lang`` is one
        language for all texts or one per text; only language-coded tokenizers need it."""
        prefix, max_length = (
            (self.query_prefix, self.max_query_length) if kind == "query" else (self.passage_prefix, self.max_passage_length)
        )
        if not texts:
            return []
        if self.languages is None:
            return self._tokenize([prefix + text for text in texts], max_length)
        per_text = [lang] * len(texts) if lang is None or isinstance(lang, str) else list(lang)
        out: list[list[int]] = [[] for _ in texts]
        for code in sorted({self.languages(one) for one in per_text}):
            rows = [i for i, one in enumerate(per_text) if self.languages(one) == code]
            self.tokenizer.src_lang = code  # the tokenizer's own way to add the code (prefix for mBART-50)
            for i, ids in zip(rows, self._tokenize([prefix + texts[i] for i in rows], max_length)):
                out[i] = ids
        return out

    def _tokenize(self, texts: list[str], max_length: int) -> list[list[int]]:
        return self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    def fingerprint(self) -> str:
        """A digest of everything that decides the token ids: the tokenizer's vocabulary and rules, its
        special and added tokens, the prefixes, lengths and language codes. Milliseconds, where hashing
        the object (``datasets``' Hasher) pickles a 250k-piece vocabulary piece by piece (~2 s a call)."""
        tok = self.tokenizer
        # A language-coded tokenizer's rules hold the code it last tagged with (mBART-50's post-processor);
        # :meth:`encode` sets the code before every call, so the digest is taken at one fixed code.
        current = getattr(tok, "src_lang", None)
        fixed = self.languages.available[0] if self.languages is not None and current is not None else current
        if fixed != current:
            tok.src_lang = fixed
        try:
            return self._digest()
        finally:
            if fixed != current:
                tok.src_lang = current

    def _digest(self) -> str:
        import hashlib

        tok = self.tokenizer
        digest = hashlib.blake2b(digest_size=16)
        if getattr(tok, "is_fast", False):
            # Without the truncation and padding of the last call, which transformers sets on the backend
            # at every call (hbt's own truncation is in the lengths below).
            backend = tok.backend_tokenizer
            truncation, padding = backend.truncation, backend.padding
            backend.no_truncation()
            backend.no_padding()
            try:
                rules = backend.to_str().encode()
            finally:
                if truncation:
                    backend.enable_truncation(**truncation)
                if padding:
                    backend.enable_padding(**padding)
        elif getattr(tok, "sp_model", None) is not None:
            rules = tok.sp_model.serialized_model_proto()
        else:
            rules = json.dumps(tok.get_vocab(), sort_keys=True).encode()
        digest.update(rules)
        languages = (self.languages.available, sorted(self.languages.overrides.items())) if self.languages else None
        digest.update(
            repr(
                (
                    type(tok).__name__,
                    sorted(tok.get_added_vocab().items()),
                    sorted(map(str, tok.all_special_tokens)),
                    tok.truncation_side,
                    self.query_prefix,
                    self.passage_prefix,
                    self.max_query_length,
                    self.max_passage_length,
                    languages,
                )
            ).encode()
        )
        return digest.hexdigest()

    def check_languages(self, languages) -> None:
        """A language the tokenizer has no code for stops here, before any work, with the key to set."""
        if self.languages is not None:
            self.languages.check(languages)

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Rows of token ids (lists or the token cache's int32 arrays), right-padded to the longest. One
        array operation for the whole batch, not one per row: on a GPU, a small model's encoding is bound
        by host work like this (docs/benchmarks.md, "On a GPU")."""
        lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        width = int(lengths.max(initial=0))
        input_ids = np.full((len(ids), width), self.tokenizer.pad_token_id, dtype=np.int64)
        attention_mask = np.arange(width) < lengths[:, None]
        if width:  # the mask's True cells, row-major, are the rows' tokens in order
            input_ids[attention_mask] = (
                np.concatenate(ids)
                if isinstance(ids[0], np.ndarray)
                else np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
            )
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask.astype(np.int64))}


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


class _Frozen:
    """Calls a compiled module with inductor's freezing on (it applies when the module compiles, at its
    first call on each new shape); :func:`_compiled_call` does the rest."""

    def __init__(self, module):
        self.module = module

    def __call__(self, **kwargs):
        import torch._inductor.config

        with torch._inductor.config.patch(freezing=True):
            return _compiled_call(self.module, kwargs, "encode without compile")


def _compiled_call(module, kwargs: dict, instead: str):
    """A compiled module's output, a failure to compile turned into one line ending in ``instead`` (what to
    change). Without duck shaping: a first batch whose row count equals its width (64 texts of 64 tokens,
    under a 4096-token budget) would otherwise be compiled for square batches only, and the next batch
    would compile again. The inputs are made contiguous: GradCache's chunks are views cut to their own
    longest row, whose strides would otherwise compile the backbone a second time."""
    import torch._dynamo.exc
    import torch.fx.experimental._config

    try:
        with torch.fx.experimental._config.patch(use_duck_shape=False):
            return module(**{name: value.contiguous() for name, value in kwargs.items()})
    except (torch._dynamo.exc.BackendCompilerFailed, torch._dynamo.exc.Unsupported) as err:
        raise ConfigError("compile", f"torch.compile could not compile this encoder ({_first_line(err)}); {instead}") from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _load_error(name_or_path: str, err: Exception) -> ConfigError:
    return ConfigError("model.name_or_path", f"cannot load {name_or_path!r}: {_first_line(err)}")


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
        raise _load_error(name_or_path, err) from None
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
        raise _load_error(str(name_or_path), err) from None
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


class Encoder(nn.Module):
    """``pooling``, ``query_prefix`` and ``passage_prefix`` left null take the sentence-transformers
    directory's own settings where there is one, else mean pooling and no prefix.

    Poolings: ``mean`` (average of the token states under the attention mask), ``cls`` (the first
    token's state), ``max`` (element-wise maximum over tokens), ``lasttoken`` (the last non-padding
    token's state). Any Dense heads of a sentence-transformers directory follow the pooling; the
    result is always L2-normalized. ``language_codes`` maps hbt language names to a language-coded
    tokenizer's codes where the automatic match (ISO prefix) is missing or wrong, e.g. ``{el: ...}``.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        pooling: str | None = None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        max_query_length: int = 64,
        max_passage_length: int = 128,
        language_codes: Mapping[str, str] | None = None,
        tiny: dict | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        lora: Mapping | None = None,
        length_groups: int = 1,
    ):
        super().__init__()
        if length_groups < 1:
            raise ConfigError("model.length_groups", f"must be >= 1, got {length_groups}")
        self.length_groups = length_groups
        if pooling is not None and pooling not in POOLINGS:
            raise ConfigError(
                "model.pooling", f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)} (or null: the model directory's own)"
            )
        spec = None
        if name_or_path is None:
            if tiny is None:
                raise ConfigError("model.name_or_path", "give a hub name or local directory (or model.tiny for the offline default)")
            self.backbone, tokenizer = build_tiny(**tiny)
            whole = None
        else:
            name_or_path = str(name_or_path)
            spec = read_spec(name_or_path)
            subfolder = spec.transformer_path if spec else ""
            self.backbone, whole = load_backbone(name_or_path, trust_remote_code, subfolder)
            try:
                tokenizer = AutoTokenizer.from_pretrained(
                    name_or_path, trust_remote_code=trust_remote_code, **({"subfolder": subfolder} if subfolder else {})
                )
            except (OSError, ValueError) as err:
                raise _load_error(name_or_path, err) from None
        prompts = spec.prompts if spec else {}
        self.pooling = pooling or (spec.pooling if spec else None) or "mean"
        self.heads = nn.ModuleList(DenseHead(dense) for dense in (spec.dense if spec else []))
        # Not submodules: the unused pooler and a seq2seq model's decoder stay out of the parameters (and
        # of DDP's and the optimizer's view); they are kept only to write a complete export.
        self._set_aside = self._set_aside_pooler()
        self._whole = [whole] if whole is not None else []
        if gradient_checkpointing:
            enable_gradient_checkpointing(self.backbone)
        self.lora = dict(lora) if lora else None
        if self.lora:
            self.backbone = add_lora(self.backbone, self.lora)
            for head in self.heads:  # only the adapters train
                head.requires_grad_(False)
        codes = tokenizer_language_codes(tokenizer)
        if codes is None and language_codes:
            raise ConfigError("model.language_codes", "this tokenizer does not tag texts with a language; leave model.language_codes empty")
        self.language_overrides = dict(language_codes or {})
        self.text_tokenizer = TextTokenizer(
            tokenizer,
            query_prefix if query_prefix is not None else prompts.get("query", ""),
            passage_prefix if passage_prefix is not None else prompts.get("passage", ""),
            max_query_length,
            max_passage_length,
            LanguageCodes(codes, self.language_overrides) if codes is not None else None,
        )
        self.train()  # from_pretrained leaves the backbone in eval mode, which would silently drop dropout

    def _set_aside_pooler(self) -> list[nn.Module]:
        """BERT-family models load with a pooler (CLS -> Dense -> tanh) that hbt's pooling does not use;
        left in place it would get no gradient, which DDP rejects. It is removed from the network and
        put back only while exporting, so the exported weights are the loaded ones."""
        pooler = getattr(self.backbone, "pooler", None)
        if not isinstance(pooler, nn.Module):
            return []
        self.backbone.pooler = None
        return [pooler]

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.text_tokenizer.tokenizer

    @property
    def dim(self) -> int:
        if len(self.heads):
            return self.heads[-1].spec.out_features
        config = self.backbone.config
        return config.hidden_size if hasattr(config, "hidden_size") else config.d_model

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit-length embeddings of tokenized inputs, so inner product = cosine similarity. In training
        with ``length_groups`` > 1, the rows are sorted by length and encoded in that many groups, each
        padded only to its own longest row: the same embeddings (padding is masked) for fewer padded
        tokens, with gradients through every group as through one batch."""
        if self.length_groups > 1 and self.training and len(inputs["attention_mask"]) > 1:
            lengths = inputs["attention_mask"].sum(1)
            order = torch.argsort(lengths, descending=True)
            parts = []
            for rows in order.tensor_split(min(self.length_groups, len(order))):
                width = int(lengths[rows[0]])
                parts.append(self._embed({k: v[rows, :width] for k, v in inputs.items()}))
            return torch.cat(parts)[torch.argsort(order)]
        return self._embed(inputs)

    def _embed(
        self, inputs: dict[str, torch.Tensor], weights: dict[str, torch.Tensor] | None = None, backbone: _Frozen | None = None
    ) -> torch.Tensor:
        """``weights``: the backbone's parameters and buffers to run it with instead of its own (the
        bf16 copies :meth:`encode` makes); ``backbone``: a module to run instead (the compiled copy).
        Either one's output is pooled in fp32."""
        mask = inputs["attention_mask"]
        kwargs = {"input_ids": inputs["input_ids"], "attention_mask": mask}
        if backbone is not None:
            hidden = backbone(**kwargs).last_hidden_state.float()
        elif weights is None:
            compiled = _TRAINING_COMPILED.get(self) if self.training else None
            hidden = (
                self.backbone(**kwargs) if compiled is None else _compiled_call(compiled, kwargs, "set compile=false")
            ).last_hidden_state
        else:
            hidden = torch.func.functional_call(self.backbone, weights, (), kwargs).last_hidden_state.float()
        pooled = self.pool(hidden, mask)
        for head in self.heads:
            pooled = head(pooled)
        return F.normalize(pooled, dim=-1)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "lasttoken":  # right padding: the last attended position of each row
            last = (mask.sum(1) - 1).clamp(min=0)
            return hidden[torch.arange(len(hidden), device=hidden.device), last]
        if self.pooling == "max":
            return hidden.masked_fill(mask.unsqueeze(-1) == 0, -1e9).max(1).values
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str],
        kind: str,
        lang: Languages = None,
        batch_size: int = 128,
        progress: bool | str = False,
        precision: str = "fp32",
        max_tokens: int | None = None,
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
        ids: Sequence[np.ndarray] | None = None,
    ) -> torch.Tensor:
        """Embeddings of raw texts, in input order, as ``dtype``. The texts are tokenized first and
        batched longest first by token count (:func:`token_batches`): at most ``batch_size`` texts and,
        with ``max_tokens``, at most that many tokens once padded, so short texts go in large batches and
        little is padding. ``precision`` (:data:`PRECISIONS`: fp32; bf16, the backbone's weights cast
        for the call; bf16-mixed and fp16 under autocast; :func:`hbt.hardware.encode_precision` resolves
        auto). ``progress`` (auto, true, false: :mod:`hbt.progress`) shows texts encoded, rate and ETA.
        ``lang`` (one for all, or one per text) is needed by language-coded tokenizers (mBART-50).
        ``compile`` runs the backbone through ``torch.compile`` (:meth:`compiled_backbone`; fp32 or bf16).
        ``ids``: the texts' token ids as :meth:`tokenize_compact` gives them for this ``kind`` and
        ``lang``, when the caller kept them (the evaluator, across evaluations of the same texts)."""
        if ids is None:
            ids = self.tokenize_compact(texts, kind, lang)
        elif len(ids) != len(texts):
            raise ValueError(f"{len(ids)} rows of token ids for {len(texts)} texts")
        device = next(self.parameters()).device
        precision = self.runs_as(precision)
        mode, low = PRECISIONS[precision]
        compiled = self.compiled_backbone(precision) if compile else None
        weights = self.cast_backbone(low) if mode == "cast" and compiled is None else None
        autocast = mode == "autocast"
        was_training = self.training
        self.eval()
        out = None
        batches = token_batches([len(row) for row in ids], batch_size, max_tokens)
        for rows in show_progress(batches, len(texts), f"encode {kind}", progress, unit="texts", weight=len):
            batch = self.text_tokenizer.pad([ids[i] for i in rows])
            with torch.autocast(device.type, dtype=low) if autocast else contextlib.nullcontext():
                embeddings = self._embed({k: v.to(device) for k, v in batch.items()}, weights, compiled)
            embeddings = embeddings.to("cpu", dtype)
            if out is None:  # written in place: no list of batches and no second copy to concatenate
                out = torch.empty((len(texts), embeddings.shape[1]), dtype=dtype)
            out[torch.tensor(rows)] = embeddings
        self.train(was_training)
        return out if out is not None else torch.empty((0, 0), dtype=dtype)

    def compiled_backbone(self, precision: str) -> _Frozen:
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
        tensors = [*self.backbone.parameters(), *self.backbone.buffers()]
        # What the weights are, not only which tensors: the fused AdamW step (hbt's default optimizer)
        # updates them in place without bumping their version counters, so each tensor's float64 sum is
        # part of the key (one read of the weights per encode call, small next to encoding with them).
        with torch.no_grad():
            sums = torch.stack([t.sum(dtype=torch.float64) for t in tensors]).tolist() if tensors else []
        key = (precision, tuple((id(t), t._version, t.device) for t in tensors), tuple(sums))
        held = _COMPILED.get(self)
        if held is not None and held[0] == key:
            return held[1]
        log.info("compiling a %s copy of the backbone for encoding (first use, or its weights changed)", precision)
        _COMPILED.pop(self, None)
        torch.compiler.reset()
        low = PRECISIONS[precision][1]
        memo = {}
        for t in tensors:  # no full-precision copy first: each tensor is cast (or shared, in fp32) as it is copied
            value = t.detach().to(low) if low is not None and t.is_floating_point() else t.detach()
            memo[id(t)] = nn.Parameter(value, requires_grad=False) if isinstance(t, nn.Parameter) else value
        module = copy.deepcopy(self.backbone, memo).eval()
        compiled = _Frozen(torch.compile(module, dynamic=True))
        _COMPILED[self] = (key, compiled)
        return compiled

    def compile_for_training(self, mode: str = "default", backend: str = "inductor") -> None:
        """Run the backbone through ``torch.compile`` in training mode (forward and backward: fused
        element-wise work, fewer kernel launches); evaluation (``eval()`` mode, :meth:`encode`) stays
        eager, or takes :meth:`compiled_backbone` with ``evaluator.compile``. The compiled module wraps
        this backbone, weights and all, so optimizers, DDP's gradient hooks and checkpoints see the same
        parameters. It compiles once, at the first training step, for any batch shape (batches are padded
        to their longest text, so their widths vary)."""
        mode = training_compile_mode(mode)
        _TRAINING_COMPILED[self] = torch.compile(self.backbone, mode=None if mode == "default" else mode, backend=backend, dynamic=True)

    def cast_backbone(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The backbone's parameters and buffers with the floating ones cast to ``dtype`` (integer
        buffers such as position ids as they are): new tensors for one encode call, the module's own
        weights untouched (training goes on in full precision)."""
        named = dict(self.backbone.named_parameters())
        named.update(self.backbone.named_buffers())
        return {name: t.detach().to(dtype) if t.is_floating_point() else t for name, t in named.items()}

    def runs_as(self, precision: str) -> str:
        """The precision :meth:`encode` runs ``precision`` in here: bf16 casts the backbone's weights,
        which needs them whole, so an FSDP-sharded backbone runs bf16 as bf16-mixed (the evaluator logs
        which, and keys its embedding cache by it)."""
        return "bf16-mixed" if precision == "bf16" and self.is_sharded() else precision

    def is_sharded(self) -> bool:
        """Whether FSDP wraps parts of the encoder (their forward gathers the weights, so they cannot be
        cast ahead of it)."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        return any(isinstance(m, FullyShardedDataParallel) for m in self.modules())

    def tokenize_compact(self, texts: list[str], kind: str, lang: Languages = None, chunk: int = 4096) -> list[np.ndarray]:
        """Token ids of every text as int32 arrays, tokenized ``chunk`` texts at a time: a 200k-passage
        shard takes ~4 bytes a token instead of the ~36 of Python lists of ints."""
        per_text = None if lang is None or isinstance(lang, str) else list(lang)
        out: list[np.ndarray] = []
        for start in range(0, len(texts), chunk):
            part_lang = lang if per_text is None else per_text[start : start + chunk]
            out += [np.asarray(row, dtype=np.int32) for row in self.text_tokenizer.encode(texts[start : start + chunk], kind, part_lang)]
        return out

    # -- export -------------------------------------------------------------------------------------
    def settings(self) -> dict:
        tt = self.text_tokenizer
        return {
            "pooling": self.pooling,
            "query_prefix": tt.query_prefix,
            "passage_prefix": tt.passage_prefix,
            "max_query_length": tt.max_query_length,
            "max_passage_length": tt.max_passage_length,
            "language_codes": self.language_overrides,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """A Hugging Face directory that sentence-transformers also loads (same pooling, Dense heads,
        normalization and prefixes as hbt's embedding)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.lora:
            self.merge_lora()
        for pooler in self._set_aside:
            self.backbone.pooler = pooler
        try:
            # A seq2seq model is written whole: its encoder is this (trained) backbone, the same module.
            (self._whole[0] if self._whole else self.backbone).save_pretrained(directory)
        finally:
            if self._set_aside:
                self.backbone.pooler = None
        self.tokenizer.save_pretrained(directory)
        tt = self.text_tokenizer
        write_json(directory / EXPORT_FILE, self.settings())
        backbone_dim = self.backbone.config.hidden_size if hasattr(self.backbone.config, "hidden_size") else self.backbone.config.d_model
        write_modules(directory, backbone_dim, self.pooling, list(self.heads), tt.query_prefix, tt.passage_prefix, tt.max_passage_length)

    def merge_lora(self) -> None:
        """Fold the LoRA adapters into the weights they adapt (W + BA·alpha/r) and drop them: the
        encoder computes the same embeddings as a plain model, which is what is exported (and what
        sentence-transformers loads). Training cannot continue on adapters afterwards."""
        if not self.lora:
            return
        # peft injected the adapters into the backbone's own modules and merges them in place, so a
        # seq2seq model kept whole for export (its encoder is this backbone) is merged too.
        self.backbone = self.backbone.merge_and_unload()
        self.lora = None

    @classmethod
    def from_exported(cls, directory: str | Path) -> Encoder:
        """Reload a directory written by :meth:`save_pretrained`."""
        settings = json.loads((Path(directory) / EXPORT_FILE).read_text())
        return cls(name_or_path=str(directory), **settings)
