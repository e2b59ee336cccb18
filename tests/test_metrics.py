"""Metric functions on hand-built cases whose answers are known by construction."""

import math

import pytest
import torch

from hbt.eval.benchmark import RetrievalBenchmark
from hbt.eval.metrics import pool_ranks, ranking_metrics
from hbt.eval.retrieval import Evaluator


def _ranks(scores, relevant, pool_of=None):
    width = max(len(r) for r in relevant)
    cols = torch.tensor([r + [0] * (width - len(r)) for r in relevant])
    valid = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in relevant])
    within, whole = pool_ranks(torch.as_tensor(scores, dtype=torch.float32), cols, valid, pool_of)
    return within, whole, valid


def _metrics(ranks, ks=(1, 10), rank_distance=False):
    ranks = [list(r) for r in ranks]
    width = max(len(r) for r in ranks)
    padded = torch.tensor([r + [0] * (width - len(r)) for r in ranks])
    valid = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in ranks])
    return ranking_metrics(padded, valid, ks, rank_distance)


def test_ranks_follow_scores_and_break_ties_by_position():
    within, whole, _ = _ranks([[0.1, 0.9, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]], [[2, 3], [3]])
    assert whole[0].tolist() == [2, 3]  # 0.9 first, then the tied 0.5s in position order
    assert whole[1, 0] == 4  # all tied: position decides
    assert torch.equal(within, whole)  # one pool


def test_ranks_within_each_pool_and_across_pools():
    # Two pools of three columns: [0.9, 0.2, 0.5 | 0.7, 0.5, 0.1]; relevant: column 2 (pool 0) and 4 (pool 1).
    within, whole, _ = _ranks([[0.9, 0.2, 0.5, 0.7, 0.5, 0.1]], [[2, 4]], torch.tensor([0, 0, 0, 1, 1, 1]))
    assert within[0].tolist() == [2, 2]  # 0.5 is second in each pool
    assert whole[0].tolist() == [3, 4]  # 0.9, 0.7 ahead of both; the tie at 0.5 goes to the earlier column


def test_average_precision_known_values():
    assert _metrics([[1]])["map"] == 1.0
    assert _metrics([[2]])["map"] == 0.5
    # relevant at ranks 1 and 3: (1/1 + 2/3) / 2, whatever order the ranks come in
    assert math.isclose(_metrics([[3, 1]])["map"], (1 + 2 / 3) / 2)
    # queries with different numbers of relevant candidates are averaged per query
    assert math.isclose(_metrics([[1], [3, 1]])["map"], (1 + (1 + 2 / 3) / 2) / 2)


def test_recall_and_rank_distance():
    metrics = _metrics([[1, 4, 12]], ks=(1, 10), rank_distance=True)
    assert metrics["recall@1"] == pytest.approx(1 / 3)
    assert metrics["recall@10"] == pytest.approx(2 / 3)
    assert metrics["rank_distance"] == 11
    # queries without a relevant candidate are left out of every average
    empty = ranking_metrics(torch.tensor([[5], [0]]), torch.tensor([[True], [False]]), (10,), True)
    assert empty == {"map": 0.2, "recall@10": 1.0, "rank_distance": 0.0}


