"""Mono / cross / multi evaluation of an encoder on retrieval benchmarks.

mono:  query language X against the pool of X            (one pair "X-X" per language)
cross: query language X against the pool of Y != X        (pairs "X-Y")
multi: query language X against the union of all pools    (key "X"; one relevant per language)
Per-pair metrics are averaged over queries; the macro view averages over pairs.
"""
from __future__ import annotations

import torch

from hbt.eval.benchmark import RetrievalBenchmark
from hbt.eval.metrics import mean_metrics, query_metrics, relevant_ranks
from hbt.models.encoder import Encoder

SETTINGS = ("mono", "cross", "multi")


class Evaluator:
    def __init__(self, batch_size: int = 128, ks: tuple[int, ...] = (1, 10), settings: tuple[str, ...] = SETTINGS, progress: bool = False):
        from hbt.errors import ConfigError

        unknown = [s for s in settings if s not in SETTINGS]
        if unknown:
            raise ConfigError("evaluator.settings", f"unknown settings {unknown}; expected a subset of {list(SETTINGS)}")
        self.batch_size = batch_size
        self.ks = tuple(int(k) for k in ks)
        self.settings = tuple(settings)
        self.progress = progress

    def run(self, encoder: Encoder, benchmarks: dict[str, RetrievalBenchmark]) -> dict:
        return {name: self.evaluate(encoder, bench) for name, bench in benchmarks.items()}

    def embed(self, encoder: Encoder, bench: RetrievalBenchmark) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        queries = {lang: encoder.encode([t for _, t in qs], "query", self.batch_size, self.progress) for lang, qs in bench.queries.items()}
        pools = {lang: encoder.encode(cs, "passage", self.batch_size, self.progress) for lang, cs in bench.candidates.items()}
        return queries, pools

    def evaluate(self, encoder: Encoder, bench: RetrievalBenchmark) -> dict:
        return self.score(bench, *self.embed(encoder, bench))

    def score(self, bench: RetrievalBenchmark, queries: dict[str, torch.Tensor], pools: dict[str, torch.Tensor]) -> dict:
        """Metrics from precomputed embeddings (unit vectors: inner product = cosine)."""
        langs = bench.languages
        results: dict[str, dict] = {}
        for setting in self.settings:
            pairs: dict[str, dict[str, float]] = {}
            for x in langs:
                if setting == "multi":
                    pool = torch.cat([pools[y] for y in langs])
                    offsets = dict(zip(langs, torch.tensor([0] + [len(pools[y]) for y in langs]).cumsum(0).tolist()))
                    rel_of = lambda qid: [offsets[y] + c for y in langs for c in bench.relevant[y].get(qid, [])]  # noqa: E731
                    pairs[x] = self._pair(queries[x], bench.queries[x], pool, rel_of, with_rank_distance=True)
                    continue
                for y in langs:
                    if (setting == "mono") != (x == y):
                        continue
                    rel_of = lambda qid, y=y: bench.relevant[y].get(qid, [])  # noqa: E731
                    pairs[f"{x}-{y}"] = self._pair(queries[x], bench.queries[x], pools[y], rel_of, with_rank_distance=False)
            pairs = {key: value for key, value in pairs.items() if value}
            macro = mean_metrics([{k: v for k, v in m.items() if k != "num_queries"} for m in pairs.values()])
            results[setting] = {"macro": macro, "pairs": pairs}
        return results

    def _pair(self, q_emb, query_list, pool, rel_of, with_rank_distance: bool) -> dict[str, float]:
        rows, relevant = [], []
        for i, (qid, _) in enumerate(query_list):
            rel = rel_of(qid)
            if rel:
                rows.append(i)
                relevant.append(rel)
        if not rows:
            return {}
        scores = q_emb[torch.tensor(rows)] @ pool.T
        per_query = [query_metrics(r, self.ks, with_rank_distance) for r in relevant_ranks(scores, relevant)]
        return {**mean_metrics(per_query), "num_queries": len(rows)}


def flatten_macro(results: dict, prefix: str) -> dict[str, float]:
    """``{prefix}/{dataset}/{setting}/{metric}`` for every macro metric, for loggers."""
    return {
        f"{prefix}/{dataset}/{setting}/{metric}": value
        for dataset, by_setting in results.items()
        for setting, block in by_setting.items()
        for metric, value in block["macro"].items()
    }


def results_table(results: dict) -> str:
    """A plain-text table: one row per dataset and setting, one column per macro metric."""
    metrics = sorted({m for by_setting in results.values() for block in by_setting.values() for m in block["macro"]}, key=_metric_order)
    header = ["dataset", "setting", *metrics]
    rows = [header]
    for dataset, by_setting in results.items():
        for setting, block in by_setting.items():
            rows.append([dataset, setting, *(f"{block['macro'][m]:.4f}" if m in block["macro"] else "-" for m in metrics)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _metric_order(name: str) -> tuple:
    if name == "map":
        return (0, 0)
    if name.startswith("recall@"):
        return (1, int(name.split("@")[1]))
    return (2, name)
