"""The shape every retrieval benchmark is reduced to before evaluation.

Queries are parallel across languages: the same query id names translations of one question.
Each language has its own candidate pool, and ``relevant[lang][qid]`` lists the positions of the
candidates in that language's pool that answer ``qid``. This covers LAReQA-style data (XQuAD-R,
MLQA-R), N-way parallel sentences (Tatoeba) and the built-in corpus alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from hbt.data.schema import ParallelItem

# Benchmarks are data: the evaluator (hbt.eval.retrieval) picks the part that evaluates each kind.


@dataclass
class RetrievalBenchmark:
    name: str
    queries: dict[str, list[tuple[str, str]]]  # lang -> [(qid, text)]
    candidates: dict[str, list[str]]  # lang -> candidate texts (position = candidate index)
    relevant: dict[str, dict[str, list[int]]]  # candidate lang -> qid -> candidate positions
    # Settings to run (None: the evaluator's). Parallel sentences skip "mono", where query = candidate.
    settings: tuple[str, ...] | None = None
    # Parallel sentences: each query is also a candidate of its own language (same position); every
    # view then leaves that candidate out of the ranking and out of the relevant set.
    queries_are_candidates: bool = False
    # How candidates are encoded: "passage" (retrieval: asymmetric), or "query" for symmetric tasks such
    # as bitext mining, where both sides are encoded alike (mE5's authors: "query: " on both sides).
    candidate_kind: str = "passage"

    @property
    def languages(self) -> list[str]:
        return sorted(self.queries)

    def summary(self) -> str:
        parts = [f"{lang}: {len(self.queries[lang])} q / {len(self.candidates[lang])} c" for lang in self.languages]
        return f"{self.name} ({', '.join(parts)})"

    def text_languages(self) -> set[str]:
        """Every language whose texts the evaluation encodes."""
        return set(self.queries) | set(self.candidates)

    @property
    def takes_query_subsets(self) -> bool:
        return not self.queries_are_candidates  # question-passage data; parallel sentences have no query subsets

    def all_queries(self) -> list[tuple[str, str]]:
        return [q for qs in self.queries.values() for q in qs]


def benchmark_from_items(name: str, items: list[ParallelItem], languages: list[str]) -> RetrievalBenchmark:
    """Each item's question retrieves its own passage, in every language the item has."""
    queries: dict[str, list[tuple[str, str]]] = {}
    candidates: dict[str, list[str]] = {}
    relevant: dict[str, dict[str, list[int]]] = {}
    for lang in languages:
        present = [item for item in items if lang in item.languages]
        queries[lang] = [(item.id, item.questions[lang]) for item in present]
        candidates[lang] = [item.passages[lang] for item in present]
        relevant[lang] = {item.id: [pos] for pos, item in enumerate(present)}
    return RetrievalBenchmark(name, queries, candidates, relevant)


@dataclass
class BenchmarkGroup:
    """Benchmarks reported as one dataset, e.g. Tatoeba: one 2-language benchmark per language paired
    with its own English side. Pair keys are unique across parts; ``label`` renames languages inside
    a part (the English of each Tatoeba pair)."""

    name: str
    parts: dict[str, RetrievalBenchmark]
    labels: dict[str, dict[str, str]]
    # XTREME's Tatoeba reports each direction against English on its own: with a pivot ("eng"), the
    # cross pairs are split into "xx_en" (xxx -> pivot, the headline) and "en_xx" (pivot -> xxx).
    pivot: str | None = None

    def summary(self) -> str:
        return f"{self.name} ({len(self.parts)} parts: {', '.join(self.parts)})"

    def text_languages(self) -> set[str]:
        return set().union(*(part.text_languages() for part in self.parts.values()))

    takes_query_subsets = False  # parallel sentences

    def all_queries(self) -> list[tuple[str, str]]:
        return [q for part in self.parts.values() for q in part.all_queries()]