def _reference_score(bench, queries, pools, ks):
    """Straightforward per-pair scoring: a stable descending sort of each pool, metrics per query in Python."""

    def rank_of(scores, columns):
        order = torch.sort(-scores, stable=True).indices.tolist()
        return sorted(order.index(c) + 1 for c in columns)

    def metrics(rank_lists, with_distance):
        rows = []
        for ranks in rank_lists:
            row = {"map": sum((i + 1) / r for i, r in enumerate(ranks)) / len(ranks)}
            row.update({f"recall@{k}": sum(r <= k for r in ranks) / len(ranks) for k in ks})
            if with_distance:
                row["rank_distance"] = max(ranks) - min(ranks)
            rows.append(row)
        return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}

    langs = bench.languages
    out = {"mono": {}, "cross": {}, "multi": {}}
    for x in langs:
        for y in langs:
            scores = queries[x] @ pools[y].T
            lists = [
                rank_of(scores[i], bench.relevant[y][qid]) for i, (qid, _) in enumerate(bench.queries[x]) if bench.relevant[y].get(qid)
            ]
            if lists:
                out["mono" if x == y else "cross"][f"{x}-{y}"] = metrics(lists, False)
        pool = torch.cat([pools[y] for y in langs])
        offsets = dict(zip(langs, [sum(len(pools[z]) for z in langs[:i]) for i in range(len(langs))]))
        scores = queries[x] @ pool.T
        lists = []
        for i, (qid, _) in enumerate(bench.queries[x]):
            columns = [offsets[y] + c for y in langs for c in bench.relevant[y].get(qid, [])]
            if columns:
                lists.append(rank_of(scores[i], columns))
        out["multi"][x] = metrics(lists, True)
    return out


def test_evaluator_agrees_with_straightforward_scoring_on_tied_random_data():
    # Small-integer embeddings: exact dot products and many ties; uneven pools, queries with 0, 1 or 2
    # relevant candidates per language, and a language whose queries are a subset.
    gen = torch.Generator().manual_seed(0)
    langs, sizes = ["a", "b", "c"], {"a": 9, "b": 14, "c": 6}
    qids = [f"q{i}" for i in range(12)]
    relevant = {}
    for lang in langs:
        relevant[lang] = {}
        for qid in qids:
            n = int(torch.randint(0, 3, (1,), generator=gen))
            if n:
                relevant[lang][qid] = sorted(torch.randperm(sizes[lang], generator=gen)[:n].tolist())
    bench = RetrievalBenchmark(
        name="tied",
        queries={"a": [(q, "") for q in qids], "b": [(q, "") for q in qids], "c": [(q, "") for q in qids[:7]]},
        candidates={lang: [""] * sizes[lang] for lang in langs},
        relevant=relevant,
    )
    queries = {lang: torch.randint(0, 3, (len(bench.queries[lang]), 4), generator=gen).float() for lang in langs}
    pools = {lang: torch.randint(0, 3, (sizes[lang], 4), generator=gen).float() for lang in langs}
    expected = _reference_score(bench, queries, pools, ks=(1, 3))
    for block in (1 << 24, 7):  # one block, and a few rows at a time
        got = Evaluator(ks=(1, 3), score_block=block).score(bench, queries, pools)
        for setting in ("mono", "cross", "multi"):
            assert set(got[setting].pairs) == set(expected[setting])
            for key, metrics in expected[setting].items():
                for name, value in metrics.items():
                    assert got[setting].pairs[key].metrics[name] == pytest.approx(value, abs=1e-12), (setting, key, name)


def _one_hot_benchmark() -> RetrievalBenchmark:
    # Two languages, three parallel questions; candidate order in "b" is permuted.
    return RetrievalBenchmark(
        name="onehot",
        queries={"a": [("q0", ""), ("q1", ""), ("q2", "")], "b": [("q0", ""), ("q1", ""), ("q2", "")]},
        candidates={"a": ["", "", ""], "b": ["", "", ""]},
        relevant={"a": {"q0": [0], "q1": [1], "q2": [2]}, "b": {"q0": [2], "q1": [0], "q2": [1]}},
    )


def test_perfect_embeddings_score_one_everywhere():
    bench = _one_hot_benchmark()
    eye = torch.eye(3)
    queries = {"a": eye, "b": eye}
    pools = {"a": eye, "b": eye[[1, 2, 0]]}  # candidate j of "b" is the one-hot of the question it answers
    results = Evaluator(ks=(1, 10)).score(bench, queries, pools)
    assert set(results) == {"mono", "cross", "multi"}
    assert set(results["mono"].pairs) == {"a-a", "b-b"}
    assert set(results["cross"].pairs) == {"a-b", "b-a"}
    assert set(results["multi"].pairs) == {"a", "b"}
    for setting in ("mono", "cross"):
        assert results[setting].macro["map"] == 1.0
        assert results[setting].macro["recall@1"] == 1.0
    multi = results["multi"].macro
    # Both parallel candidates tie at the top: ranks 1 and 2, so AP = 1 and the language gap is 1.
    assert multi["map"] == 1.0 and multi["rank_distance"] == 1.0
    assert multi["recall@1"] == 0.5 and multi["recall@10"] == 1.0


