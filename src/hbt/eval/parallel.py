"""Parallel-sentence retrieval: XTREME's Tatoeba (each language aligned with its own English side) and
N-way parallel text such as FLORES or MTOP utterances (one line-aligned file per language).

Each sentence retrieves its translation; with one relevant candidate, recall@1 is XTREME's
accuracy@1. Tatoeba reports the two directions against English as separate settings, ``xx_en``
(``xxx-eng`` pairs: XTREME's reported figure, the headline) and ``en_xx`` (``eng-xxx``), plus the multi
view (``xxx``: the pool of both sides without the query's own sentence); N-way text gives the cross and
multi views over all languages, with rank distance. The mono view is skipped: there the query is its
own candidate, and the multi view leaves it out for the same reason.

These are symmetric tasks, so by default both sides are encoded alike, as queries (for mE5, its authors'
prescription: "query: " on both sides); ``symmetric=False`` encodes the candidates as passages.
"""

from __future__ import annotations

from pathlib import Path

from hbt.errors import DataError
from hbt.eval.benchmark import BenchmarkGroup, RetrievalBenchmark

PARALLEL_SETTINGS = ("cross", "multi")
# The 36 Tatoeba languages XTREME evaluates (ISO 639-3 codes of the files).
XTREME_TATOEBA = (
    "afr ara ben bul cmn deu ell est eus fin fra heb hin hun ind ita jav jpn kat kaz kor mal mar nld pes por rus spa swh tam tel tgl tha tur urd vie"
).split()


def read_aligned(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(str(path), "file not found")
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            raise DataError(f"{path}:{lineno}", "empty sentence")
    return lines


def aligned_benchmark(name: str, sentences: dict[str, list[str]], origin: dict[str, Path], symmetric: bool = True) -> RetrievalBenchmark:
    counts = {lang: len(lines) for lang, lines in sentences.items()}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{origin[lang]}: {n} lines" for lang, n in counts.items())
        raise DataError(name, f"files are not line-aligned ({detail})")
    ids = [str(i) for i in range(next(iter(counts.values())))]
    return RetrievalBenchmark(
        name=name,
        queries={lang: list(zip(ids, lines)) for lang, lines in sentences.items()},
        candidates={lang: list(lines) for lang, lines in sentences.items()},
        relevant={lang: {i: [int(i)] for i in ids} for lang in sentences},
        settings=PARALLEL_SETTINGS,
        queries_are_candidates=True,
        candidate_kind="query" if symmetric else "passage",
    )


def load_tatoeba(directory: str, languages: list[str] | None = None, name: str = "tatoeba", symmetric: bool = True) -> BenchmarkGroup:
    """``tatoeba.<xxx>-eng.<xxx>`` / ``tatoeba.<xxx>-eng.eng`` pairs; ``languages`` defaults to XTREME's 36."""
    root = Path(directory)
    parts, labels = {}, {}
    for lang in languages or XTREME_TATOEBA:
        paths = {lang: root / f"tatoeba.{lang}-eng.{lang}", "eng": root / f"tatoeba.{lang}-eng.eng"}
        parts[lang] = aligned_benchmark(f"{name}/{lang}", {k: read_aligned(p) for k, p in paths.items()}, paths, symmetric)
        labels[lang] = {"eng": "eng"}
    return BenchmarkGroup(name, parts, labels, pivot="eng")


def load_parallel_files(name: str, pattern: str, languages: list[str], symmetric: bool = True) -> RetrievalBenchmark:
    """N-way parallel text, one line-aligned file per language: ``pattern`` holds ``{lang}``."""
    paths = {lang: Path(pattern.format(lang=lang)) for lang in languages}
    return aligned_benchmark(name, {lang: read_aligned(p) for lang, p in paths.items()}, paths, symmetric)
