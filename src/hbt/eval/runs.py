"""TREC run files and qrels of an evaluation (``evaluator.run_files=true``), beside results.json under
``runs/``, so trec_eval, ir_measures, ranx or pytrec_eval users can recompute hbt's metrics from them,
fuse its rankings with other systems' and test significance their way.

Pool benchmarks (XQuAD-R, MLQA-R, Tatoeba, the built-in toy): one ``<benchmark>.<setting>.run`` and
``.qrels`` per setting. A query is named ``<pair>:<query id>`` (``en-de:56bf...`` in cross, ``en:56bf...``
in multi: the pair keys of results.json), a candidate ``<language>:<position in that language's pool>``,
so any tool can group a ranking by language. hbt's macro averages are means over pairs of the per-pair
means: group the per-query values by the part before ``:`` to get them (trec_eval's own mean over all
queries of a file weighs pairs by their query counts). Queries without a relevant candidate in a pair's
pool are left out, as hbt leaves them out of its metrics.

Corpus benchmarks (MIRACL): one ``<benchmark>.<language>.run`` and ``.qrels`` per language, with the
published query and document ids, as pyserini and tevatron write them (their runs fuse with these).

Each line holds hbt's float32 score written exactly (``repr``). hbt breaks tied scores by candidate position;
trec_eval breaks them by document id, so a metric recomputed from a file can differ from hbt's only where
a relevant candidate ties another's score. AP and recall need every relevant candidate within the depth
(``evaluator.run_depth``) to equal hbt's (full-ranking) values; a shallower run gives AP@depth.
"""

from __future__ import annotations

import bisect
import contextlib
import re
from pathlib import Path

import torch

from hbt.checkpointing import atomic_file


class RunWriter:
    """Writes the run files of one evaluation into ``directory`` (atomically, each file at close)."""

    def __init__(self, directory: Path, depth: int, score_block: int = 1 << 24):
        self.directory = Path(directory)
        self.depth = depth
        self.score_block = score_block
        self._files = contextlib.ExitStack()
        self._open: dict[str, object] = {}
        self.written: list[Path] = []

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._files.close()  # an exception inside leaves no file: atomic_file removes its temporary one

    def _handle(self, name: str):
        if name not in self._open:
            path = self.directory / _file_name(name)
            tmp = self._files.enter_context(atomic_file(path))
            self._open[name] = self._files.enter_context(open(tmp, "w", encoding="utf-8"))
            self.written.append(path)
        return self._open[name]

    # -- pools ----------------------------------------------------------------------------------------------
    def pools(self, dataset: str, bench, queries: dict[str, torch.Tensor], pools: dict[str, torch.Tensor], settings) -> None:
        """The top ``depth`` of every query in each of ``settings``, ties by position as hbt ranks them."""
        langs = bench.languages
        sizes = [len(pools[y]) for y in langs]
        starts = [sum(sizes[:j]) for j in range(len(langs))]
        whole = torch.cat([pools[y] for y in langs]).float()
        step = max(1, self.score_block // max(1, len(whole)))
        for j, x in enumerate(langs):
            regions = []  # (setting, pair, first column, end column)
            if "mono" in settings:
                regions.append(("mono", f"{x}-{x}", starts[j], starts[j] + sizes[j]))
            if "cross" in settings:
                regions += [("cross", f"{x}-{y}", starts[k], starts[k] + sizes[k]) for k, y in enumerate(langs) if y != x]
            if "multi" in settings:
                regions.append(("multi", x, 0, len(whole)))
            qids = [qid for qid, _ in bench.queries[x]]
            for first in range(0, len(qids), step):
                scores = queries[x][first : first + step].float() @ whole.T
                rows = range(first, min(first + step, len(qids)))
                for setting, pair, a, b in regions:
                    region = scores[:, a:b]
                    order = torch.sort(region, dim=1, descending=True, stable=True).indices[:, : self.depth + 1]
                    values = region.gather(1, order).tolist()
                    for n, i in enumerate(rows):
                        self._pool_query(dataset, bench, (setting, pair, a, b), qids[i], i, x, order[n].tolist(), values[n], starts)

    def _pool_query(self, dataset, bench, region, qid, i, x, order, values, starts) -> None:
        setting, pair, a, b = region
        langs = bench.languages
        own = starts[langs.index(x)] + i if bench.queries_are_candidates else -1  # parallel text: the query itself
        relevant = [starts[k] + c for k, y in enumerate(langs) for c in bench.relevant[y].get(qid, [])]
        relevant = sorted(column for column in relevant if a <= column < b and column != own)
        if not relevant:
            return
        name, query = f"{dataset}.{setting}", f"{pair}:{qid}"
        ranked = [(a + col, score) for col, score in zip(order, values) if a + col != own][: self.depth]
        run = self._handle(f"{name}.run")
        run.writelines(f"{query} Q0 {_doc(column, langs, starts)} {rank} {score!r} hbt\n" for rank, (column, score) in enumerate(ranked, 1))
        self._handle(f"{name}.qrels").writelines(f"{query} 0 {_doc(column, langs, starts)} 1\n" for column in relevant)

    # -- corpora --------------------------------------------------------------------------------------------
    def corpus(self, dataset: str, lang: str, qids: list[str], top, qrels: dict[str, dict[str, int]]) -> None:
        """One language of a TREC-style benchmark: its merged top-k lists and its judgements."""
        run, judged = self._handle(f"{dataset}.{lang}.run"), self._handle(f"{dataset}.{lang}.qrels")
        for qid, ids, scores, positions in zip(qids, top.ids, top.scores, top.positions):
            kept = [(d, float(s)) for d, s, p in zip(ids, scores, positions) if p >= 0][: self.depth]
            run.writelines(f"{qid} Q0 {doc} {rank} {score!r} hbt\n" for rank, (doc, score) in enumerate(kept, 1))
            judged.writelines(f"{qid} 0 {doc} {grade}\n" for doc, grade in sorted(qrels.get(qid, {}).items()))


def _doc(column: int, langs: list[str], starts: list[int]) -> str:
    k = bisect.bisect_right(starts, column) - 1
    return f"{langs[k]}:{column - starts[k]}"


def _file_name(name: str) -> str:
    return re.sub(r"[^\w.\-\[\]]+", "_", name)
