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


class _Staged:
    """The values of one source file (one language's queries, passages, negatives) written to an Arrow
    IPC file and memory-mapped, located by a dense id index: what a join across languages needs, with
    only 8 bytes per referenced id in memory instead of the texts."""

    FLUSH = 8192

    def __init__(self, path: Path, ids: int, value_type):
        import numpy as np
        import pyarrow as pa

        self.path, self.type = path, value_type
        self.rows = np.full(ids, -1, dtype=np.int64)
        self.schema = pa.schema([("v", value_type)])
        self.writer = pa.ipc.new_file(str(path), self.schema)
        self.buffer: list = []
        self.count = 0
        self.column = None

    def add(self, index: int, value, where: str, name: str = "") -> None:
        if self.rows[index] >= 0:
            raise DataError(where, f"duplicate id {name!r} in this file")
        self.rows[index] = self.count
        self.count += 1
        self.buffer.append(value)
        if len(self.buffer) >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.buffer:
            self.writer.write_batch(pa.record_batch([pa.array(self.buffer, type=self.type)], schema=self.schema))
            self.buffer = []

    def close(self) -> _Staged:
        import pyarrow as pa

        self._flush()
        self.writer.close()
        self.column = pa.ipc.open_file(pa.memory_map(str(self.path))).read_all().column("v")
        return self

    def take(self, indices) -> list:
        """Values of the given ids (None where the file does not have the id)."""
        import numpy as np

        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        present = rows >= 0
        out = [None] * len(rows)
        for position, value in zip(np.flatnonzero(present), self.column.take(rows[present]).to_pylist()):
            out[position] = value
        return out


def _staging_dir():
    """A temporary directory beside the Arrow cache (where the disk space for data is)."""
    import tempfile

    from hbt.data.store import cache_root

    cache_root().mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=cache_root(), prefix="staging-")


JOIN_CHUNK = 4096


def _translated_items(spec: dict) -> Iterator[ParallelItem]:
    """Per-language files joined by id, streamed: each file is staged on disk, and items are assembled
    chunk by chunk in the order their ids first appear."""
    import pyarrow as pa

    cols = {"id": "id", "question": "question", "passage": "passage", "hard_negatives": "hard_negatives", **(spec["columns"] or {})}
    languages = spec["file_languages"]
    ids: dict[str, int] = {}
    with _staging_dir() as tmp:
        staged = {}
        for lang in languages:
            path = Path(spec["pattern"].format(lang=lang))
            # Sized as ids arrive: numpy arrays grow by doubling.
            files = {
                kind: _GrowingStaged(Path(tmp) / f"{lang}.{kind}.arrow", t)
                for kind, t in (("question", pa.string()), ("passage", pa.string()), ("negatives", pa.list_(pa.string())))
            }
            for where, record in read_records(path):
                missing = [cols[k] for k in ("id", "question", "passage") if record.get(cols[k]) in (None, "")]
                if missing:
                    raise DataError(where, f"missing field {missing[0]!r}")
                item_id = str(record[cols["id"]])
                index = ids.setdefault(item_id, len(ids))
                files["question"].add(index, check_text(record[cols["question"]], where, "question text"), where, item_id)
                files["passage"].add(index, check_text(record[cols["passage"]], where, "passage text"), where)
                negatives = record.get(cols["hard_negatives"]) or []
                negatives = [negatives] if isinstance(negatives, str) else list(negatives)
                files["negatives"].add(index, [check_text(t, where, f"hard negative for language {lang!r}") for t in negatives], where)
            staged[lang] = {kind: f.close() for kind, f in files.items()}
        names = list(ids)
        for start in range(0, len(names), JOIN_CHUNK):
            chunk = range(start, min(start + JOIN_CHUNK, len(names)))
            texts = {lang: {kind: f.take(chunk) for kind, f in staged[lang].items()} for lang in languages}
            for offset, index in enumerate(chunk):
                record = {"id": names[index], "questions": {}, "passages": {}, "hard_negatives": {}}
                for lang in languages:
                    q, p, n = (texts[lang][k][offset] for k in ("question", "passage", "negatives"))
                    if q is not None:
                        record["questions"][lang], record["passages"][lang] = q, p
                        if n:
                            record["hard_negatives"][lang] = n
                yield record_to_item(record, f"item {names[index]}", None, languages)


