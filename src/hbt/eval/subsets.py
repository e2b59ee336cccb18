"""Query subsets (``eval.<name>.query_ids``): a benchmark's metrics over some of its queries, reported as
their own dataset ``<name>[<subset>]`` beside the full set, from the same embeddings (nothing is encoded
twice).

``query_ids`` maps a subset name to its queries, given as a list of query ids, a file of ids (one per
line), or ``re:<pattern>``: the queries whose text matches the regular expression (in any language of a
parallel benchmark: a parallel query id is in the subset when any of its translations matches). A subset
that matches no query, or names ids the benchmark does not have, is an error, not an empty row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from hbt.errors import ConfigError, DataError


def subset_ids(name: str, subset: str, spec, queries: Iterable[tuple[str, str]]) -> set[str]:
    """The query ids of one subset; ``queries`` are all ``(qid, text)`` of the benchmark."""
    queries = list(queries)
    known = {qid for qid, _ in queries}
    key = f"eval.{name}.query_ids.{subset}"
    if isinstance(spec, str) and spec.startswith("re:"):
        try:
            pattern = re.compile(spec[3:])
        except re.error as err:
            raise ConfigError(key, f"bad regular expression ({err})") from None
        ids = {qid for qid, text in queries if pattern.search(text)}
    elif isinstance(spec, str):
        path = Path(spec)
        if not path.is_file():
            raise DataError(str(path), "file not found")
        ids = {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
        unknown = sorted(ids - known)
        if unknown:
            raise DataError(str(path), f"{len(unknown)} ids are not queries of {name}, e.g. {unknown[0]!r}")
    elif isinstance(spec, Iterable):
        ids = {str(qid) for qid in spec}
        unknown = sorted(ids - known)
        if unknown:
            raise ConfigError(key, f"{len(unknown)} ids are not queries of {name}, e.g. {unknown[0]!r}")
    else:
        raise ConfigError(key, "expected a list of query ids, a file of ids, or 're:<pattern>'")
    if not ids:
        raise ConfigError(key, f"matches no query of {name}")
    return ids


def check_spec(name: str, spec) -> Mapping:
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"eval.{name}.query_ids", "expected {subset name: ids list | ids file | 're:<pattern>'}")
    return spec


def instantiate_benchmarks(specs: Mapping | None) -> tuple[dict, dict]:
    """Benchmarks from their configs (``eval.<name>``), and the query subsets of each: ``query_ids`` is
    hbt's key, not the loader's, so it is taken out before the loader is called."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    benchmarks, subsets = {}, {}
    for name, spec in (specs or {}).items():
        spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
        query_ids = spec.pop("query_ids", None)
        benchmarks[name] = instantiate(spec, _convert_="all")
        if query_ids:
            subsets[name] = query_ids
    return benchmarks, subsets
