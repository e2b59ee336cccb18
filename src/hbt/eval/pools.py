"""Exact ranking over per-language candidate pools: LAReQA-style benchmarks (XQuAD-R, MLQA-R), parallel
sentences (Tatoeba) and the built-in corpus, in the three settings

mono:  query language X against the pool of X            (one pair "X-X" per language)
cross: query language X against the pool of Y != X        (pairs "X-Y")
multi: query language X against the union of all pools    (key "X"; one relevant per language),
       with the language-bias metrics of :mod:`hbt.eval.language_bias` (PEER@k, language preference)

Per-pair metrics are averaged over queries; the macro view averages over pairs. Every function returns
its results and its per-query rows (one per query and language pair: ``dataset``, ``setting``,
``pair``, ``query_id``, the metrics, and ``ranks``, the 1-based rank of each relevant candidate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from hbt.errors import DataError
from hbt.eval.benchmark import BenchmarkGroup, RetrievalBenchmark
from hbt.eval.language_bias import LanguageBias, last_language_shares
from hbt.eval.metrics import per_query_metrics, pool_ranks, ranked_top
from hbt.results import DatasetResult, PairResult, SettingResult

SETTINGS = ("mono", "cross", "multi")
NOT_APPLICABLE = {"mono": "parallel sentences: in the pool of the query's language its only translation is the query itself"}
log = logging.getLogger(__name__)
Rows = list[dict]


@dataclass(frozen=True)
class PoolRanking:
    """What is computed from the embeddings: cut-offs ``ks``, the metrics at each k (``at_k``), the
    settings, how many query x candidate scores are held at once (``score_block``) and the language-bias
    metrics of the multi setting (``bias``)."""

    ks: tuple[int, ...]
    at_k: tuple[str, ...]
    settings: tuple[str, ...]
    score_block: int = 1 << 24
    bias: LanguageBias = LanguageBias()

    def score(
        self, bench: RetrievalBenchmark, queries: dict[str, torch.Tensor], pools: dict[str, torch.Tensor], record: bool = True
    ) -> tuple[DatasetResult, Rows]:
        """Metrics from precomputed embeddings (unit vectors: inner product = cosine), and the per-query
        rows (none without ``record``).

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
        rows: Rows = []
        for x in langs:
            targets = langs if ("cross" in active or "multi" in active) else [x]
            within, whole, valid, lang_of, top = self._ranks(bench, x, queries[x], [pools[y] for y in targets], targets, "multi" in active)
            qids = [qid for qid, _ in bench.queries[x]] if record else None
            for j, y in enumerate(targets):
                setting = "mono" if y == x else "cross"
                if setting in pairs:
                    pairs[setting][f"{x}-{y}"] = self._metrics(
                        within, valid & (lang_of == j), False, (bench.name, setting, f"{x}-{y}", qids), rows
                    )
            if "multi" in pairs:
                sizes = [len(pools[y]) - (1 if bench.queries_are_candidates and y == x else 0) for y in targets]
                pool_of = torch.repeat_interleave(torch.arange(len(targets)), torch.tensor([len(pools[y]) for y in targets]))
                bias = self.bias.per_query(top, whole, valid, lang_of, pool_of, targets.index(x), targets, sizes)
                pairs["multi"][x] = self._metrics(whole, valid, True, (bench.name, "multi", x, qids), rows, (bias, targets))
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
        return results, rows

    def score_subsets(
        self, bench: RetrievalBenchmark, queries: dict[str, torch.Tensor], pools: dict[str, torch.Tensor], subset_ids: dict[str, set[str]]
    ) -> dict[str, DatasetResult]:
        """Each query subset (``{subset: query ids}``) scored from the same embeddings against every pool
        (its rows are rows of the full set: none are added)."""
        parts = {}
        for subset, ids in subset_ids.items():
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
            picked = {lang: queries[lang][torch.tensor(rows, dtype=torch.long)] for lang, rows in keep.items()}
            parts[subset] = self.score(sub, picked, pools, record=False)[0]
        return parts

    def _ranks(self, bench: RetrievalBenchmark, x: str, q_emb: torch.Tensor, pools: list[torch.Tensor], targets: list[str], top_k: bool):
        """Ranks of every relevant candidate of x's queries within its own pool and in all ``targets``'
        pools together; with ``top_k``, also each query's best columns in rank order, as deep as the
        language-bias metrics look (None without)."""
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
        # the query itself (parallel text) is no candidate: it ranks last, after the depth looked at
        depth = min(self.bias.depth, len(pool) - (1 if bench.queries_are_candidates and x in targets else 0)) if top_k else 0
        top = torch.zeros((len(relevant), max(depth, 0)), dtype=torch.long) if top_k else None
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
                if top is not None and depth > 0:
                    top[rows] = ranked_top(scores, depth)
        return within, whole, valid, lang_of, top

    def _metrics(
        self, ranks: torch.Tensor, valid: torch.Tensor, with_rank_distance: bool, where: tuple, rows: Rows, bias: tuple | None = None
    ) -> PairResult | None:
        """Metrics averaged over the queries with a relevant candidate (None: there is none); with query
        ids in ``where`` (dataset, setting, pair, query ids) each of those queries' values is appended to
        ``rows``. ``bias``: ((per-query values, last-ranked languages), the pool's languages) of
        :meth:`LanguageBias.per_query`, for every query; rows name the last-ranked language
        (``last_language``), results give each language's share of it (``last_language:<Y>``)."""
        keep, values = per_query_metrics(ranks, valid, self.ks, with_rank_distance, self.at_k)
        if not bool(keep.any()):
            return None
        last: list = []
        shares: dict[str, float] = {}
        if bias is not None:
            (extra, last_of), languages = bias
            mask = keep.numpy()
            values.update({name: torch.from_numpy(v[mask]) for name, v in extra.items()})
            last = [lang for lang, kept in zip(last_of, mask) if kept]
            shares = last_language_shares(last, languages)
        dataset, setting, pair, qids = where
        if qids is not None:
            kept = keep.nonzero().squeeze(1).tolist()
            columns = {name: v.tolist() for name, v in values.items()}
            relevant = ranks[keep].masked_fill(~valid[keep], 0).tolist()
            for n, i in enumerate(kept):
                rows.append(
                    {
                        "dataset": dataset,
                        "setting": setting,
                        "pair": pair,
                        "query_id": qids[i],
                        **{name: column[n] for name, column in columns.items()},
                        "ranks": sorted(r for r in relevant[n] if r > 0),
                        **({"last_language": last[n]} if bias is not None else {}),
                    }
                )
        return PairResult({**{name: float(v.double().mean()) for name, v in values.items()}, **shares}, int(keep.sum()))


