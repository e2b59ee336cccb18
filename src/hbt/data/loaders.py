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
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from hbt.data.schema import ParallelItem
from hbt.data.store import ItemStore, item_to_row
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


def _translated_items(spec: dict) -> Iterator[ParallelItem]:
    cols = {"id": "id", "question": "question", "passage": "passage", "hard_negatives": "hard_negatives", **(spec["columns"] or {})}
    merged: dict[str, dict] = {}
    for lang in spec["file_languages"]:
        path = Path(spec["pattern"].format(lang=lang))
        for where, record in read_records(path):
            missing = [cols[k] for k in ("id", "question", "passage") if record.get(cols[k]) in (None, "")]
            if missing:
                raise DataError(where, f"missing field {missing[0]!r}")
            entry = merged.setdefault(str(record[cols["id"]]), {"id": str(record[cols["id"]]), "questions": {}, "passages": {}, "hard_negatives": {}})
            if lang in entry["questions"]:
                raise DataError(where, f"duplicate item id {record[cols['id']]!r}")
            entry["questions"][lang] = check_text(record[cols["question"]], where, "question text")
            entry["passages"][lang] = check_text(record[cols["passage"]], where, "passage text")
            if record.get(cols["hard_negatives"]):
                entry["hard_negatives"][lang] = record[cols["hard_negatives"]]
    for item_id, entry in merged.items():
        yield record_to_item(entry, f"item {item_id}", None, spec["file_languages"])


def _mmarco_items(spec: dict) -> Iterator[ParallelItem]:
    root = Path(spec["directory"])
    triples: dict[tuple[str, str], list[str]] = {}
    for where, (qid, pos, neg) in read_tsv(root / spec["triples"], 3):
        if spec["max_items"] and len(triples) >= spec["max_items"] and (qid, pos) not in triples:
            break
        negs = triples.setdefault((qid, pos), [])
        if len(negs) < spec["negatives_per_item"]:
            negs.append(neg)
    qids = {qid for qid, _ in triples}
    pids = {pid for (_, pos), negs in triples.items() for pid in (pos, *negs)}
    queries: dict[str, dict[str, str]] = {}
    passages: dict[str, dict[str, str]] = {}
    for lang in spec["file_languages"]:
        queries[lang] = {q: check_text(t, w, "query text") for w, (q, t) in read_tsv(root / spec["queries"].format(lang=lang), 2) if q in qids}
        passages[lang] = {p: check_text(t, w, "passage text") for w, (p, t) in read_tsv(root / spec["collection"].format(lang=lang), 2) if p in pids}
    for (qid, pos), negs in triples.items():
        langs = [lang for lang in spec["file_languages"] if qid in queries[lang] and pos in passages[lang]]
        yield ParallelItem(
            id=f"{qid}-{pos}",
            questions={lang: queries[lang][qid] for lang in langs},
            passages={lang: passages[lang][pos] for lang in langs},
            hard_negatives={lang: tuple(passages[lang][n] for n in negs if n in passages[lang]) for lang in langs},
        )


_ITEM_READERS = {"file": _file_items, "hf": _hf_items, "translated": _translated_items, "mmarco": _mmarco_items}


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
    paths = [root / triples, *(root / queries.format(lang=l) for l in languages), *(root / collection.format(lang=l) for l in languages)]
    return _build("mmarco", spec, paths, languages)
