"""hbt's ranking metrics against torchmetrics' retrieval metrics, side by side on the same scores: time and
values, at XQuAD-R's multi-pool size (11 languages x 1,190 queries against a pool of 13,090 candidates,
11 relevant per query) with random unit embeddings.

Values are compared on every query, and on the queries whose relevant candidates all score above 0 (where
the two definitions coincide, save ties: torchmetrics counts a relevant candidate scoring <= 0 as not
relevant). Prints seconds, the ratio and the largest per-query difference per metric.

    python benchmarks/torchmetrics_check.py
    python benchmarks/torchmetrics_check.py --languages 3 --queries 500
"""

from __future__ import annotations

import argparse
import time

import torch

from hbt.eval.metrics import per_query_metrics, pool_ranks
from hbt.hardware import describe_cpu


def hbt_metrics(scores: torch.Tensor, cols: torch.Tensor) -> dict[str, torch.Tensor]:
    valid = torch.ones_like(cols, dtype=torch.bool)
    _, whole = pool_ranks(scores, cols, valid)
    return per_query_metrics(whole, valid, (10,), False, ("recall",))[1]


def torchmetrics_metrics(scores: torch.Tensor, cols: torch.Tensor) -> dict[str, torch.Tensor]:
    """As a torchmetrics user computes them: flat predictions, targets and query indexes, per-query values
    (``aggregation`` returns them unreduced)."""
    from torchmetrics.retrieval import RetrievalMAP, RetrievalRecall

    target = torch.zeros_like(scores, dtype=torch.bool)
    target.scatter_(1, cols, True)
    indexes = torch.arange(len(scores))[:, None].expand_as(scores).reshape(-1)
    keep = lambda values, dim=None: values  # noqa: E731 - per-query values, not their mean
    flat = scores.reshape(-1), target.reshape(-1)
    return {
        "map": RetrievalMAP(aggregation=keep)(*flat, indexes=indexes),
        "recall@10": RetrievalRecall(top_k=10, aggregation=keep)(*flat, indexes=indexes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", type=int, default=11)
    parser.add_argument("--queries", type=int, default=1190)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    import torchmetrics.retrieval  # noqa: F401 - imported before anything is timed

    torch.manual_seed(0)
    pool = torch.nn.functional.normalize(torch.randn(args.languages * args.queries, args.dim), dim=1)
    print(f"CPU: {describe_cpu()}; {args.languages} languages x {args.queries} queries, pool {len(pool)}, {args.languages} relevant each")
    timings = {"hbt": 0.0, "torchmetrics": 0.0}
    worst = {(kind, m): 0.0 for kind in ("all", "positive") for m in ("map", "recall@10")}
    counts = {"positive": 0}
    for lang in range(args.languages):
        # query i of each language is a noisy copy of item i's candidates: one relevant per language
        items = torch.arange(args.queries)
        queries = torch.nn.functional.normalize(pool[lang * args.queries + items] + 0.9 * torch.randn(args.queries, args.dim), dim=1)
        cols = torch.stack([items + k * args.queries for k in range(args.languages)], dim=1)
        scores = queries @ pool.T
        start = time.perf_counter()
        ours = hbt_metrics(scores, cols)
        timings["hbt"] += time.perf_counter() - start
        start = time.perf_counter()
        theirs = torchmetrics_metrics(scores, cols)
        timings["torchmetrics"] += time.perf_counter() - start
        positive = (scores.gather(1, cols) > 0).all(1)  # where the two definitions coincide (save ties)
        counts["positive"] += int(positive.sum())
        for metric in ("map", "recall@10"):
            gap = (ours[metric] - theirs[metric].double()).abs()
            worst[("all", metric)] = max(worst[("all", metric)], float(gap.max()))
            worst[("positive", metric)] = max(worst[("positive", metric)], float(gap[positive].max()) if bool(positive.any()) else 0.0)
        print(
            f"language {lang + 1}/{args.languages}: hbt {timings['hbt']:.2f} s, torchmetrics {timings['torchmetrics']:.2f} s so far",
            flush=True,
        )
    print(
        f"\ntime (all languages): hbt {timings['hbt']:.2f} s, torchmetrics {timings['torchmetrics']:.2f} s ({timings['torchmetrics'] / timings['hbt']:.1f}x)"
    )
    total = args.languages * args.queries
    for (kind, metric), value in worst.items():
        which = f"all {total} queries" if kind == "all" else f"the {counts['positive']} queries whose relevant candidates all score > 0"
        print(f"largest per-query difference, {metric}, {which}: {value:.2e}")


if __name__ == "__main__":
    main()