def merge_group(group: BenchmarkGroup, parts: dict[str, tuple[DatasetResult, Rows]]) -> tuple[DatasetResult, Rows]:
    """A group's parts, each evaluated on its own, as one dataset: pair tables merged and macro-averaged
    over all pairs. With a pivot (Tatoeba's English), the cross pairs become two settings, one per
    direction; the multi rows of each part's pivot queries are named after the part."""
    merged: dict[str, dict] = {}
    if group.pivot:
        merged = {"xx_en": {"pairs": {}, "skipped": {}}, "en_xx": {"pairs": {}, "skipped": {}}}

    def target(setting: str, key: str) -> str:
        if setting == "cross" and group.pivot:
            return "en_xx" if key.startswith(f"{group.pivot}-") else "xx_en"
        return setting

    rows: Rows = []
    for part_name, (part_results, part_rows) in parts.items():
        for row in part_rows:  # the pair keys the merged results use
            row = dict(row, setting=target(row["setting"], row["pair"]))
            if row["setting"] == "multi" and row["pair"] in group.labels.get(part_name, {}):
                row["pair"] = f"{row['pair']}({part_name})"
            rows.append(row)
        for setting, block in part_results.items():
            if block.not_applicable is not None:
                merged.setdefault(setting, {"pairs": {}, "skipped": {}, "not_applicable": block.not_applicable})
                continue
            for key, pair in [*block.pairs.items(), *block.skipped.items()]:
                into = merged.setdefault(target(setting, key), {"pairs": {}, "skipped": {}})
                if setting == "multi" and key in group.labels.get(part_name, {}):
                    key = f"{key}({part_name})"  # the English queries of each Tatoeba pair
                into["pairs" if isinstance(pair, PairResult) else "skipped"][key] = pair
    results = {
        setting: SettingResult.of_pairs(block["pairs"], skipped=block["skipped"], not_applicable=block.get("not_applicable"))
        for setting, block in merged.items()
        if block["pairs"] or "not_applicable" in block
    }
    return results, rows
