"""Loaders that turn parallel training data into an :class:`ItemStore`.

Layouts:
- ``load_jsonl`` / ``load_parquet``: one item per line/row in hbt's schema
  ``{"id", "questions": {lang: text}, "passages": {lang: text}, "hard_negatives": {lang: [text]}}``,
  with a ``columns`` mapping for other names;
- ``load_hf``: a Hugging Face dataset (hub name or local directory) with a ``columns`` mapping; a
  mapping value containing ``{lang}`` names one column per language (``question_{lang}``);
- ``load_translated``: translated QA where each language is its own JSONL/Parquet file, joined by id;
- ``load_mmarco``: mMARCO-style per-language ``queries.tsv`` / ``collection.tsv`` with id-aligned
  training triples (query id, positive id, negative id) shared by all languages.

Rows stream into an Arrow cache keyed by the source files' paths, sizes and modification times, so
large sets are memory-mapped and a changed file is read again. Every malformed line, missing field,
empty text or unknown language stops the load with one line naming ``file:line`` (or the row).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from hbt.data.joins import mmarco_items, translated_items
from hbt.data.readers import read_records, record_to_item
from hbt.data.schema import ParallelItem
from hbt.data.store import ItemStore, item_to_row
from hbt.errors import DataError


# -- store builders -----------------------------------------------------------------------------
def _signature(paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    """What the Arrow cache is keyed on: a changed file invalidates it."""
    out = []
    for path in paths:
        stat = os.stat(path) if path.exists() else None
        out.append((str(path.resolve()), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1))
    return out


def _rows_from_spec(spec: str) -> Iterator[dict]:
    """Generator for ``datasets.Dataset.from_generator`` (module-level, so the cache key is stable)."""
    spec = json.loads(spec)
    languages = spec["languages"]
    for item in _ITEM_READERS[spec["kind"]](spec):
        yield item_to_row(item, languages)


def _languages_present(kind: str, spec: dict, paths: Sequence[Path]) -> list[str]:
    """One validating pass over the source to find its languages, remembered (keyed like the Arrow
    cache) so that later runs and the other ranks do not read the whole source again."""
    from datasets.fingerprint import Hasher

    from hbt.data.store import cache_root

    memo = cache_root() / f"languages-{Hasher.hash([kind, spec, _signature(paths)])}.json"
    if memo.exists():
        return json.loads(memo.read_text())
    languages = sorted({lang for item in _ITEM_READERS[kind]({**spec, "languages": None}) for lang in item.languages})
    memo.parent.mkdir(parents=True, exist_ok=True)
    partial = memo.with_name(f"{memo.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(languages))
    os.replace(partial, memo)
    return languages


def _build(kind: str, spec: dict, paths: Sequence[Path], languages: Sequence[str] | None) -> ItemStore:
    if languages is None:
        languages = _languages_present(kind, spec, paths)
    spec = {**spec, "kind": kind, "languages": list(languages), "signature": _signature(paths)}
    try:
        return ItemStore.from_generator(_rows_from_spec, {"spec": json.dumps(spec, sort_keys=True)}, languages)
    except Exception as err:  # datasets wraps generator errors; surface ours unchanged
        cause = err
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def _file_items(spec: dict) -> Iterator[ParallelItem]:
    seen: set[str] = set()
    for where, record in read_records(Path(spec["path"])):
        item = record_to_item(record, where, spec["columns"], spec["languages"])
        if item.id in seen:
            raise DataError(where, f"duplicate item id {item.id!r}")
        seen.add(item.id)
        yield item


def _hf_items(spec: dict) -> Iterator[ParallelItem]:
    import datasets

    source = spec["name_or_path"]
    try:
        saved = Path(source) / "dataset_dict.json", Path(source) / "state.json"
        if any(p.exists() for p in saved):
            table = datasets.load_from_disk(source)
            if isinstance(table, datasets.DatasetDict):
                table = table[spec["split"]]
        else:
            table = datasets.load_dataset(source, spec["config_name"], split=spec["split"])
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
        raise DataError(source, f"cannot load dataset ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    for row, record in enumerate(table):
        yield record_to_item(record, f"{source} row {row}", spec["columns"], spec["languages"])


_ITEM_READERS = {"file": _file_items, "hf": _hf_items, "translated": translated_items, "mmarco": mmarco_items}


# -- public loaders (targets of conf/data) --------------------------------------------------------
def load_jsonl(path: str, languages: Sequence[str] | None = None, columns: Mapping[str, str] | None = None) -> ItemStore:
    return _build("file", {"path": str(path), "columns": dict(columns or {})}, [Path(path)], languages)


load_parquet = load_jsonl  # the file type is read from the suffix


def load_hf(
    name_or_path: str,
    split: str = "train",
    columns: Mapping[str, str] | None = None,
    languages: Sequence[str] | None = None,
    config_name: str | None = None,
) -> ItemStore:
    spec = {"name_or_path": str(name_or_path), "split": split, "columns": dict(columns or {}), "config_name": config_name}
    return _build("hf", spec, [Path(name_or_path)], languages)


def load_translated(pattern: str, languages: Sequence[str], columns: Mapping[str, str] | None = None) -> ItemStore:
    """``pattern`` holds ``{lang}``, e.g. ``data/squad_translated/{lang}.jsonl``."""
    if "{lang}" not in pattern:
        from hbt.errors import ConfigError

        raise ConfigError("data.train.pattern", f"must contain '{{lang}}', got {pattern!r}")
    paths = [Path(pattern.format(lang=lang)) for lang in languages]
    spec = {"pattern": pattern, "file_languages": list(languages), "columns": dict(columns or {})}
    return _build("translated", spec, paths, languages)


def load_mmarco(
    directory: str,
    languages: Sequence[str],
    triples: str = "triples.train.ids.small.tsv",
    queries: str = "{lang}/queries.train.tsv",
    collection: str = "{lang}/collection.tsv",
    max_items: int | None = None,
    negatives_per_item: int = 1,
) -> ItemStore:
    spec = {
        "directory": str(directory),
        "file_languages": list(languages),
        "triples": triples,
        "queries": queries,
        "collection": collection,
        "max_items": max_items,
        "negatives_per_item": negatives_per_item,
    }
    root = Path(directory)
    paths = [
        root / triples,
        *(root / queries.format(lang=lang) for lang in languages),
        *(root / collection.format(lang=lang) for lang in languages),
    ]
    return _build("mmarco", spec, paths, languages)