class _GrowingStaged(_Staged):
    """A staged file whose id index grows as new ids arrive (for joins whose ids are not known up front)."""

    def __init__(self, path: Path, value_type):
        super().__init__(path, 1024, value_type)

    def add(self, index: int, value, where: str, name: str = "") -> None:
        import numpy as np

        if index >= len(self.rows):
            grown = np.full(max(2 * len(self.rows), index + 1), -1, dtype=np.int64)
            grown[: len(self.rows)] = self.rows
            self.rows = grown
        super().add(index, value, where, name)

    def take(self, indices) -> list:
        import numpy as np

        indices = np.asarray(indices, dtype=np.int64)
        inside = indices < len(self.rows)
        out = [None] * len(indices)
        found = super().take(indices[inside])
        for position, value in zip(np.flatnonzero(inside), found):
            out[position] = value
        return out


def _mmarco_items(spec: dict) -> Iterator[ParallelItem]:
    """mMARCO, streamed: the triples give the items (query, positive, negatives) as dense ids; each
    language's queries and collection files are read once, keeping only the referenced texts, which go
    to memory-mapped Arrow files; items are then assembled chunk by chunk. Memory grows with the
    referenced items (a few dozen bytes each, per language), not with the collections."""
    import numpy as np
    import pyarrow as pa

    root = Path(spec["directory"])
    qindex: dict[str, int] = {}
    pindex: dict[str, int] = {}
    keys: dict[tuple[str, str], int] = {}
    item_q, item_p, item_n = [], [], []
    for _where, (qid, pos, neg) in read_tsv(root / spec["triples"], 3):
        k = keys.get((qid, pos))
        if k is None:
            if spec["max_items"] and len(keys) >= spec["max_items"]:
                break
            k = keys[(qid, pos)] = len(keys)
            item_q.append(qindex.setdefault(qid, len(qindex)))
            item_p.append(pindex.setdefault(pos, len(pindex)))
            item_n.append([])
        if len(item_n[k]) < spec["negatives_per_item"]:
            item_n[k].append(pindex.setdefault(neg, len(pindex)))
    del keys
    item_q, item_p = np.array(item_q, dtype=np.int64), np.array(item_p, dtype=np.int64)
    qnames, pnames = list(qindex), list(pindex)
    languages = spec["file_languages"]
    with _staging_dir() as tmp:
        queries, passages = {}, {}
        for lang in languages:
            for index, name, store, what in ((qindex, "queries", queries, "query"), (pindex, "collection", passages, "passage")):
                staged = _Staged(Path(tmp) / f"{lang}.{name}.arrow", len(index), pa.string())
                for where, (text_id, text) in read_tsv(root / spec[name].format(lang=lang), 2):
                    position = index.get(text_id)
                    if position is not None:
                        staged.add(position, check_text(text, where, f"{what} text"), where, text_id)
                store[lang] = staged.close()
        del qindex, pindex
        for start in range(0, len(item_q), JOIN_CHUNK):
            stop = min(start + JOIN_CHUNK, len(item_q))
            negs = item_n[start:stop]
            flat = [n for ns in negs for n in ns]
            texts = {
                lang: (queries[lang].take(item_q[start:stop]), passages[lang].take(item_p[start:stop]), passages[lang].take(flat))
                for lang in languages
            }
            offset = 0
            for i, ns in enumerate(negs):
                langs = [lang for lang in languages if texts[lang][0][i] is not None and texts[lang][1][i] is not None]
                yield ParallelItem(
                    id=f"{qnames[item_q[start + i]]}-{pnames[item_p[start + i]]}",
                    questions={lang: texts[lang][0][i] for lang in langs},
                    passages={lang: texts[lang][1][i] for lang in langs},
                    hard_negatives={lang: tuple(t for t in texts[lang][2][offset : offset + len(ns)] if t is not None) for lang in langs},
                )
                offset += len(ns)


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
    paths = [
        root / triples,
        *(root / queries.format(lang=lang) for lang in languages),
        *(root / collection.format(lang=lang) for lang in languages),
    ]
    return _build("mmarco", spec, paths, languages)
