"""Evaluation results: typed inside hbt, the same ``results.json`` outside.

The evaluator builds them, the tasks write them, the callback and the trackers log them, the report and
the notebooks read them back. ``results.json`` is ``{dataset: {setting: block}}`` with each block::

    {"macro": {metric: value},                                  # the mean over the pairs
     "pairs": {"<q>-<c>" or "<q>": {metric: value, "num_queries": n}},
     "corpus": "full" | "pooled",                               # TREC-style benchmarks: what was searched
     "skipped": {pair: reason},                                 # pairs left out, and why
     "not_applicable": reason}                                  # a setting asked for that the data lack

(``corpus``, ``skipped`` and ``not_applicable`` only where they apply, in that order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hbt.errors import DataError


@dataclass
class PairResult:
    """One language pair's metrics, averaged over its ``num_queries`` queries."""

    metrics: dict[str, float]
    num_queries: int

    def to_json(self) -> dict:
        return {**self.metrics, "num_queries": self.num_queries}

    @classmethod
    def from_json(cls, data: dict) -> PairResult:
        return cls({k: v for k, v in data.items() if k != "num_queries"}, int(data.get("num_queries", 0)))


@dataclass
class SettingResult:
    """One setting (mono, cross, multi; Tatoeba's xx_en, en_xx) of one dataset."""

    macro: dict[str, float]
    pairs: dict[str, PairResult]
    corpus: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    not_applicable: str | None = None

    @classmethod
    def of_pairs(cls, pairs: dict[str, PairResult], **extra) -> SettingResult:
        """The macro view: every metric averaged over the pairs."""
        return cls(mean_of([pair.metrics for pair in pairs.values()]), pairs, **extra)

    @classmethod
    def inapplicable(cls, reason: str) -> SettingResult:
        return cls({}, {}, not_applicable=reason)

    def to_json(self) -> dict:
        block: dict = {"macro": self.macro, "pairs": {key: pair.to_json() for key, pair in self.pairs.items()}}
        if self.corpus is not None:
            block["corpus"] = self.corpus
        if self.skipped:
            block["skipped"] = self.skipped
        if self.not_applicable is not None:
            block["not_applicable"] = self.not_applicable
        return block

    @classmethod
    def from_json(cls, data: dict) -> SettingResult:
        return cls(
            dict(data.get("macro", {})),
            {key: PairResult.from_json(pair) for key, pair in data.get("pairs", {}).items()},
            data.get("corpus"),
            dict(data.get("skipped", {})),
            data.get("not_applicable"),
        )


DatasetResult = dict[str, SettingResult]  # by setting
Results = dict[str, DatasetResult]  # by dataset, named as in the eval config (subsets: ``name[subset]``)


def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each metric averaged over rows (queries, or pairs for the macro view), in the first row's order."""
    if not rows:
        return {}
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}


def to_json(results: Results) -> dict:
    return {dataset: {setting: block.to_json() for setting, block in by_setting.items()} for dataset, by_setting in results.items()}


def from_json(data: dict) -> Results:
    return {
        dataset: {setting: SettingResult.from_json(block) for setting, block in by_setting.items()} for dataset, by_setting in data.items()
    }


def dumps(results: Results) -> str:
    """The text of results.json."""
    return json.dumps(to_json(results), indent=2, sort_keys=False)


def read_results(path: str | Path) -> Results:
    """A results.json, typed; a file that is no JSON is one line naming ``file:line``."""
    path = Path(path)
    try:
        return from_json(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}", f"invalid JSON: {err.msg}") from None


def flatten_macro(results: Results, prefix: str) -> dict[str, float]:
    """``{prefix}/{dataset}/{setting}/{metric}`` for every macro metric, for loggers and sweepers."""
    return {
        f"{prefix}/{dataset}/{setting}/{metric}": value
        for dataset, by_setting in results.items()
        for setting, block in by_setting.items()
        for metric, value in block.macro.items()
    }


def results_table(results: Results) -> str:
    """A plain-text table: one row per dataset and setting, one column per macro metric of :func:`table_metrics`."""
    metrics = table_metrics(results)
    header = ["dataset", "setting", *metrics]
    rows = [header]
    for dataset, by_setting in results.items():
        for setting, block in by_setting.items():
            label = f"{dataset} [{block.corpus} corpus]" if block.corpus is not None else dataset  # which corpus was scored
            rows.append([label, setting, *(f"{block.macro[m]:.4f}" if m in block.macro else "-" for m in metrics)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_metrics(results: Results) -> list[str]:
    """The macro metrics a results table shows, in :func:`metric_order`: all but each language's share of
    ``last_language:<Y>``, which stays in results.json and the report (a column per language is too wide)."""
    names = {m for by_setting in results.values() for block in by_setting.values() for m in block.macro}
    return sorted((m for m in names if not m.startswith("last_language:")), key=metric_order)


def metric_order(name: str) -> tuple:
    """MAP first, then recall@k by k, then the rest by name."""
    if name == "map":
        return (0, 0)
    if name.startswith("recall@"):
        return (1, int(name.split("@")[1]))
    return (2, name)
