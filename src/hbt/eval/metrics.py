"""Ranking metrics computed from the ranks of the relevant candidates.

Everything here follows from one quantity: the 1-based rank of each relevant candidate in a query's
full ranking (no cut-off). Ties are broken by candidate position, earlier first, as a stable sort of
descending scores would.
"""
from __future__ import annotations

import torch


def relevant_ranks(scores: torch.Tensor, relevant: list[list[int]], block: int = 2048) -> list[torch.Tensor]:
    """Sorted 1-based ranks of each query's relevant candidates.

    ``scores`` is [queries, candidates]; ``relevant[i]`` lists candidate positions relevant to query i.
    Counts candidates that score higher (or equal and come earlier) instead of sorting whole rows.
    """
    query_idx = torch.tensor([i for i, rel in enumerate(relevant) for _ in rel], dtype=torch.long)
    cand_idx = torch.tensor([c for rel in relevant for c in rel], dtype=torch.long)
    positions = torch.arange(scores.shape[1], device=scores.device)
    ranks = torch.empty(len(query_idx), dtype=torch.long)
    for start in range(0, len(query_idx), block):
        q = query_idx[start : start + block].to(scores.device)
        c = cand_idx[start : start + block].to(scores.device)
        rows = scores[q]
        own = rows.gather(1, c[:, None])
        ahead = (rows > own) | ((rows == own) & (positions[None, :] < c[:, None]))
        ranks[start : start + block] = ahead.sum(1).cpu() + 1
    out, start = [], 0
    for rel in relevant:
        out.append(ranks[start : start + len(rel)].sort().values)
        start += len(rel)
    return out


def average_precision(ranks: torch.Tensor) -> float:
    """AP over the full ranking: mean over relevant items of precision at their rank."""
    if len(ranks) == 0:
        return 0.0
    ranks = ranks.sort().values.double()
    return float((torch.arange(1, len(ranks) + 1, dtype=torch.float64) / ranks).mean())


def recall_at(ranks: torch.Tensor, k: int) -> float:
    """Share of the relevant candidates ranked in the top ``k``."""
    return float((ranks <= k).double().mean()) if len(ranks) else 0.0


def rank_distance(ranks: torch.Tensor) -> float:
    """Language bias of one query: max - min rank of its parallel relevant candidates in the multi pool."""
    return float(ranks.max() - ranks.min()) if len(ranks) else 0.0


def query_metrics(ranks: torch.Tensor, ks: tuple[int, ...], with_rank_distance: bool) -> dict[str, float]:
    metrics = {"map": average_precision(ranks)}
    metrics.update({f"recall@{k}": recall_at(ranks, k) for k in ks})
    if with_rank_distance:
        metrics["rank_distance"] = rank_distance(ranks)
    return metrics


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over rows (queries, or language pairs for the macro view)."""
    if not rows:
        return {}
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}


def ndcg_at(ranked_gains: list[float], judged_gains: list[float], k: int) -> float:
    """nDCG@k with linear gains (the graded relevance itself) and log2 discounts, as trec_eval computes it.

    ``ranked_gains`` are the gains of the retrieved list in rank order; ``judged_gains`` all positive
    judgements of the query (the ideal ranking sorts them).
    """
    import math

    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(ranked_gains[:k]) if g > 0)
    ideal = sorted((g for g in judged_gains if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def trec_query_metrics(ranked: list[str], judgements: dict[str, int], ks: dict[str, int]) -> dict[str, float]:
    """nDCG@k and Recall@k of one query's ranked docids against graded judgements (grade > 0 = relevant)."""
    relevant = {doc for doc, grade in judgements.items() if grade > 0}
    k_ndcg, k_recall = ks["ndcg"], ks["recall"]
    return {
        f"ndcg@{k_ndcg}": ndcg_at([judgements.get(doc, 0) for doc in ranked], list(judgements.values()), k_ndcg),
        f"recall@{k_recall}": len(relevant.intersection(ranked[:k_recall])) / len(relevant) if relevant else 0.0,
    }
