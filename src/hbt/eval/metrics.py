"""Ranking metrics computed from the ranks of the relevant candidates.

Everything here follows from one quantity: the 1-based rank of each relevant candidate in a query's
full ranking (no cut-off). Ties are broken by candidate position, earlier first, as a stable sort of
descending scores would. Ranks are held as a padded ``[queries, R]`` tensor with a ``valid`` mask
(queries may have different numbers of relevant candidates) so that metrics are computed for all
queries at once.

Why not torchmetrics' retrieval metrics (the design card's metrics package): they differ in definition
and are slower here, measured (docs/evaluation.md, "hbt's metrics and torchmetrics"). Its AP and recall
count a relevant candidate whose score is <= 0 as not relevant (cosine similarities are often negative
across languages), order tied scores arbitrarily (hbt and trec_eval order them deterministically), and
need every query x candidate score as a flat tensor where hbt needs only each relevant candidate's rank:
16x slower on XQuAD-R's multi pools. Where the definitions coincide they agree (tested). What
torchmetrics lacks altogether also stays here: the LAReQA pools' relevance structure (mono / cross /
multi from one scoring), rank distance and the language-bias metrics.
"""

from __future__ import annotations

import torch

_TIES_PER_CHUNK = 1 << 20


def pool_ranks(
    scores: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor, pool_of: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of each row's relevant columns, within their own pool and within the whole row.

    ``scores`` is [queries, candidates]: the candidate axis may concatenate several pools (languages),
    ``pool_of`` giving each column's pool (contiguous, in column order); ``cols``/``valid`` are
    [queries, R]: the columns of each query's relevant candidates, padded where ``valid`` is False.

    One pass over ``scores``: each score is bucketed by how many of its row's R relevant scores it
    exceeds and the buckets are counted per pool, which gives every "strictly ahead" count at once;
    the few scores exactly equal to a relevant one are then compared by position.
    """
    rows, width = cols.shape
    if pool_of is None:
        pool_of = torch.zeros(scores.shape[1], dtype=torch.long, device=scores.device)
    own = scores.gather(1, cols)
    threshold, order = own.masked_fill(~valid, float("inf")).sort(1)
    bucket = torch.searchsorted(threshold, scores)  # how many of the row's relevant scores lie below each score
    pools = int(pool_of[-1]) + 1 if len(pool_of) else 1
    edges = torch.searchsorted(pool_of, torch.arange(pools + 1, device=scores.device)).tolist()
    row_base = torch.arange(rows, device=scores.device)[:, None] * (width + 1)
    counts = torch.stack(
        [
            torch.bincount((bucket[:, a:b] + row_base).view(-1), minlength=rows * (width + 1)).view(rows, width + 1)
            for a, b in zip(edges, edges[1:])
        ],
        dim=1,
    )
    above = counts.flip(2).cumsum(2).flip(2)[:, :, 1:]  # [:, p, k]: scores in pool p above the k-th lowest relevant
    place = torch.empty_like(order).scatter_(1, order, torch.arange(width, device=scores.device).expand(rows, -1))
    above = above.gather(2, place[:, None, :].expand(-1, pools, -1))
    own_pool = pool_of[cols]
    within = above.gather(1, own_pool[:, None, :]).squeeze(1)
    whole = above.sum(1)
    padded = torch.cat([threshold, threshold.new_full((rows, 1), float("inf"))], dim=1)
    tied = padded.gather(1, bucket) == scores  # equal to a relevant score: order decided by position below
    tie_rows, tie_cols = tied.nonzero(as_tuple=True)
    for start in range(0, len(tie_rows), max(1, _TIES_PER_CHUNK // max(1, width))):
        r = tie_rows[start : start + max(1, _TIES_PER_CHUNK // max(1, width))]
        c = tie_cols[start : start + len(r)]
        earlier = (scores[r, c][:, None] == own[r]) & (c[:, None] < cols[r]) & valid[r]
        whole.index_add_(0, r, earlier.long())
        within.index_add_(0, r, (earlier & (pool_of[c][:, None] == own_pool[r])).long())
    return within + 1, whole + 1


def top_by_position(scores, k: int):
    """Column indices of each row's ``k`` best scores, the lower index first among equal scores, in
    ascending index order. torch.topk picks among equal scores arbitrarily; the rows' k-th best value
    settles which of its equals are kept."""
    k = min(k, scores.shape[1])
    kth = scores.topk(k, dim=1).values[:, -1:]
    above = scores > kth
    equal = scores == kth
    wanted = k - above.sum(1, keepdim=True)
    keep = above | (equal & (equal.cumsum(1) <= wanted))
    return keep.nonzero()[:, 1].view(len(scores), k)


def merge_by_position(scores, positions, k: int):
    """The ``k`` best of each row by (score descending, position ascending)."""
    order = torch.argsort(positions, dim=1, stable=True)
    scores, positions = scores.gather(1, order), positions.gather(1, order)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), positions.gather(1, order)


def ranked_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's ``k`` best columns in rank order: score descending, the lower column first among equal
    scores (the order of :func:`pool_ranks` and the run files)."""
    columns = top_by_position(scores, k)
    return merge_by_position(scores.gather(1, columns), columns, k)[1]


AT_K = ("recall", "precision", "f1")


def per_query_metrics(
    ranks: torch.Tensor, valid: torch.Tensor, ks: tuple[int, ...], with_rank_distance: bool, at_k: tuple[str, ...] = ("recall",)
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-query AP (full ranking), the ``at_k`` metrics at each k and, optionally, rank distance, for the
    queries that have at least one relevant candidate: ``(kept, {metric: values})`` where ``kept`` marks
    those rows of ``ranks``.

    With h relevant candidates in the top k of R relevant: recall@k = h / R, precision@k = h / k, and
    F1@k = 2·P·R / (P + R) = 2h / (k + R) per query (0 when h = 0)."""
    count = valid.sum(1)
    keep = count > 0
    ranks, valid, count = ranks[keep], valid[keep], count[keep].double()
    big = torch.iinfo(torch.long).max
    ordered = ranks.masked_fill(~valid, big).sort(1).values
    place = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64, device=ranks.device)
    real = place[None, :] <= count[:, None]
    precision = torch.where(real, place[None, :] / ordered.double(), torch.zeros((), dtype=torch.float64))
    values = {"map": precision.sum(1) / count}
    for k in ks:
        hits = ((ranks <= k) & valid).sum(1).double()
        by_name = {"recall": hits / count, "precision": hits / k, "f1": 2 * hits / (k + count)}
        for name in at_k:
            values[f"{name}@{k}"] = by_name[name]
    if with_rank_distance:
        top = ranks.masked_fill(~valid, 0).amax(1)
        bottom = ranks.masked_fill(~valid, big).amin(1)
        values["rank_distance"] = (top - bottom).double()
    return keep, values


def ranking_metrics(
    ranks: torch.Tensor, valid: torch.Tensor, ks: tuple[int, ...], with_rank_distance: bool, at_k: tuple[str, ...] = ("recall",)
) -> dict[str, float]:
    """:func:`per_query_metrics` averaged over the queries that have a relevant candidate (as ranx's
    ``f1@k``, ``map``, ...); ``{}`` when none has."""
    keep, values = per_query_metrics(ranks, valid, ks, with_rank_distance, at_k)
    if not bool(keep.any()):
        return {}
    return {name: float(v.mean()) for name, v in values.items()}


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
