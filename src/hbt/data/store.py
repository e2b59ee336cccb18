"""Arrow-backed storage of parallel items, memory-mapped rather than held in Python lists.

One row per item: ``id``, then per language ``q.<lang>``, ``p.<lang>`` (null where the language is
missing) and ``n.<lang>`` (hard-negative passages, possibly empty). Loaders write the table once
through ``datasets`` (cached on disk and memory-mapped); the sampler only needs the language mask.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import datasets
import numpy as np

from hbt.data.schema import ParallelItem


def _features(languages: Sequence[str]) -> datasets.Features:
    spec = {"id": datasets.Value("string")}
    for lang in languages:
        spec[f"q.{lang}"] = datasets.Value("string")
        spec[f"p.{lang}"] = datasets.Value("string")
        spec[f"n.{lang}"] = datasets.Sequence(datasets.Value("string"))
    return datasets.Features(spec)


def _token_features(languages: Sequence[str]) -> datasets.Features:
    ids = datasets.Sequence(datasets.Value("int32"))
    spec = {"id": datasets.Value("string")}
    for lang in languages:
        spec.update({f"q.{lang}": ids, f"p.{lang}": ids, f"n.{lang}": datasets.Sequence(ids)})
    return datasets.Features(spec)


def item_to_row(item: ParallelItem, languages: Sequence[str]) -> dict:
    row = {"id": item.id}
    for lang in languages:
        row[f"q.{lang}"] = item.questions.get(lang)
        row[f"p.{lang}"] = item.passages.get(lang)
        row[f"n.{lang}"] = list(item.hard_negatives.get(lang, ()))
    return row


class ItemStore:
    """Random access to parallel items by index, from an Arrow table."""

    def __init__(self, table: datasets.Dataset, languages: Sequence[str]):
        self.table = table
        self.languages = sorted(languages)

    @classmethod
    def from_items(cls, items: Iterable[ParallelItem], languages: Sequence[str]) -> "ItemStore":
        rows = [item_to_row(item, languages) for item in items]
        return cls(datasets.Dataset.from_list(rows, features=_features(languages)), languages)

    @classmethod
    def from_generator(cls, generator, gen_kwargs: dict, languages: Sequence[str]) -> "ItemStore":
        """Stream rows into an on-disk Arrow cache (keyed by ``gen_kwargs``), then memory-map it."""
        table = datasets.Dataset.from_generator(generator, features=_features(languages), gen_kwargs=gen_kwargs)
        return cls(table, languages)

    def __len__(self) -> int:
        return len(self.table)

    def language_mask(self) -> np.ndarray:
        """[items, languages] booleans: both question and passage exist in that language."""
        mask = np.zeros((len(self.table), len(self.languages)), dtype=bool)
        for j, lang in enumerate(self.languages):
            q = self.table.data.column(f"q.{lang}").is_valid().to_numpy(zero_copy_only=False)
            p = self.table.data.column(f"p.{lang}").is_valid().to_numpy(zero_copy_only=False)
            mask[:, j] = q & p
        return mask

    def item_languages(self) -> list[tuple[str, ...]]:
        mask = self.language_mask()
        return [tuple(lang for lang, ok in zip(self.languages, row) if ok) for row in mask]

    def rows(self, indices: Sequence[int]) -> dict[str, list]:
        """Columns of the given rows (one Arrow take, not one lookup per row)."""
        return self.table[list(indices)]

    def tokenized(self, text_tokenizer) -> "ItemStore":
        """The same table with every text replaced by its token ids (prefix added, truncated).

        Computed once with ``datasets.map``; for file-backed tables the result is cached on disk next
        to the source and reused by later runs with the same tokenizer and settings.
        """

        def encode(batch: dict) -> dict:
            out = {"id": batch["id"]}
            for lang in self.languages:
                for column, kind in ((f"q.{lang}", "query"), (f"p.{lang}", "passage")):
                    texts = batch[column]
                    present = [i for i, t in enumerate(texts) if t is not None]
                    ids = text_tokenizer.encode([texts[i] for i in present], kind, lang)
                    column_ids: list = [None] * len(texts)
                    for i, row in zip(present, ids):
                        column_ids[i] = row
                    out[column] = column_ids
                negatives = batch[f"n.{lang}"]
                flat = text_tokenizer.encode([t for texts in negatives for t in texts or []], "passage", lang)
                out[f"n.{lang}"], start = [], 0
                for texts in negatives:
                    out[f"n.{lang}"].append(flat[start : start + len(texts or [])])
                    start += len(texts or [])
            return out

        table = self.table.map(encode, batched=True, batch_size=1000, features=_token_features(self.languages), desc="tokenize")
        return ItemStore(table, self.languages)

    def item(self, index: int) -> ParallelItem:
        row = self.table[int(index)]
        return ParallelItem(
            id=row["id"],
            questions={lang: row[f"q.{lang}"] for lang in self.languages if row[f"q.{lang}"] is not None},
            passages={lang: row[f"p.{lang}"] for lang in self.languages if row[f"p.{lang}"] is not None},
            hard_negatives={lang: tuple(row[f"n.{lang}"]) for lang in self.languages if row[f"n.{lang}"]},
        )
