"""Training data spread over per-language files, joined by id through on-disk staging, so memory grows
with the items used, not with the collections: translated QA (one file per language) and mMARCO
(per-language queries and collection TSVs with id triples shared by all languages). Each yields
:class:`~hbt.data.schema.ParallelItem` for :mod:`hbt.data.loaders` to store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from hbt.data.readers import check_text, read_records, read_tsv, record_to_item
from hbt.data.schema import ParallelItem
from hbt.errors import DataError


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


def translated_items(spec: dict) -> Iterator[ParallelItem]:
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


def mmarco_items(spec: dict) -> Iterator[ParallelItem]:
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
