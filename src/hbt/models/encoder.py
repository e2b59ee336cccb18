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
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from hbt.errors import ConfigError
from hbt.models import precision as prec
from hbt.models.backbone import add_lora, build_tiny, enable_gradient_checkpointing, load_backbone, load_error
from hbt.models.languages import LanguageCodes, tokenizer_language_codes
from hbt.models.st_modules import POOLINGS, DenseHead, read_spec, write_json, write_modules
from hbt.models.tokenizer import Languages, TextTokenizer, token_batches
from hbt.progress import progress as show_progress

EXPORT_FILE = "hbt_encoder.json"


def length_cuts(widths: Sequence[int], groups: int) -> list[int]:
    """Sizes of at most ``groups`` consecutive groups of rows sorted longest first (``widths``) that leave
    the fewest padded tokens, each group padded to its first row: sum over groups of size x first width,
    minimised exactly by dynamic programming over the cut points (O(groups x rows^2), vectorised; a
    batch of 100 in about a millisecond). Of the cuts that reach that minimum, the fewest groups (a cut
    that saves no padding costs an encoder pass for nothing). Equal-sized groups leave about 2.6 times
    the padding at batch 100 (benchmarks/padding_share.py)."""
    n = len(widths)
    groups = max(1, min(groups, n))
    width = np.asarray(widths, dtype=np.float64)
    start, end = np.arange(n)[:, None], np.arange(n + 1)[None, :]
    cost = np.where(end > start, (end - start) * width[:, None], np.inf)  # [first row, end): its padded tokens
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    back, reached = [], []
    for _ in range(groups):
        total = best[:n, None] + cost
        back.append(total.argmin(0))
        best = total[back[-1], np.arange(n + 1)]
        reached.append(best[n])
    used = next(k for k, padded in enumerate(reached, 1) if padded == reached[-1])
    sizes, end_row = [], n
    for choice in reversed(back[:used]):
        first = int(choice[end_row])
        sizes.append(end_row - first)
        end_row = first
    return sizes[::-1]


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
                raise load_error(name_or_path, err) from None
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
        padded only to its own longest row and cut where the fewest padded tokens remain
        (:func:`length_cuts`): the same embeddings (padding is masked) for fewer padded tokens, with
        gradients through every group as through one batch."""
        if self.length_groups > 1 and self.training and len(inputs["attention_mask"]) > 1:
            lengths = inputs["attention_mask"].sum(1)
            order = torch.argsort(lengths, descending=True)
            widths = lengths[order].tolist()
            parts, start = [], 0
            for size in length_cuts(widths, self.length_groups):
                rows = order[start : start + size]
                parts.append(self._embed({k: v[rows, : widths[start]] for k, v in inputs.items()}))
                start += size
            return torch.cat(parts)[torch.argsort(order)]
        return self._embed(inputs)

    def _embed(self, inputs: dict[str, torch.Tensor], weights: dict[str, torch.Tensor] | None = None, backbone=None) -> torch.Tensor:
        """``weights``: the backbone's parameters and buffers to run it with instead of its own (the
        bf16 copies :meth:`encode` makes); ``backbone``: a module to run instead (the compiled copy).
        Either one's output is pooled in fp32."""
        mask = inputs["attention_mask"]
        kwargs = {"input_ids": inputs["input_ids"], "attention_mask": mask}
        if backbone is not None:
            hidden = backbone(**kwargs).last_hidden_state.float()
        elif weights is None:
            compiled = prec.training_backbone(self) if self.training else None
            hidden = (
                self.backbone(**kwargs) if compiled is None else prec.compiled_call(compiled, kwargs, "set compile=false")
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
        little is padding. ``precision`` (:data:`hbt.models.precision.PRECISIONS`: fp32; bf16, the backbone's weights cast
        for the call; bf16-mixed and fp16 under autocast; :func:`hbt.models.precision.encode_precision` resolves
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
        mode, low = prec.PRECISIONS[precision]
        compiled = self.compiled_backbone(precision) if compile else None
        weights = prec.cast_backbone(self.backbone, low) if mode == "cast" and compiled is None else None
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

    def compiled_backbone(self, precision: str):
        """A ``torch.compile``-d, frozen copy of the backbone for encoding in ``precision`` (fp32 or bf16),
        made once and reused while the weights are the same (:func:`hbt.models.precision.compiled_backbone`)."""
        return prec.compiled_backbone(self, precision)

    def compile_for_training(self, mode: str = "default", backend: str = "inductor") -> None:
        """Training steps run the backbone through ``torch.compile`` (``compile`` in conf/train.yaml);
        evaluation stays eager (:func:`hbt.models.precision.compile_for_training`)."""
        prec.compile_for_training(self, mode, backend)

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
