"""The built-in corpus's held-out split as a retrieval benchmark (``eval=toy``, the default run's)."""

from __future__ import annotations

from hbt.data.toy import toy_items
from hbt.eval.benchmark import RetrievalBenchmark, benchmark_from_items


def toy_benchmark(split: str, languages: list[str], seed: int = 0, fractions: tuple[float, float] = (0.7, 0.1)) -> RetrievalBenchmark:
    """Each question retrieves its item's passage."""
    return benchmark_from_items(f"toy-{split}", toy_items(split, languages, seed, fractions), languages)
