"""Ad-hoc retrieval benchmarks released in TREC style, such as MIRACL.

Per language: topics (``qid \\t query`` TSV), qrels (``qid Q0 docid grade``, graded) and a corpus (JSONL
of ``docid``/``title``/``text``, optionally gzipped, possibly split over several files). Retrieval is
monolingual per language; metrics are nDCG@10 and Recall@100 per language and their average.

The full MIRACL corpora are huge (English ~33M passages), so a corpus is never held in memory: it is
read as a stream (:class:`Corpus`), each rank taking every world-th document, and the evaluator encodes
it into fp16 shards on disk that it searches one by one. It can also be a *pooled* subset: every judged
passage plus the top-``pool_depth`` passages of the given run files (TREC run format) — as MTEB's
hard-negative variants do. Results say which corpus was used.
"""

from __future__ import annotations

import glob
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from hbt.data.readers import read_lines, read_tsv
from hbt.errors import ConfigError, DataError


@dataclass
class Corpus:
    """Documents of JSONL files (``docid``/``title``/``text``, optionally gzipped), read as a stream.

    ``docs(rank, world)`` yields this rank's share, every ``world``-th document by position (among the
    kept ones, for a pooled corpus), as ``(position, docid, text)``; a full corpus does not even parse
    the other ranks' lines. A malformed line stops the reading with ``file:line``."""

    files: list[str]
    keep: frozenset[str] | None = None

    def docs(self, rank: int = 0, world: int = 1) -> Iterator[tuple[int, str, str]]:
        position = 0
        for name in self.files:
            opener = gzip.open if name.endswith(".gz") else open
            with opener(name, "rt", encoding="utf-8") as handle:
                for lineno, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    if self.keep is None:
                        position += 1
                        if (position - 1) % world != rank:
                            continue
                    docid, text = _parse_doc(line, f"{name}:{lineno}")
                    if self.keep is not None:
                        if docid not in self.keep:
                            continue
                        position += 1
                        if (position - 1) % world != rank:
                            continue
                    yield position - 1, docid, text

    # Whole-corpus views, for small corpora and tests (the evaluator streams instead).
    @property
    def doc_ids(self) -> list[str]:
        return [docid for _, docid, _ in self.docs()]

    @property
    def doc_texts(self) -> list[str]:
        return [text for _, _, text in self.docs()]


def _parse_doc(line: str, where: str) -> tuple[str, str]:
    try:
        doc = json.loads(line)
        docid, text = str(doc["docid"]), doc["text"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(where, f"expected a JSON object with docid/title/text ({type(err).__name__})") from None
    title = doc.get("title") or ""
    return docid, f"{title} {text}".strip() if title else text


@dataclass
class TrecLanguage:
    queries: list[tuple[str, str]]
    corpus: Corpus
    qrels: dict[str, dict[str, int]]

    @property
    def doc_ids(self) -> list[str]:
        return self.corpus.doc_ids

    @property
    def doc_texts(self) -> list[str]:
        return self.corpus.doc_texts


@dataclass
class TrecBenchmark:
    name: str
    languages: dict[str, TrecLanguage]
    corpus: str  # "full" or a description of the pooled subset
    ks: dict[str, int] = field(default_factory=lambda: {"ndcg": 10, "recall": 100})

    def summary(self) -> str:
        parts = [f"{lang}: {len(d.queries)} q / {len(d.corpus.files)} corpus file(s)" for lang, d in self.languages.items()]
        return f"{self.name} [{self.corpus} corpus] ({', '.join(parts)})"

    def text_languages(self) -> set[str]:
        return set(self.languages)

    takes_query_subsets = True

    def all_queries(self) -> list[tuple[str, str]]:
        return [q for data in self.languages.values() for q in data.queries]


def read_topics(path: Path) -> list[tuple[str, str]]:
    return [(qid, text) for _, (qid, text) in read_tsv(path, 2)]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for where, line in read_lines(path):
        parts = line.split()
        if len(parts) != 4:
            raise DataError(where, f"expected 'qid Q0 docid grade' (4 fields), found {len(parts)}")
        try:
            qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
        except ValueError:
            raise DataError(where, f"relevance grade {parts[3]!r} is not an integer") from None
    return qrels


def read_run(path: Path, depth: int) -> dict[str, list[str]]:
    """Top-``depth`` docids per query from a TREC run (``qid Q0 docid rank score tag``), by score."""
    scored: dict[str, list[tuple[float, str]]] = {}
    for where, line in read_lines(path):
        parts = line.split()
        if len(parts) != 6:
            raise DataError(where, f"expected 'qid Q0 docid rank score tag' (6 fields), found {len(parts)}")
        try:
            scored.setdefault(parts[0], []).append((float(parts[4]), parts[2]))
        except ValueError:
            raise DataError(where, f"score {parts[4]!r} is not a number") from None
    return {qid: [doc for _, doc in sorted(docs, key=lambda x: -x[0])[:depth]] for qid, docs in scored.items()}


def corpus_files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(pattern, "no corpus files match")
    return files


def load_trec(
    name: str,
    languages: list[str],
    topics: str,
    qrels: str,
    corpus: str,
    split: str = "dev",
    runs: list[str] | None = None,
    pool_depth: int = 100,
    pooled: bool = False,
) -> TrecBenchmark:
    """Paths are patterns with ``{lang}`` and ``{split}``; ``corpus`` may contain a glob.

    The full corpus by default, as the benchmark defines it. ``pooled`` scores the judged passages plus
    the top ``pool_depth`` of each run file; without run files that would be the judged passages alone
    (about 10 candidates per query), which inflates nDCG@10, so it is refused."""
    if pooled and not runs:
        raise ConfigError(
            f"eval.{name}.runs",
            "pooled=true needs run files (e.g. BM25 top-100) to pool from; without them only the judged passages would be "
            f"scored, which inflates nDCG@10. Give eval.{name}.runs=[...] or set eval.{name}.pooled=false (the full corpus)",
        )
    data: dict[str, TrecLanguage] = {}
    for lang in languages:
        fill = partial(str.format, lang=lang, split=split)
        judged = read_qrels(Path(fill(qrels)))
        keep = None
        if pooled:
            keep = {doc for docs in judged.values() for doc in docs}
            for run in runs or []:
                keep |= {doc for docs in read_run(Path(fill(run)), pool_depth).values() for doc in docs}
        data[lang] = TrecLanguage(
            read_topics(Path(fill(topics))), Corpus(corpus_files(fill(corpus)), frozenset(keep) if keep is not None else None), judged
        )
    desc = f"pooled (judged + top-{pool_depth} of {len(runs or [])} run(s))" if pooled else "full"
    return TrecBenchmark(name, data, desc)
