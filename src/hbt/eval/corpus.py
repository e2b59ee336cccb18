"""Search over a whole corpus for TREC-style benchmarks (MIRACL): monolingual top-k search per language,
the corpus streamed into fp16 shards on disk (:mod:`hbt.eval.sharded`) and searched shard by shard
(faiss, :mod:`hbt.eval.search`); under DDP each rank encodes and searches its share and the top-k lists
are merged. Returns results and per-query rows (nDCG and recall at the benchmark's cut-offs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hbt.distributed import rank_and_world
from hbt.errors import DataError
from hbt.eval.encoding import TextEncoding
from hbt.eval.metrics import trec_query_metrics
from hbt.eval.runs import RunWriter
from hbt.eval.search import FaissSearcher
from hbt.eval.sharded import TopK, encode_shards, search_shards, shard_directory_key
from hbt.eval.trec import TrecBenchmark
from hbt.models.encoder import Encoder
from hbt.results import DatasetResult, PairResult, SettingResult, mean_of

log = logging.getLogger(__name__)


@dataclass
class CorpusSearch:
    """Shards of ``shard_size`` documents, under ``shard_dir`` (a temporary directory there, removed
    afterwards) or, with the encoding's ``cache_dir``, kept there keyed by the encoder, the corpus files
    (paths, sizes, modification times) and the split, and reused; searched with ``searcher``."""

    encoding: TextEncoding
    searcher: FaissSearcher
    shard_size: int
    shard_dir: str | None = None
    runs: RunWriter | None = None  # set by the evaluator while rank zero writes run files
    run_depth: int = 0  # the run files' depth, on every rank (searches go at least that deep)

    def evaluate(
        self, encoder: Encoder, bench: TrecBenchmark, fingerprint: str = "", subsets: dict[str, set[str]] | None = None, name: str = ""
    ) -> tuple[DatasetResult, dict[str, DatasetResult], list[dict]]:
        """Queries without a positive judgement are skipped. Returns the results, those of each query
        subset (``{subset: query ids}``, averaged over their own queries) and the per-query rows."""
        pairs, skipped = {}, {}
        per_language: dict[str, list[tuple[str, dict]]] = {}
        rows: list[dict] = []
        depth = max(bench.ks.values())
        depth = max(depth, self.run_depth)  # the run files go as deep as asked; the metrics cut their own lists
        for lang, data in bench.languages.items():
            queries = [(qid, text) for qid, text in data.queries if any(g > 0 for g in data.qrels.get(qid, {}).values())]
            if not queries:
                skipped[f"{lang}-{lang}"] = "no query with a positive judgement"
                log.warning("%s: %s left out: no query with a positive judgement", bench.name, lang)
                continue
            q = self.encoding.encode(encoder, [t for _, t in queries], "query", lang, fingerprint)
            top, docs = self.search(encoder, data.corpus, q.float().numpy(), depth, lang, fingerprint)
            if docs == 0:
                skipped[f"{lang}-{lang}"] = "an empty corpus"
                log.warning("%s: %s left out: an empty corpus", bench.name, lang)
                continue
            per_query = [trec_query_metrics(ranked, data.qrels[qid], bench.ks) for (qid, _), ranked in zip(queries, top.ranked_ids())]
            if self.runs is not None:
                self.runs.corpus(name or bench.name, lang, [qid for qid, _ in queries], top, data.qrels)
            per_language[lang] = [(qid, m) for (qid, _), m in zip(queries, per_query)]
            rows.extend(
                {"dataset": bench.name, "setting": "mono", "pair": f"{lang}-{lang}", "query_id": qid, **m} for qid, m in per_language[lang]
            )
            pairs[f"{lang}-{lang}"] = PairResult(mean_of(per_query), len(queries))
            log.info("%s %s: %d queries searched over %d documents", bench.name, lang, len(queries), docs)
        if not pairs:
            raise DataError(bench.name, f"no language could be evaluated ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
        full = {"mono": SettingResult.of_pairs(pairs, corpus=bench.corpus, skipped=skipped)}
        parts = {}
        for subset, ids in (subsets or {}).items():
            sub_pairs, sub_skipped = {}, dict(skipped)
            for lang, measured in per_language.items():
                chosen = [m for qid, m in measured if qid in ids]
                if chosen:
                    sub_pairs[f"{lang}-{lang}"] = PairResult(mean_of(chosen), len(chosen))
                else:
                    sub_skipped[f"{lang}-{lang}"] = "no query of the subset with a positive judgement"
            if not sub_pairs:
                raise DataError(f"{bench.name}[{subset}]", "no query of the subset has a positive judgement in any language")
            parts[subset] = {"mono": SettingResult.of_pairs(sub_pairs, corpus=bench.corpus, skipped=sub_skipped)}
        return full, parts, rows

    def search(self, encoder: Encoder, corpus, queries, k: int, lang: str, fingerprint: str = ""):
        """This rank encodes its share of ``corpus`` into shards and searches them; the ranks' top-k lists
        are merged. Returns the merged :class:`~hbt.eval.sharded.TopK` and the corpus size."""
        rank, world = rank_and_world()
        progress = self.encoding.progress if rank == 0 else False

        def encode(texts: list[str], positions=None):
            return encoder.encode(texts, "passage", lang, **self.encoding.options(encoder, progress)).numpy()

        with contextlib.ExitStack() as stack:
            cache_dir = self.encoding.cache_dir
            if cache_dir is not None:  # kept and reused, keyed by the encoder, the corpus files and the split
                files = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in corpus.files]
                keep = sorted(corpus.keep) if corpus.keep is not None else None
                key = shard_directory_key(fingerprint, lang, files, keep, self.shard_size)
                directory = cache_dir / f"corpus-{key}-rank{rank}of{world}"
            else:  # removed afterwards
                if self.shard_dir:
                    Path(self.shard_dir).mkdir(parents=True, exist_ok=True)
                directory = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=self.shard_dir, prefix="hbt-shards-")))
            shards = encode_shards(corpus.docs(rank, world), encode, directory, self.shard_size)
            top = search_shards(self.searcher, queries, shards, k, progress)
            count = sum(len(shard) for shard in shards)
        if world > 1:
            import torch.distributed as dist

            gathered: list = [None] * world
            dist.all_gather_object(gathered, (top, count))
            top, count = TopK(len(queries), k), 0
            for other, n in gathered:
                top.merge(other)
                count += n
        return top, count
