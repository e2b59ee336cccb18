"""The evaluator: encodes each benchmark once and scores it, coordinating three parts that each return
their results and per-query rows: encoding with its caches (:mod:`hbt.eval.encoding`), exact ranking
over per-language pools (:mod:`hbt.eval.pools`: mono / cross / multi, rank distance) and corpus search
for TREC-style benchmarks (:mod:`hbt.eval.corpus`). Benchmarks are data (:mod:`hbt.eval.benchmark`,
:mod:`hbt.eval.trec`); which part evaluates which kind is the table in :meth:`Evaluator.evaluate_one`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from hbt.distributed import rank_and_world
from hbt.errors import ConfigError
from hbt.eval.benchmark import BenchmarkGroup, RetrievalBenchmark
from hbt.eval.corpus import CorpusSearch
from hbt.eval.encoding import TextEncoding, encoder_fingerprint
from hbt.eval.language_bias import LanguageBias
from hbt.eval.metrics import AT_K
from hbt.eval.pools import SETTINGS, PoolRanking, Rows, merge_group
from hbt.eval.runs import RunWriter
from hbt.eval.search import FaissSearcher
from hbt.eval.subsets import check_spec, subset_ids
from hbt.eval.trec import TrecBenchmark
from hbt.models.encoder import Encoder
from hbt.models.precision import EMBEDDING_DTYPES, encoding
from hbt.progress import check_progress
from hbt.results import DatasetResult, Results, metric_order

log = logging.getLogger(__name__)


class Evaluator:
    """Encodes each benchmark once and scores it.

    LAReQA-style and parallel benchmarks (pools of thousands) are ranked exactly over the full pool;
    TREC-style benchmarks (MIRACL) stream their corpus into fp16 shards of ``shard_size`` documents under
    ``shard_dir`` (a temporary directory there, removed afterwards) and search them top-k with ``searcher``
    (faiss) shard by shard (see :mod:`hbt.eval.sharded`). With ``cache_dir``, embeddings and corpus shards
    are stored there keyed by the encoder's weights, settings and the texts (the corpus files' paths,
    sizes and modification times), and reused.
    """

    def __init__(
        self,
        batch_size: int = 128,
        ks: tuple[int, ...] = (1, 10),
        settings: tuple[str, ...] = SETTINGS,
        progress: bool | str = "auto",
        searcher: FaissSearcher | None = None,
        cache_dir: str | None = None,
        score_block: int = 1 << 24,
        shard_size: int = 200_000,
        shard_dir: str | None = None,
        at_k: tuple[str, ...] = ("recall",),
        precision: str = "auto",
        max_tokens: int | str | None = "auto",
        embedding_dtype: str = "float32",
        compile: bool = False,
        run_files: bool = False,
        run_depth: int = 100,
        bias_ks: tuple[int, ...] = (10,),
        peer_weights: dict | None = None,
    ):
        unknown = [s for s in settings if s not in SETTINGS]
        if unknown:
            raise ConfigError("evaluator.settings", f"unknown settings {unknown}; expected a subset of {list(SETTINGS)}")
        if batch_size < 1:
            raise ConfigError("evaluator.batch_size", f"must be >= 1, got {batch_size}")
        encoding(precision, max_tokens, "cpu", "evaluator", compile)  # bad values stop here, before any model is loaded
        if embedding_dtype not in EMBEDDING_DTYPES:
            raise ConfigError("evaluator.embedding_dtype", f"expected one of {', '.join(EMBEDDING_DTYPES)}, got {embedding_dtype!r}")
        unknown_at_k = [m for m in at_k if m not in AT_K]
        if unknown_at_k or not at_k:
            raise ConfigError("evaluator.at_k", f"expected a non-empty subset of {list(AT_K)}, got {list(at_k)}")
        if shard_size < 1:
            raise ConfigError("evaluator.shard_size", f"must be >= 1, got {shard_size}")
        if not isinstance(run_files, bool):
            raise ConfigError("evaluator.run_files", f"expected true or false, got {run_files!r}")
        if isinstance(run_depth, bool) or not isinstance(run_depth, int) or run_depth < 1:
            raise ConfigError("evaluator.run_depth", f"must be an integer >= 1, got {run_depth!r}")
        self.run_files, self.run_depth = run_files, run_depth
        self.batch_size, self.precision, self.embedding_dtype = batch_size, precision, embedding_dtype
        self.settings = tuple(settings)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.encoding = TextEncoding(
            batch_size, max_tokens, precision, embedding_dtype, compile, check_progress(progress, "evaluator.progress"), self.cache_dir
        )
        bias = LanguageBias(bias_ks, peer_weights)  # checked there; weights None: the defaults
        self.ranking = PoolRanking(tuple(int(k) for k in ks), tuple(at_k), self.settings, score_block, bias)
        self.corpus = CorpusSearch(self.encoding, searcher or FaissSearcher(), shard_size, shard_dir)
        # Per-query values of the last run() (query_table), set when it ends.
        self.query_rows: Rows | None = None
        self.runs: RunWriter | None = None  # inside run(), with run_files

    def run(self, encoder: Encoder, benchmarks: dict, subsets: dict | None = None, run_dir: Path | None = None) -> Results:
        """Results per benchmark name; ``subsets`` (``{name: {subset: spec}}``, see
        :mod:`hbt.eval.subsets`) adds ``<name>[<subset>]`` entries computed from the same embeddings. The
        per-query values of the run are :meth:`query_table`'s. With ``run_files`` and a ``run_dir``, rank
        zero writes each benchmark's TREC run files and qrels there (:mod:`hbt.eval.runs`)."""
        wanted = self.run_files and run_dir is not None
        write = wanted and rank_and_world()[0] == 0
        with RunWriter(run_dir, self.run_depth, self.ranking.score_block) if write else contextlib.nullcontext() as runs:
            self.runs = self.corpus.runs = runs
            # every rank searches as deep as the run files go: under DDP rank 0 merges the ranks' lists
            self.corpus.run_depth = self.run_depth if wanted else 0
            try:
                results = self._run(encoder, benchmarks, subsets)
            finally:
                self.runs = self.corpus.runs = None
                self.corpus.run_depth = 0
        if write:
            log.info("run files written to %s", run_dir)
        return results

    def _run(self, encoder: Encoder, benchmarks: dict, subsets: dict | None) -> Results:
        for bench in benchmarks.values():
            encoder.text_tokenizer.check_languages(bench.text_languages())
        subsets = {name: check_spec(name, spec) for name, spec in (subsets or {}).items() if spec}
        for name in subsets:
            if not benchmarks[name].takes_query_subsets:
                raise ConfigError(
                    f"eval.{name}.query_ids",
                    "query subsets are for question-passage benchmarks (LAReQA-style, MIRACL), not parallel sentences",
                )
        fingerprint = encoder_fingerprint(encoder) if self.cache_dir else ""
        options = self.encode_options(encoder)
        log.info(
            "encoding in %s (evaluator.precision=%s)%s, batches of at most %d texts and %s tokens, embeddings as %s",
            options["precision"],
            self.precision,
            ", compiled (evaluator.compile)" if options["compile"] else "",
            self.batch_size,
            options["max_tokens"] or "any number of",
            self.embedding_dtype,
        )
        results: Results = {}
        rows: Rows = []
        self.encoding.token_ids.open(encoder)  # kept token ids: only inside a run, where the fingerprint is checked
        try:
            for name, bench in benchmarks.items():
                everything = bench.all_queries() if name in subsets else []
                ids = {subset: subset_ids(name, subset, value, everything) for subset, value in subsets.get(name, {}).items()}
                results[name], parts, bench_rows = self.evaluate_one(encoder, bench, fingerprint, ids, name)
                results.update({f"{name}[{subset}]": part for subset, part in parts.items()})
                rows += [dict(row, dataset=name) for row in bench_rows]  # named as in results.json (the config key)
        finally:
            self.encoding.token_ids.close()
        self.query_rows = rows
        return results

    def evaluate_one(
        self, encoder: Encoder, bench, fingerprint: str = "", subset_ids: dict[str, set[str]] | None = None, name: str | None = None
    ) -> tuple[DatasetResult, dict[str, DatasetResult], Rows]:
        """One benchmark of any kind: its results, those of each query subset, and its per-query rows
        (``name``: what results.json and the run files call it; the benchmark's own name by default)."""
        subset_ids = subset_ids or {}
        name = name or bench.name
        if isinstance(bench, TrecBenchmark):
            return self.corpus.evaluate(encoder, bench, fingerprint, subset_ids, name)
        if isinstance(bench, BenchmarkGroup):
            parts = {}
            for part_name, part in bench.parts.items():
                part_results, _, part_rows = self.evaluate_one(encoder, part, fingerprint, name=f"{name}.{part_name}")
                parts[part_name] = (part_results, part_rows)
            results, rows = merge_group(bench, parts)
            return results, {}, rows
        if isinstance(bench, RetrievalBenchmark):
            queries, pools = self.embed(encoder, bench, fingerprint)
            full, rows = self.ranking.score(bench, queries, pools)
            if self.runs is not None:
                self.runs.pools(name, bench, queries, pools, [s for s in self.settings if bench.settings is None or s in bench.settings])
            return full, self.ranking.score_subsets(bench, queries, pools, subset_ids), rows
        raise TypeError(f"not a benchmark hbt evaluates: {type(bench).__name__}")

    def evaluate(self, encoder: Encoder, bench, fingerprint: str = "") -> DatasetResult:
        """One benchmark of any kind, its results alone."""
        return self.evaluate_one(encoder, bench, fingerprint)[0]

    def query_table(self):
        """The per-query values of the last :meth:`run` as an Arrow table: one row per query and language
        pair (``dataset``, ``setting``, ``pair``, ``query_id``), its metrics (the same that results.json
        averages: AP, the @k metrics, rank distance in the multi setting; nDCG and recall for TREC-style
        benchmarks), ``ranks``, the 1-based rank of each relevant candidate (LAReQA-style and parallel
        benchmarks) and, in the multi setting, the language-bias values (:mod:`hbt.eval.language_bias`)
        with ``last_language``, the language of the relevant candidate ranked last. Query subsets are
        rows of the full set, so they add none."""
        import pyarrow as pa

        rows = self.query_rows or []
        keys = ["dataset", "setting", "pair", "query_id"]
        labels = ["last_language"] if any("last_language" in row for row in rows) else []
        metrics = sorted({k for row in rows for k in row if k not in keys and k not in labels and k != "ranks"}, key=metric_order)
        columns = {k: pa.array([row[k] for row in rows], pa.string()) for k in keys}
        columns.update({k: pa.array([row.get(k) for row in rows], pa.string()) for k in labels})
        columns.update({m: pa.array([row.get(m) for row in rows], pa.float64()) for m in metrics})
        columns["ranks"] = pa.array([row.get("ranks") for row in rows], pa.list_(pa.int64()))
        return pa.table(columns)

    # -- the parts' entry points, for callers that drive one step themselves -------------------------
    def encode(
        self, encoder: Encoder, texts: list[str], kind: str, lang: str, fingerprint: str = "", progress: bool | str | None = None
    ) -> torch.Tensor:
        """Embeddings of texts of one language (:meth:`TextEncoding.encode`)."""
        return self.encoding.encode(encoder, texts, kind, lang, fingerprint, progress)

    def encode_options(self, encoder: Encoder, progress: bool | None = None) -> dict:
        """How :meth:`Encoder.encode` runs here (:meth:`TextEncoding.options`)."""
        return self.encoding.options(encoder, progress)

    def embed(self, encoder: Encoder, bench: RetrievalBenchmark, fingerprint: str = ""):
        """A benchmark's query embeddings and candidate pools (:meth:`TextEncoding.embed`)."""
        return self.encoding.embed(encoder, bench, fingerprint)

    def score(self, bench: RetrievalBenchmark, queries: dict[str, torch.Tensor], pools: dict[str, torch.Tensor]) -> DatasetResult:
        """Metrics from precomputed embeddings (:meth:`PoolRanking.score`)."""
        return self.ranking.score(bench, queries, pools, record=False)[0]
