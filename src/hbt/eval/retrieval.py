"""Mono / cross / multi evaluation of an encoder on retrieval benchmarks.

mono:  query language X against the pool of X            (one pair "X-X" per language)
cross: query language X against the pool of Y != X        (pairs "X-Y")
multi: query language X against the union of all pools    (key "X"; one relevant per language)
Per-pair metrics are averaged over queries; the macro view averages over pairs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from hbt.distributed import rank_and_world
from hbt.errors import DataError
from hbt.eval.benchmark import BenchmarkGroup, RetrievalBenchmark
from hbt.eval.metrics import per_query_metrics, pool_ranks, trec_query_metrics
from hbt.eval.search import FaissSearcher
from hbt.eval.trec import TrecBenchmark
from hbt.models.encoder import Encoder
from hbt.progress import check_progress
from hbt.progress import progress as show_progress
from hbt.results import DatasetResult, PairResult, Results, SettingResult, mean_of, metric_order

SETTINGS = ("mono", "cross", "multi")
NOT_APPLICABLE = {"mono": "parallel sentences: in the pool of the query's language its only translation is the query itself"}
log = logging.getLogger(__name__)
# Token ids kept across runs (:meth:`Evaluator.token_ids`), at most this many tokens in all (int32: 128 MiB).
TOKEN_CACHE_TOKENS = 1 << 25


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
    ):
        from hbt.errors import ConfigError
        from hbt.hardware import EMBEDDING_DTYPES, encoding

        unknown = [s for s in settings if s not in SETTINGS]
        if unknown:
            raise ConfigError("evaluator.settings", f"unknown settings {unknown}; expected a subset of {list(SETTINGS)}")
        if batch_size < 1:
            raise ConfigError("evaluator.batch_size", f"must be >= 1, got {batch_size}")
        encoding(precision, max_tokens, "cpu", "evaluator", compile)  # bad values stop here, before any model is loaded
        if embedding_dtype not in EMBEDDING_DTYPES:
            raise ConfigError("evaluator.embedding_dtype", f"expected one of {', '.join(EMBEDDING_DTYPES)}, got {embedding_dtype!r}")
        self.batch_size, self.max_tokens, self.precision, self.embedding_dtype = batch_size, max_tokens, precision, embedding_dtype
        self.compile = compile
        self.ks = tuple(int(k) for k in ks)
        from hbt.eval.metrics import AT_K

        unknown_at_k = [m for m in at_k if m not in AT_K]
        if unknown_at_k or not at_k:
            raise ConfigError("evaluator.at_k", f"expected a non-empty subset of {list(AT_K)}, got {list(at_k)}")
        self.at_k = tuple(at_k)
        self.settings = tuple(settings)
        self.progress = check_progress(progress, "evaluator.progress")
        self.searcher = searcher or FaissSearcher()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.score_block = score_block  # query x candidate scores held at once while ranking
        if shard_size < 1:
            raise ConfigError("evaluator.shard_size", f"must be >= 1, got {shard_size}")
        self.shard_size = shard_size
        self.shard_dir = shard_dir
        # Per-query values of the last run() (see query_rows), or None outside run().
        self.query_rows: list[dict] | None = None
        # Token ids of the texts encoded (token_ids): the training callback evaluates the same texts after
        # every few steps; the weights change, the token ids do not. Valid for one tokenizer fingerprint.
        self._token_ids: dict[bytes, list] = {}
        self._token_count = 0
        self._tokenizer_key: str | None = None
        self._tokens_active = False

    def run(self, encoder: Encoder, benchmarks: dict, subsets: dict | None = None) -> Results:
        """Results per benchmark name; ``subsets`` (``{name: {subset: spec}}``, see
        :mod:`hbt.eval.subsets`) adds ``<name>[<subset>]`` entries computed from the same embeddings."""
        from hbt.errors import ConfigError
        from hbt.eval.subsets import check_spec, subset_ids

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
        tokenizer_key = encoder.text_tokenizer.fingerprint()  # what decides the token ids (~50 ms for mE5's)
        if tokenizer_key != self._tokenizer_key:
            self._token_ids, self._token_count, self._tokenizer_key = {}, 0, tokenizer_key
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
        self.query_rows = []
        self._tokens_active = True  # only inside run(), where the fingerprint above holds
        try:
            for name, bench in benchmarks.items():
                start = len(self.query_rows)
                everything = bench.all_queries() if name in subsets else []
                ids = {subset: subset_ids(name, subset, value, everything) for subset, value in subsets.get(name, {}).items()}
                results[name], parts = bench.evaluate_with(self, encoder, fingerprint, ids)
                results.update({f"{name}[{subset}]": part for subset, part in parts.items()})
                for row in self.query_rows[start:]:  # named as in results.json (the config key)
                    row["dataset"] = name
        finally:
            self._tokens_active = False
        return results

    def token_ids(self, encoder: Encoder, texts: list[str], kind: str, lang: str) -> list | None:
        """The texts' token ids (:meth:`Encoder.tokenize_compact`), kept across runs of this evaluator
        while the tokenizer's fingerprint is the same, up to :data:`TOKEN_CACHE_TOKENS` tokens in all; None
        outside :meth:`run` (the encoder then tokenizes). On a GPU, tokenizing is a large part of a
        small model's evaluation (docs/benchmarks.md), and the training callback repeats it every time."""
        if not self._tokens_active:
            return None
        key = texts_digest(f"{kind}|{lang}|{len(texts)}", texts).digest()
        ids = self._token_ids.get(key)
        if ids is None:
            ids = encoder.tokenize_compact(texts, kind, lang)
            count = sum(len(row) for row in ids)
            if self._token_count + count <= TOKEN_CACHE_TOKENS:
                self._token_ids[key] = ids
                self._token_count += count
        return ids

    def query_table(self):
        """The per-query values of the last :meth:`run` as an Arrow table: one row per query and language
        pair (``dataset``, ``setting``, ``pair``, ``query_id``), its metrics (the same that results.json
        averages: AP, the @k metrics, rank distance in the multi setting; nDCG and recall for TREC-style
        benchmarks) and ``ranks``, the 1-based rank of each relevant candidate (LAReQA-style and parallel
        benchmarks). Query subsets are rows of the full set, so they add none."""
        import pyarrow as pa

        rows = self.query_rows or []
        keys = ["dataset", "setting", "pair", "query_id"]
        metrics = sorted({k for row in rows for k in row if k not in keys and k != "ranks"}, key=metric_order)
        columns = {k: pa.array([row[k] for row in rows], pa.string()) for k in keys}
        columns.update({m: pa.array([row.get(m) for row in rows], pa.float64()) for m in metrics})
        columns["ranks"] = pa.array([row.get("ranks") for row in rows], pa.list_(pa.int64()))
        return pa.table(columns)

    def evaluate_pools(
        self, encoder: Encoder, bench: RetrievalBenchmark, fingerprint: str = "", subset_ids: dict[str, set[str]] | None = None
    ) -> tuple[DatasetResult, dict[str, DatasetResult]]:
        """A benchmark of per-language pools (LAReQA-style, parallel text), ranked exactly; each query
        subset (``{subset: query ids}``) scored from the same embeddings against every pool."""
        queries, pools = self.embed(encoder, bench, fingerprint)
        full = self.score(bench, queries, pools)
        parts = {}
        for subset, ids in (subset_ids or {}).items():
            keep = {lang: [i for i, (qid, _) in enumerate(qs) if qid in ids] for lang, qs in bench.queries.items()}
            sub = RetrievalBenchmark(
                f"{bench.name}[{subset}]",
                {lang: [bench.queries[lang][i] for i in rows] for lang, rows in keep.items()},  # every pool stays
                bench.candidates,
                bench.relevant,
                bench.settings,
                bench.queries_are_candidates,
                bench.candidate_kind,
            )
            parts[subset] = self.score(
                sub, {lang: queries[lang][torch.tensor(rows, dtype=torch.long)] for lang, rows in keep.items()}, pools, record=False
            )
        return full, parts

    def encode(
        self, encoder: Encoder, texts: list[str], kind: str, lang: str, fingerprint: str = "", progress: bool | str | None = None
    ) -> torch.Tensor:
        """Embeddings of texts of one language (language-coded tokenizers tag them with it); ``progress``
        overrides ``evaluator.progress`` for this call."""
        if self.cache_dir is None:
            return self._encode_sharded(encoder, texts, kind, lang, progress)
        options = self.encode_options(encoder)
        compiled = "|compiled" if options["compile"] else ""  # other kernels: not bit-equal to eager's
        digest = texts_digest(f"{fingerprint}|{kind}|{lang}|{options['precision']}|{options['dtype']}{compiled}", texts)
        path = self.cache_dir / f"{digest.hexdigest()}.pt"
        if path.exists():
            return torch.load(path)
        embeddings = self._encode_sharded(encoder, texts, kind, lang, progress)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(embeddings, tmp)
        tmp.replace(path)
        return embeddings

    def encode_options(self, encoder: Encoder, progress: bool | None = None) -> dict:
        """How :meth:`Encoder.encode` runs: batches, token budget, precision resolved for the encoder's
        device (``auto``: bf16 where the hardware has it; bf16-mixed under FSDP, :meth:`Encoder.runs_as`),
        and the dtype embeddings are kept in."""
        from hbt.hardware import EMBEDDING_DTYPES, encoding

        resolved = encoding(self.precision, self.max_tokens, next(encoder.parameters()).device, "evaluator", self.compile)
        return {
            "batch_size": self.batch_size,
            **resolved,
            "precision": encoder.runs_as(resolved["precision"]),
            "dtype": EMBEDDING_DTYPES[self.embedding_dtype],
            "progress": self.progress if progress is None else progress,
        }

    def _encode_sharded(self, encoder: Encoder, texts: list[str], kind: str, lang: str, progress=None) -> torch.Tensor:
        """Under torch.distributed every rank encodes every world-th text and the shards are gathered,
        so N devices encode a benchmark N times faster; a single process encodes everything. Only rank
        zero shows progress."""
        rank, world = rank_and_world()
        shown = (self.progress if progress is None else progress) if rank == 0 else False
        mine = texts if world == 1 else texts[rank::world]
        local = encoder.encode(mine, kind, lang, ids=self.token_ids(encoder, mine, kind, lang), **self.encode_options(encoder, shown))
        if world == 1:
            return local
        import torch.distributed as dist

        shards: list = [None] * world
        dist.all_gather_object(shards, local)
        out = torch.empty((len(texts), shards[0].shape[1]) if len(texts) else (0, 0), dtype=shards[0].dtype)
        for r, shard in enumerate(shards):
            out[r::world] = shard
        return out

    def embed(
        self, encoder: Encoder, bench: RetrievalBenchmark, fingerprint: str = ""
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        query_texts = {lang: [t for _, t in qs] for lang, qs in bench.queries.items()}
        # Symmetric parallel text: where the candidates are the queries, encoded the same way, reuse them.
        reused = {lang for lang, texts in bench.candidates.items() if bench.candidate_kind == "query" and texts == query_texts.get(lang)}
        jobs = [("query", lang, texts) for lang, texts in query_texts.items()]
        jobs += [(bench.candidate_kind, lang, texts) for lang, texts in bench.candidates.items() if lang not in reused]
        # One progress display over the whole benchmark (its languages' encodes are seconds to minutes each).
        rank, _ = rank_and_world()
        shown = show_progress(
            jobs,
            sum(len(job[2]) for job in jobs),
            f"encode {bench.name}",
            self.progress if rank == 0 else False,
            weight=lambda job: len(job[2]),
        )
        done = {(kind, lang): self.encode(encoder, texts, kind, lang, fingerprint, progress=False) for kind, lang, texts in shown}
        queries = {lang: done[("query", lang)] for lang in query_texts}
        pools = {lang: queries[lang] if lang in reused else done[(bench.candidate_kind, lang)] for lang in bench.candidates}
        return queries, pools

    def evaluate(self, encoder: Encoder, bench, fingerprint: str = "") -> DatasetResult:
        """One benchmark of any kind (it picks the method for its shape: ``evaluate_with``)."""
        return bench.evaluate_with(self, encoder, fingerprint, {})[0]

    def evaluate_group(self, encoder: Encoder, group: BenchmarkGroup, fingerprint: str = "") -> DatasetResult:
        """Each part on its own; pair tables merged into one dataset and macro-averaged over all pairs.
        With a pivot (Tatoeba's English), the cross pairs become two settings, one per direction."""
        merged: dict[str, dict] = {}
        if group.pivot:
            merged = {"xx_en": {"pairs": {}, "skipped": {}}, "en_xx": {"pairs": {}, "skipped": {}}}

        def target(setting: str, key: str) -> str:
            if setting == "cross" and group.pivot:
                return "en_xx" if key.startswith(f"{group.pivot}-") else "xx_en"
            return setting

        for part_name, part in group.parts.items():
            start = len(self.query_rows) if self.query_rows is not None else 0
            part_results = self.evaluate(encoder, part, fingerprint)
            for row in (self.query_rows or [])[start:]:  # the pair keys the merged results use
                row["setting"] = target(row["setting"], row["pair"])
                if row["setting"] == "multi" and row["pair"] in group.labels.get(part_name, {}):
                    row["pair"] = f"{row['pair']}({part_name})"
            for setting, block in part_results.items():
                if block.not_applicable is not None:
                    merged.setdefault(setting, {"pairs": {}, "skipped": {}, "not_applicable": block.not_applicable})
                    continue
                for key, pair in [*block.pairs.items(), *block.skipped.items()]:
                    into = merged.setdefault(target(setting, key), {"pairs": {}, "skipped": {}})
                    if setting == "multi" and key in group.labels.get(part_name, {}):
                        key = f"{key}({part_name})"  # the English queries of each Tatoeba pair
                    into["pairs" if isinstance(pair, PairResult) else "skipped"][key] = pair
        return {
            setting: SettingResult.of_pairs(block["pairs"], skipped=block["skipped"], not_applicable=block.get("not_applicable"))
            for setting, block in merged.items()
            if block["pairs"] or "not_applicable" in block
        }

    def evaluate_trec(
        self, encoder: Encoder, bench: TrecBenchmark, fingerprint: str = "", subsets: dict[str, set[str]] | None = None
    ) -> tuple[DatasetResult, dict[str, DatasetResult]]:
        """Monolingual top-k search per language over the whole corpus, streamed into fp16 shards;
        queries without a positive judgement are skipped. Returns the results and those of each query
        subset (``{subset: query ids}``), the subsets averaged over their own queries."""
        pairs, skipped = {}, {}
        per_language: dict[str, list[tuple[str, dict]]] = {}
        depth = max(bench.ks.values())
        for lang, data in bench.languages.items():
            queries = [(qid, text) for qid, text in data.queries if any(g > 0 for g in data.qrels.get(qid, {}).values())]
            if not queries:
                skipped[f"{lang}-{lang}"] = "no query with a positive judgement"
                log.warning("%s: %s left out: no query with a positive judgement", bench.name, lang)
                continue
            q = self.encode(encoder, [t for _, t in queries], "query", lang, fingerprint)
            top, docs = self.search_corpus(encoder, data.corpus, q.float().numpy(), depth, lang, fingerprint)
            if docs == 0:
                skipped[f"{lang}-{lang}"] = "an empty corpus"
                log.warning("%s: %s left out: an empty corpus", bench.name, lang)
                continue
            per_query = [trec_query_metrics(ranked, data.qrels[qid], bench.ks) for (qid, _), ranked in zip(queries, top.ranked_ids())]
            per_language[lang] = [(qid, m) for (qid, _), m in zip(queries, per_query)]
            if self.query_rows is not None:
                self.query_rows.extend(
                    {"dataset": bench.name, "setting": "mono", "pair": f"{lang}-{lang}", "query_id": qid, **m}
                    for qid, m in per_language[lang]
                )
            pairs[f"{lang}-{lang}"] = PairResult(mean_of(per_query), len(queries))
            log.info("%s %s: %d queries searched over %d documents", bench.name, lang, len(queries), docs)
        if not pairs:
            raise DataError(bench.name, f"no language could be evaluated ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
        full = {"mono": SettingResult.of_pairs(pairs, corpus=bench.corpus, skipped=skipped)}
        parts = {}
        for subset, ids in (subsets or {}).items():
            sub_pairs, sub_skipped = {}, dict(skipped)
            for lang, rows in per_language.items():
                chosen = [m for qid, m in rows if qid in ids]
                if chosen:
                    sub_pairs[f"{lang}-{lang}"] = PairResult(mean_of(chosen), len(chosen))
                else:
                    sub_skipped[f"{lang}-{lang}"] = "no query of the subset with a positive judgement"
            if not sub_pairs:
                raise DataError(f"{bench.name}[{subset}]", "no query of the subset has a positive judgement in any language")
            parts[subset] = {"mono": SettingResult.of_pairs(sub_pairs, corpus=bench.corpus, skipped=sub_skipped)}
        return full, parts

    def search_corpus(self, encoder: Encoder, corpus, queries, k: int, lang: str, fingerprint: str = ""):
        """This rank encodes its share of ``corpus`` into shards and searches them; the ranks' top-k lists
        are merged. Returns the merged :class:`~hbt.eval.sharded.TopK` and the corpus size."""
        import contextlib
        import tempfile

        from hbt.eval.sharded import TopK, encode_shards, search_shards, shard_directory_key

        rank, world = rank_and_world()

        def encode(texts: list[str], positions=None):
            return encoder.encode(texts, "passage", lang, **self.encode_options(encoder, self.progress if rank == 0 else False)).numpy()

        with contextlib.ExitStack() as stack:
            if self.cache_dir is not None:  # kept and reused, keyed by the encoder, the corpus files and the split
                files = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in corpus.files]
                keep = sorted(corpus.keep) if corpus.keep is not None else None
                key = shard_directory_key(fingerprint, lang, files, keep, self.shard_size)
                directory = self.cache_dir / f"corpus-{key}-rank{rank}of{world}"
            else:  # removed afterwards
                if self.shard_dir:
                    Path(self.shard_dir).mkdir(parents=True, exist_ok=True)
                directory = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=self.shard_dir, prefix="hbt-shards-")))
            shards = encode_shards(corpus.docs(rank, world), encode, directory, self.shard_size)
            top = search_shards(self.searcher, queries, shards, k, self.progress if rank == 0 else False)
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

    def score(
        self, bench: RetrievalBenchmark, queries: dict[str, torch.Tensor], pools: dict[str, torch.Tensor], record: bool = True
    ) -> DatasetResult:
        """Metrics from precomputed embeddings (unit vectors: inner product = cosine).

        Each query language is scored once against the concatenation of the pools it needs (all of
        them for cross or multi): ranks within a language's pool give the mono and cross pairs, ranks
        in the whole row the multi setting, so no pool is scored twice.
        """
        langs = bench.languages
        active = [s for s in self.settings if bench.settings is None or s in bench.settings]
        if not active:  # e.g. evaluator.settings=[mono] on parallel text, which has no mono view
            raise DataError(
                bench.name, f"none of evaluator.settings {list(self.settings)} applies; this benchmark has {list(bench.settings or ())}"
            )
        pairs: dict[str, dict[str, PairResult | None]] = {s: {} for s in active}
        for x in langs:
            targets = langs if ("cross" in active or "multi" in active) else [x]
            within, whole, valid, lang_of = self._ranks(bench, x, queries[x], [pools[y] for y in targets], targets)
            qids = [qid for qid, _ in bench.queries[x]] if record else None
            for j, y in enumerate(targets):
                setting = "mono" if y == x else "cross"
                if setting in pairs:
                    pairs[setting][f"{x}-{y}"] = self._metrics(
                        within, valid & (lang_of == j), False, (bench.name, setting, f"{x}-{y}", qids)
                    )
            if "multi" in pairs:
                pairs["multi"][x] = self._metrics(whole, valid, True, (bench.name, "multi", x, qids))
        results: DatasetResult = {}
        for setting in active:
            kept = {key: value for key, value in pairs[setting].items() if value is not None}
            # A pair with no query that has a relevant candidate there (MLQA-R: languages that share no
            # question) is left out, and says so; a setting left with no pair at all is an error.
            skipped = {key: "no query has a relevant candidate in this pool" for key, value in pairs[setting].items() if value is None}
            if not kept:
                raise DataError(bench.name, f"{setting}: no language pair has a query with a relevant candidate")
            for key in skipped:
                log.warning("%s %s: pair %s left out (no query has a relevant candidate there)", bench.name, setting, key)
            results[setting] = SettingResult.of_pairs(kept, skipped=skipped)
        for setting in self.settings:
            if setting not in active:  # asked for, but the benchmark has no such view: said, not dropped
                reason = NOT_APPLICABLE.get(setting, "the benchmark has no such view")
                log.warning("%s: %s setting not applicable (%s)", bench.name, setting, reason)
                results[setting] = SettingResult.inapplicable(reason)
        return results

    def _ranks(self, bench: RetrievalBenchmark, x: str, q_emb: torch.Tensor, pools: list[torch.Tensor], targets: list[str]):
        """Ranks of every relevant candidate of x's queries within its own pool and in all ``targets``' pools together."""
        sizes = [len(p) for p in pools]
        offsets = [sum(sizes[:j]) for j in range(len(sizes))]
        own = targets.index(x) if x in targets else -1
        # Parallel text: query i of x is candidate i of x's pool, never one of its own relevant candidates.
        relevant = [
            [
                (j, offsets[j] + c)
                for j, y in enumerate(targets)
                for c in bench.relevant[y].get(qid, [])
                if not (bench.queries_are_candidates and j == own and c == i)
            ]
            for i, (qid, _) in enumerate(bench.queries[x])
        ]
        width = max((len(r) for r in relevant), default=0)
        flat = [(i, slot, j, c) for i, rel in enumerate(relevant) for slot, (j, c) in enumerate(rel)]
        cols = torch.zeros((len(relevant), width), dtype=torch.long)
        lang_of = torch.full((len(relevant), width), -1, dtype=torch.long)
        if flat:
            i, slot, j, c = torch.tensor(flat).T
            lang_of[i, slot], cols[i, slot] = j, c
        valid = lang_of >= 0
        within, whole = torch.ones_like(cols), torch.ones_like(cols)
        pool = (torch.cat(pools) if len(pools) > 1 else pools[0]).float()  # fp16 embeddings are scored in fp32
        if width and len(pool):
            pool_of = torch.repeat_interleave(torch.arange(len(pools)), torch.tensor(sizes))
            step = max(1, self.score_block // len(pool))
            # Parallel text: query i of x is candidate i of x's pool; it is no candidate of its own ranking.
            self_cols = torch.arange(len(relevant)) + offsets[own] if bench.queries_are_candidates and own >= 0 else None
            for start in range(0, len(relevant), step):
                rows = slice(start, start + step)
                scores = q_emb[rows].float() @ pool.T
                if self_cols is not None:
                    scores[torch.arange(scores.shape[0]), self_cols[rows]] = float("-inf")
                within[rows], whole[rows] = pool_ranks(scores, cols[rows], valid[rows], pool_of)
        return within, whole, valid, lang_of

    def _metrics(self, ranks: torch.Tensor, valid: torch.Tensor, with_rank_distance: bool, where: tuple | None = None) -> PairResult | None:
        """Metrics averaged over the queries with a relevant candidate (None: there is none); with ``where``
        (dataset, setting, pair, query ids) each of those queries' values is also kept in ``query_rows``."""
        keep, values = per_query_metrics(ranks, valid, self.ks, with_rank_distance, self.at_k)
        if not bool(keep.any()):
            return None
        if where is not None and where[3] is not None and self.query_rows is not None:
            dataset, setting, pair, qids = where
            kept = keep.nonzero().squeeze(1).tolist()
            columns = {name: v.tolist() for name, v in values.items()}
            relevant = ranks[keep].masked_fill(~valid[keep], 0).tolist()
            for n, i in enumerate(kept):
                self.query_rows.append(
                    {
                        "dataset": dataset,
                        "setting": setting,
                        "pair": pair,
                        "query_id": qids[i],
                        **{name: column[n] for name, column in columns.items()},
                        "ranks": sorted(r for r in relevant[n] if r > 0),
                    }
                )
        return PairResult({name: float(v.mean()) for name, v in values.items()}, int(keep.sum()))


def texts_digest(header: str, texts: list[str]):
    """A blake2b digest (20 bytes) of ``header`` and the texts, each ended by a NUL byte."""
    digest = hashlib.blake2b(header.encode(), digest_size=20)
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest


def encoder_fingerprint(encoder: Encoder) -> str:
    """A digest of the weights and input settings: cached embeddings are reused only for the same model."""
    digest = hashlib.blake2b(repr((sorted(encoder.settings().items()), len(encoder.tokenizer))).encode(), digest_size=20)
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
