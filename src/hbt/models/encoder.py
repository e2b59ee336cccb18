"""One encoder for queries and passages (shared weights), pooled and L2-normalized.

Works for BERT-style encoders (mBERT, XLM-R, LaBSE, multilingual-E5), the encoder half of seq2seq
models (mT5 via ``MT5EncoderModel``, mBART-50 via ``get_encoder()``), and a tiny random-init BERT with a
byte-level tokenizer that needs no download (the offline default).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, ByT5Tokenizer, PreTrainedTokenizerBase

from hbt.errors import ConfigError

POOLINGS = ("mean", "cls")
EXPORT_FILE = "hbt_encoder.json"


@dataclass
class TextTokenizer:
    """Turns raw texts into model inputs: prefix, truncate, pad. Picklable, for DataLoader workers."""

    tokenizer: PreTrainedTokenizerBase
    query_prefix: str
    passage_prefix: str
    max_query_length: int
    max_passage_length: int

    def __call__(self, texts: list[str], kind: str) -> dict[str, torch.Tensor]:
        return self.pad(self.encode(texts, kind))

    def encode(self, texts: list[str], kind: str) -> list[list[int]]:
        """Token ids of prefixed, truncated texts, unpadded (what the token cache stores)."""
        prefix, max_length = (
            (self.query_prefix, self.max_query_length) if kind == "query" else (self.passage_prefix, self.max_passage_length)
        )
        if not texts:
            return []
        return self.tokenizer([prefix + text for text in texts], truncation=True, max_length=max_length)["input_ids"]

    def pad(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        lengths = [len(row) for row in ids]
        width = max(lengths, default=0)
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


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


def load_backbone(name_or_path: str, trust_remote_code: bool = False) -> nn.Module:
    """The encoder network of a hub name or local directory; seq2seq models contribute their encoder."""
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if config.model_type in ("t5", "mt5", "umt5"):
            from transformers import MT5EncoderModel, T5EncoderModel, UMT5EncoderModel

            cls = {"t5": T5EncoderModel, "mt5": MT5EncoderModel, "umt5": UMT5EncoderModel}[config.model_type]
            return cls.from_pretrained(name_or_path)
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError("model.name_or_path", f"cannot load {name_or_path!r}: {first}") from None
    if getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()
    return model


class Encoder(nn.Module):
    def __init__(
        self,
        name_or_path: str | None = None,
        pooling: str = "mean",
        query_prefix: str = "query: ",
        passage_prefix: str = "passage: ",
        max_query_length: int = 64,
        max_passage_length: int = 128,
        tiny: dict | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError("model.pooling", f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        if name_or_path is None:
            if tiny is None:
                raise ConfigError("model.name_or_path", "give a hub name or local directory (or model.tiny for the offline default)")
            self.backbone, tokenizer = build_tiny(**tiny)
        else:
            self.backbone = load_backbone(str(name_or_path), trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
        if gradient_checkpointing:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.pooling = pooling
        self.text_tokenizer = TextTokenizer(tokenizer, query_prefix, passage_prefix, max_query_length, max_passage_length)
        self.train()  # from_pretrained leaves the backbone in eval mode, which would silently drop dropout

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.text_tokenizer.tokenizer

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit-length embeddings of tokenized inputs, so inner product = cosine similarity."""
        mask = inputs["attention_mask"]
        hidden = self.backbone(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        return F.normalize(self.pool(hidden, mask), dim=-1)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    @torch.inference_mode()
    def encode(self, texts: list[str], kind: str, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        """Embeddings of raw texts, in input order; batches are length-sorted to waste little padding."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        chunks = []
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"encode {kind}", leave=False)
        for start in starts:
            batch = self.text_tokenizer([texts[i] for i in order[start : start + batch_size]], kind)
            chunks.append(self({k: v.to(device) for k, v in batch.items()}).float().cpu())
        self.train(was_training)
        out = torch.empty((len(texts), chunks[0].shape[1]) if chunks else (0, 0))
        if chunks:
            out[torch.tensor(order)] = torch.cat(chunks)
        return out

    # -- export -------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """A Hugging Face directory that sentence-transformers also loads (same pooling and prefixes)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        tt = self.text_tokenizer
        settings = {
            "pooling": self.pooling,
            "query_prefix": tt.query_prefix,
            "passage_prefix": tt.passage_prefix,
            "max_query_length": tt.max_query_length,
            "max_passage_length": tt.max_passage_length,
        }
        _write_json(directory / EXPORT_FILE, settings)
        _write_json(
            directory / "modules.json",
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ],
        )
        _write_json(directory / "sentence_bert_config.json", {"max_seq_length": tt.max_passage_length, "do_lower_case": False})
        _write_json(
            directory / "config_sentence_transformers.json",
            {"prompts": {"query": tt.query_prefix, "passage": tt.passage_prefix}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
        )
        dim = self.backbone.config.hidden_size if hasattr(self.backbone.config, "hidden_size") else self.backbone.config.d_model
        _write_json(
            directory / "1_Pooling" / "config.json",
            {"word_embedding_dimension": dim, "pooling_mode_cls_token": self.pooling == "cls", "pooling_mode_mean_tokens": self.pooling == "mean"},
        )
        (directory / "2_Normalize").mkdir(exist_ok=True)

    @classmethod
    def from_exported(cls, directory: str | Path) -> "Encoder":
        """Reload a directory written by :meth:`save_pretrained`."""
        settings = json.loads((Path(directory) / EXPORT_FILE).read_text())
        return cls(name_or_path=str(directory), **settings)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    tmp.replace(path)