def test_language_bias_shows_in_rank_distance():
    bench = _one_hot_benchmark()
    eye = torch.eye(3)
    # Language "b" candidates are pushed away from every query: each query's "b" match drops below all "a".
    far = eye[[1, 2, 0]] * 0.1 + 0.0
    results = Evaluator(ks=(1,)).score(bench, {"a": eye, "b": eye}, {"a": eye, "b": far})
    multi_a = results["multi"].pairs["a"]
    # "a" candidate at rank 1 (score 1), the "b" one at rank 2 (0.1 beats the zeros): distance 1.
    assert multi_a.metrics["rank_distance"] == 1.0
    # Cross a->b still ranks correctly (0.1 vs 0): scale does not matter within one pool.
    assert results["cross"].pairs["a-b"].metrics["map"] == 1.0
    # A reversed pool ranks every relevant last among three: AP = 1/3.
    reverse = {"a": 1 - eye, "b": 1 - eye[[1, 2, 0]]}
    worst = Evaluator(ks=(1,)).score(bench, {"a": eye, "b": eye}, reverse)
    assert worst["mono"].macro["map"] == pytest.approx(1 / 3)
    assert worst["mono"].macro["recall@1"] == 0.0


def test_perfect_ranking_with_eleven_languages_pins_the_multi_ranges():
    """XQuAD-R's multi view: 11 parallel relevant candidates per query. A perfect ranking puts them at
    ranks 1..11, so AP = 1, R@1 = 1/11, R@10 = 10/11 and rank distance = 10 (its floor, not 0)."""
    perfect = _metrics([list(range(1, 12))], ks=(1, 10), rank_distance=True)
    assert perfect == pytest.approx({"map": 1.0, "recall@1": 1 / 11, "recall@10": 10 / 11, "rank_distance": 10.0})
    # One translation pushed to rank 500: AP = (10 + 11/500)/11, R@10 unchanged, distance 499.
    biased = _metrics([list(range(1, 11)) + [500]], ks=(1, 10), rank_distance=True)
    assert biased == pytest.approx({"map": (10 + 11 / 500) / 11, "recall@1": 1 / 11, "recall@10": 10 / 11, "rank_distance": 499.0})


def test_ndcg_and_recall_at_100_by_hand():
    from hbt.eval.metrics import ndcg_at, trec_query_metrics

    # Perfect: graded 2 then 1 at the top.
    assert ndcg_at([2, 1, 0], [2, 1], 10) == 1.0
    # Grades 1 at rank 1 and 2 at rank 3, ideal 2, 1: (1 + 2/log2(4)) / (2 + 1/log2(3)).
    assert ndcg_at([1, 0, 2], [2, 1], 10) == pytest.approx((1 + 2 / 2) / (2 + 1 / math.log2(3)))
    # Outside the cut-off counts for nothing.
    assert ndcg_at([0] * 10 + [1], [1], 10) == 0.0
    ranked = [f"d{i}" for i in range(150)]
    metrics = trec_query_metrics(ranked, {"d3": 1, "d120": 2, "dX": 1, "d7": 0}, {"ndcg": 10, "recall": 100})
    assert metrics["recall@100"] == pytest.approx(1 / 3)  # d3 found; d120 beyond 100; dX never retrieved; d7 not relevant
    assert metrics["ndcg@10"] == pytest.approx((1 / math.log2(5)) / (2 + 1 / math.log2(3) + 1 / 2))
