"""Reading source files of training and evaluation data, line by line, with every problem reported as one
line naming ``file:line``: JSONL, Parquet, TSV and plain lines, and the check of each record against hbt's
schema (:func:`record_to_item`: ids, texts, language codes, column mappings)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from hbt.data.schema import ParallelItem
from hbt.errors import DataError

LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
DEFAULT_COLUMNS = {"id": "id", "questions": "questions", "passages": "passages", "hard_negatives": "hard_negatives"}


# -- validation ---------------------------------------------------------------------------------
def check_language(lang: str, where: str, languages: Sequence[str] | None) -> None:
    if languages is not None and lang not in languages:
        raise DataError(where, f"unknown language {lang!r} (configured: {', '.join(languages)})")
    if languages is None and not (isinstance(lang, str) and LANGUAGE_CODE.match(lang)):
        raise DataError(where, f"unknown language code {lang!r}")


def check_text(text, where: str, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise DataError(where, f"empty {what}")
    return text


def record_to_item(record: Mapping, where: str, columns: Mapping[str, str] | None, languages: Sequence[str] | None) -> ParallelItem:
    """One record (JSON object, table row) to an item, through the column mapping."""
    cols = {**DEFAULT_COLUMNS, **(columns or {})}
    if not isinstance(record, Mapping):
        raise DataError(where, f"expected an object, got {type(record).__name__}")
    if cols["id"] not in record or record[cols["id"]] in (None, ""):
        raise DataError(where, f"missing field {cols['id']!r}")
    per_language = "{lang}" in cols["questions"]
    if per_language and languages is None:
        raise DataError(where, "per-language columns ('{lang}' in data.columns) need data.languages")
    fields = {}
    for key in ("questions", "passages", "hard_negatives"):
        name = cols[key]
        if per_language:
            fields[key] = {lang: record.get(name.format(lang=lang)) for lang in languages}
            fields[key] = {lang: v for lang, v in fields[key].items() if v is not None}
        else:
            value = record.get(name)
            if value is None and key != "hard_negatives":
                raise DataError(where, f"missing field {name!r}")
            fields[key] = {lang: v for lang, v in dict(value or {}).items() if v is not None}  # absent languages
    if not fields["questions"]:
        raise DataError(where, f"no questions in field {cols['questions']!r}")
    for key, what in (("questions", "question"), ("passages", "passage")):
        for lang, text in fields[key].items():
            check_language(lang, where, languages)
            check_text(text, where, f"{what} text for language {lang!r}")
    negatives = {}
    for lang, texts in fields["hard_negatives"].items():
        check_language(lang, where, languages)
        if isinstance(texts, str):
            texts = [texts]
        negatives[lang] = tuple(check_text(t, where, f"hard negative for language {lang!r}") for t in texts)
    item = ParallelItem(str(record[cols["id"]]), fields["questions"], fields["passages"], negatives)
    if not item.languages:
        raise DataError(where, "no language has both a question and a passage")
    return item


# -- record readers -----------------------------------------------------------------------------
def read_lines(path: Path) -> Iterator[tuple[str, str]]:
    """Non-empty lines as ``("file:line", text)``; undecodable bytes name their line."""
    if not path.is_file():
        raise DataError(str(path), "file not found")
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DataError(where, f"not UTF-8 ({err.reason})") from None
            if line.strip():
                yield where, line


def read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    for where, line in read_lines(path):
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(where, f"malformed JSON ({err.msg}, column {err.colno})") from None


def read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(str(path), "file not found")
    try:
        reader = pq.ParquetFile(path)
        row = 0
        for batch in reader.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                yield f"{path} row {row}", _unpairs(record)
                row += 1
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(str(path), f"unreadable Parquet ({str(err).splitlines()[0]})") from None


def _unpairs(record: dict) -> dict:
    """Arrow map columns come back as lists of (key, value) pairs; make them dicts again."""
    out = {}
    for key, value in record.items():
        if isinstance(value, list) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            value = dict(value)
        out[key] = value
    return out


def read_records(path: Path) -> Iterator[tuple[str, dict]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path)
    if suffix == ".parquet":
        return read_parquet(path)
    raise DataError(str(path), f"unsupported file type {suffix!r} (use .jsonl or .parquet)")


def read_tsv(path: Path, fields: int) -> Iterator[tuple[str, list[str]]]:
    for where, line in read_lines(path):
        parts = line.split("\t")
        if len(parts) != fields:
            raise DataError(where, f"expected {fields} tab-separated fields, found {len(parts)}")
        yield where, parts
