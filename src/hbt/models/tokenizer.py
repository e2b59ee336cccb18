"""Texts to model inputs: the prefixes, language codes, truncation and padding of one encoder, and the
longest-first token batches that keep padding low when encoding.

Picklable (DataLoader workers tokenize with it). Its fingerprint keys the token caches."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from hbt.models.languages import LanguageCodes

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
