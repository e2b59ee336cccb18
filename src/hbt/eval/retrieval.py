"""Mono / cross / multi evaluation of an encoder on retrieval benchmarks.

mono:  query language X against the pool of X            (one pair "X-X" per language)
cross: query language X against the pool of Y != X        (pairs "X-Y")
multi: query language X against the union of all pools    (key "X"; one relevant per language)
Per-pair metrics are averaged over queries; the macro view averages over pairs.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from hbt.eval.benchmark import BenchmarkGroup, RetrievalBenchmark
from hbt.eval.metrics import mean_metrics, query_metrics, relevant_ranks, trec_query_metrics
from hbt.eval.search import FaissSearcher
from hbt.eval.trec import TrecBenchmark
from hbt.distributed import rank_and_world
from hbt.models.encoder import Encoder

SETTINGS = ("mono", "cross", "multi")


class Evaluator:
    """Encodes each benchmark once and scores it.

    LAReQA-style and parallel benchmarks (pools of thousands) are ranked exactly over the full pool;
    TREC-style benchmarks (MIRACL) are searched top-k with ``searcher`` (faiss). With ``cache_dir``,
    embeddings are stored on disk keyed by the encoder's weights, settings and the texts, and reused.
    """

    def __init__(
        self,
        batch_size: int = 128,
        ks: tuple[int, ...] = (1, 10),
        settings: tuple[str, ...] = SETTINGS,
        progress: bool = False,
        searcher: FaissSearcher | None = None,
        cache_dir: str | None = None,
    ):
        from hbt.errors import ConfigError

        unknown = [s for s in settings if s not in SETTINGS]
        if unknown:
            raise ConfigError("evaluator.settings", f"unknown settings {unknown}; expected a subset of {list(SETTINGS)}")
        self.batch_size = batch_size
        self.ks = tuple(int(k) for k in ks)
        self.settings = tuple(settings)
        self.progress = progress
        self.searcher = searcher or FaissSearcher()
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def run(self, encoder: Encoder, benchmarks: dict) -> dict:
        fingerprint = encoder_fingerprint(encoder) if self.cache_dir else ""
        return {name: self.evaluate(encoder, bench, fingerprint) for name, bench in benchmarks.items()}

    def encode(self, encoder: Encoder, texts: list[str], kind: str, fingerprint: str = "") -> torch.Tensor:
        if self.cache_dir is None:
            return self._encode_sharded(encoder, texts, kind)
        digest = hashlib.blake2b(f"{fingerprint}|{kind}".encode(), digest_size=20)
        for text in texts:
            digest.update(text.encode())
            digest.update(b"\0")
        path = self.cache_dir / f"{digest.hexdigest()}.pt"
        if path.exists():
            return torch.load(path)
        embeddings = self._encode_sharded(encoder, texts, kind)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(embeddings, tmp)
        tmp.replace(path)
        return embeddings

    def _encode_sharded(self, encoder: Encoder, texts: list[str], kind: str) -> torch.Tensor:
        """Under torch.distributed every rank encodes every world-th text and the shards are gathered,
        so N devices encode a benchmark N times faster; a single process encodes everything."""
        rank, world = rank_and_world()
        if world == 1:
            return encoder.encode(texts, kind, self.batch_size, self.progress)
        import torch.distributed as dist

        local = encoder.encode(texts[rank::world], kind, self.batch_size, self.progress and rank == 0)
        shards: list = [None] * world
        dist.all_gather_object(shards, local)
        out = torch.empty((len(texts), shards[0].shape[1]) if len(texts) else (0, 0))
        for r, shard in enumerate(shards):
            out[r::world] = shard
        return out

    def embed(self, encoder: Encoder, bench: RetrievalBenchmark, fingerprint: str = "") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        queries = {lang: self.encode(encoder, [t for _, t in qs], "query", fingerprint) for lang, qs in bench.queries.items()}
        pools = {lang: self.encode(encoder, cs, "passage", fingerprint) for lang, cs in bench.candidates.items()}
        return queries, pools

    def evaluate(self, encoder: Encoder, bench, fingerprint: str = "") -> dict:
        if isinstance(bench, TrecBenchmark):
            return self.evaluate_trec(encoder, bench, fingerprint)
        if isinstance(bench, BenchmarkGroup):
            return self.evaluate_group(encoder, bench, fingerprint)
        return self.score(bench, *self.embed(encoder, bench, fingerprint))

    def evaluate_group(self, encoder: Encoder, group: BenchmarkGroup, fingerprint: str = "") -> dict:
        """Each part on its own; pair tables merged into one dataset and macro-averaged over all pairs."""
        merged: dict[str, dict] = {}
        for part_name, part in group.parts.items():
            for setting, block in self.evaluate(encoder, part, fingerprint).items():
                pairs = merged.setdefault(setting, {"pairs": {}})["pairs"]
                for key, metrics in block["pairs"].items():
                    if setting == "multi" and key in group.labels.get(part_name, {}):
                        key = f"{key}({part_name})"  # the English queries of each Tatoeba pair
                    pairs[key] = metrics
        for block in merged.values():
            block["macro"] = mean_metrics([{k: v for k, v in m.items() if k != "num_queries"} for m in block["pairs"].values()])
        return {setting: {"macro": block["macro"], "pairs": block["pairs"]} for setting, block in merged.items()}

    def evaluate_trec(self, encoder: Encoder, bench: TrecBenchmark, fingerprint: str = "") -> dict:
        """Monolingual top-k search per language; queries without a positive judgement are skipped."""
        pairs = {}
        depth = max(bench.ks.values())
        for lang, data in bench.languages.items():
            queries = [(qid, text) for qid, text in data.queries if any(g > 0 for g in data.qrels.get(qid, {}).values())]
            if not queries or not data.doc_ids:
                continue
            q = self.encode(encoder, [t for _, t in queries], "query", fingerprint)
            d = self.encode(encoder, data.doc_texts, "passage", fingerprint)
            _, ids = self.searcher.search(q.numpy(), d.numpy(), depth)
            per_query = [
                trec_query_metrics([data.doc_ids[i] for i in row if i >= 0], data.qrels[qid], bench.ks) for (qid, _), row in zip(queries, ids)
            ]
            pairs[f"{lang}-{lang}"] = {**mean_metrics(per_query), "num_queries": len(queries)}
        macro = mean_metrics([{k: v for k, v in m.items() if k != "num_queries"} for m in pairs.values()])
        return {"mono": {"macro": macro, "pairs": pairs, "corpus": bench.corpus}}

    def score(self, bench: RetrievalBenchmark, queries: dict[str, torch.Tensor], pools: dict[str, torch.Tensor]) -> dict:
        """Metrics from precomputed embeddings (unit vectors: inner product = cosine)."""
        langs = bench.languages
        results: dict[str, dict] = {}
        for setting in [s for s in self.settings if bench.settings is None or s in bench.settings]:
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


def encoder_fingerprint(encoder: Encoder) -> str:
    """A digest of the weights and input settings: cached embeddings are reused only for the same model."""
    tt = encoder.text_tokenizer
    digest = hashlib.blake2b(
        repr((encoder.pooling, tt.query_prefix, tt.passage_prefix, tt.max_query_length, tt.max_passage_length, len(tt.tokenizer))).encode(),
        digest_size=20,
    )
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


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
