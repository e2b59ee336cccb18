"""Metric functions on hand-built cases whose answers are known by construction."""
import math

import pytest
import torch

from hbt.eval.benchmark import RetrievalBenchmark
from hbt.eval.metrics import average_precision, rank_distance, recall_at, relevant_ranks
from hbt.eval.retrieval import Evaluator


def test_ranks_follow_scores_and_break_ties_by_position():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]])
    ranks = relevant_ranks(scores, [[2, 3], [3]])
    assert ranks[0].tolist() == [2, 3]  # 0.9 first, then the tied 0.5s in position order
    assert ranks[1].tolist() == [4]  # all tied: position decides


def test_average_precision_known_values():
    assert average_precision(torch.tensor([1])) == 1.0
    assert average_precision(torch.tensor([2])) == 0.5
    # relevant at ranks 1 and 3: (1/1 + 2/3) / 2
    assert math.isclose(average_precision(torch.tensor([3, 1])), (1 + 2 / 3) / 2)


def test_recall_and_rank_distance():
    ranks = torch.tensor([1, 4, 12])
    assert recall_at(ranks, 1) == pytest.approx(1 / 3)
    assert recall_at(ranks, 10) == pytest.approx(2 / 3)
    assert rank_distance(ranks) == 11


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
    assert set(results["mono"]["pairs"]) == {"a-a", "b-b"}
    assert set(results["cross"]["pairs"]) == {"a-b", "b-a"}
    assert set(results["multi"]["pairs"]) == {"a", "b"}
    for setting in ("mono", "cross"):
        assert results[setting]["macro"]["map"] == 1.0
        assert results[setting]["macro"]["recall@1"] == 1.0
    multi = results["multi"]["macro"]
    # Both parallel candidates tie at the top: ranks 1 and 2, so AP = 1 and the language gap is 1.
    assert multi["map"] == 1.0 and multi["rank_distance"] == 1.0
    assert multi["recall@1"] == 0.5 and multi["recall@10"] == 1.0


def test_language_bias_shows_in_rank_distance():
    bench = _one_hot_benchmark()
    eye = torch.eye(3)
    # Language "b" candidates are pushed away from every query: each query's "b" match drops below all "a".
    far = eye[[1, 2, 0]] * 0.1 + 0.0
    results = Evaluator(ks=(1,)).score(bench, {"a": eye, "b": eye}, {"a": eye, "b": far})
    multi_a = results["multi"]["pairs"]["a"]
    # "a" candidate at rank 1 (score 1), the "b" one at rank 2 (0.1 beats the zeros): distance 1.
    assert multi_a["rank_distance"] == 1.0
    # Cross a->b still ranks correctly (0.1 vs 0): scale does not matter within one pool.
    assert results["cross"]["pairs"]["a-b"]["map"] == 1.0
    # A reversed pool ranks every relevant last among three: AP = 1/3.
    reverse = {"a": 1 - eye, "b": 1 - eye[[1, 2, 0]]}
    worst = Evaluator(ks=(1,)).score(bench, {"a": eye, "b": eye}, reverse)
    assert worst["mono"]["macro"]["map"] == pytest.approx(1 / 3)
    assert worst["mono"]["macro"]["recall@1"] == 0.0
