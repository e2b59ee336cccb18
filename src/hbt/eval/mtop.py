"""MTOP (Li et al. 2021) as multilingual retrieval: utterances retrieve their translations (or, with
``relevance="intent"``, the utterances that share their intent).

The release (``mtop/<lang>/{train,eval,test}.txt``) has one tab-separated row per utterance: id, intent,
slots, utterance, domain, locale, decoupled form and the tokens as JSON. The six languages (en, de, es,
fr, hi, th) were translated from English and are parallel **by id**, not by line: each language lacks
some of the others' ids (the splits differ in size from language to language), so a query is scored
only where its translation exists, and each pair's ``num_queries`` in results.json says how many were.

- ``relevance="translation"`` (default): the relevant candidates are the query's translations. The cross
  view (pool Y ≠ X) has one; the multi view (all languages' utterances, without the query itself) has
  one per other language that has the id, and reports rank distance. There is no mono view: in the pool
  of X the only translation of a query is the query itself (as for Tatoeba).
- ``relevance="intent"``: the relevant candidates are all utterances with the query's intent (the
  intent label of its id; the query itself is never a candidate), which gives a mono view too. With
  hundreds of utterances per intent, MAP and precision@k are the informative metrics there.

The task is symmetric, so both sides are encoded alike, as queries (``symmetric=False``: candidates as passages).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hbt.errors import ConfigError, DataError
from hbt.eval.benchmark import RetrievalBenchmark

MTOP_LANGUAGES = ("en", "de", "es", "fr", "hi", "th")
COLUMNS = ("id", "intent", "slots", "utterance", "domain", "locale", "decoupled", "tokens")
RELEVANCE = ("translation", "intent")
log = logging.getLogger(__name__)


def read_mtop(path: Path, lang: str) -> list[tuple[str, str, str]]:
    """``(id, intent, utterance)`` rows of one file; a malformed row stops with ``file:line``."""
    if not path.is_file():
        raise DataError(str(path), "file not found (MTOP's layout: <directory>/<lang>/<split>.txt)")
    rows, seen = [], {}
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            fields = line.split("\t")
            where = f"{path}:{lineno}"
            if len(fields) < 6:
                raise DataError(where, f"expected MTOP's tab-separated columns ({', '.join(COLUMNS)}), got {len(fields)} field(s)")
            uid, intent, utterance, locale = fields[0].strip(), fields[1].strip(), fields[3].strip(), fields[5].strip()
            if not uid:
                raise DataError(where, "empty id")
            if not utterance:
                raise DataError(where, "empty utterance")
            if not intent.startswith("IN:"):
                raise DataError(where, f"intent {intent!r} is not an MTOP intent (IN:...)")
            if locale and locale.split("_")[0].lower() != lang:
                raise DataError(where, f"locale {locale!r} in the {lang!r} file")
            if uid in seen:
                raise DataError(where, f"duplicate id {uid!r} (first at line {seen[uid]})")
            seen[uid] = lineno
            rows.append((uid, intent, utterance))
    if not rows:
        raise DataError(str(path), "no utterances")
    return rows


def load_mtop(
    directory: str,
    languages: list[str] | None = None,
    split: str = "test",
    relevance: str = "translation",
    symmetric: bool = True,
    name: str = "mtop",
) -> RetrievalBenchmark:
    if relevance not in RELEVANCE:
        raise ConfigError(f"eval.{name}.relevance", f"expected one of {list(RELEVANCE)}, got {relevance!r}")
    languages = list(languages or MTOP_LANGUAGES)
    if len(languages) < 2:
        raise ConfigError(f"eval.{name}.languages", f"needs at least two languages, got {languages}")
    rows = {lang: read_mtop(Path(directory) / lang / f"{split}.txt", lang) for lang in languages}
    queries = {lang: [(uid, text) for uid, _, text in data] for lang, data in rows.items()}
    candidates = {lang: [text for _, _, text in data] for lang, data in rows.items()}
    position = {lang: {uid: i for i, (uid, _, _) in enumerate(data)} for lang, data in rows.items()}
    shared = set.intersection(*(set(p) for p in position.values()))
    log.info("%s: %s utterances; %d ids in every language", name, ", ".join(f"{lang} {len(rows[lang])}" for lang in languages), len(shared))
    if relevance == "translation":
        # An id's candidate in language y is its own translation there; the evaluator leaves the query's
        # own position out of its ranking and its relevant set.
        relevant = {lang: {uid: [i] for uid, i in position[lang].items()} for lang in languages}
        settings: tuple[str, ...] = ("cross", "multi")
    else:
        intent_of: dict[str, str] = {}
        for lang in languages:
            for uid, intent, _ in rows[lang]:
                intent_of.setdefault(uid, intent)  # the first language's label (translations keep the intent)
        by_intent = {lang: {} for lang in languages}
        for lang in languages:
            for i, (_, intent, _) in enumerate(rows[lang]):
                by_intent[lang].setdefault(intent, []).append(i)
        every_id = set().union(*position.values())
        relevant = {lang: {uid: by_intent[lang].get(intent_of[uid], []) for uid in every_id} for lang in languages}
        settings = ("mono", "cross", "multi")
    return RetrievalBenchmark(
        name=name,
        queries=queries,
        candidates=candidates,
        relevant=relevant,
        settings=settings,
        queries_are_candidates=True,
        candidate_kind="query" if symmetric else "passage",
    )
