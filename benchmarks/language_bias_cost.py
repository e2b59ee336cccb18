"""What the multi setting's language-bias metrics (PEER@k, language preference) add to an evaluation: the
time of each query's top k (torch) and of the per-query PEER tests (Python, one Kruskal-Wallis test per
relevance level), at growing numbers of queries, with the time per million queries.

Synthetic rankings of the LAReQA shape: 11 languages, a pool of 600 candidates per language, one relevant
candidate per language and query (XQuAD-R's structure; MLQA-R has 7 languages and larger pools).

    python benchmarks/language_bias_cost.py
    python benchmarks/language_bias_cost.py --queries 5000 20000 --k 10 100
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hbt.eval.language_bias import LanguageBias
from hbt.eval.metrics import ranked_top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--k", type=int, nargs="+", default=[10])
    parser.add_argument("--languages", type=int, default=11)
    parser.add_argument("--per-language", type=int, default=600)
    args = parser.parse_args()
    torch.manual_seed(0)
    langs = [f"l{i}" for i in range(args.languages)]
    pool = args.per_language * args.languages
    pool_of = torch.arange(args.languages).repeat_interleave(args.per_language)
    bias = LanguageBias(tuple(args.k))
    bias.per_query(
        torch.zeros((1, max(args.k)), dtype=torch.long),
        torch.ones((1, 2), dtype=torch.long),
        torch.ones((1, 2), dtype=torch.bool),
        torch.tensor([[0, 1]]),
        pool_of,
        0,
        langs,
        [args.per_language] * args.languages,
    )  # imports scipy: untimed
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?"
    )
    print(f"{cpu}, {torch.get_num_threads()} threads; pool of {pool} ({args.languages} x {args.per_language}), k = {args.k}")
    print("| queries | top-k (torch) | PEER + preference | per query | per million queries |")
    print("|---|---|---|---|---|")
    for queries in args.queries:
        scores = torch.randn(queries, pool)
        whole = torch.randint(1, pool, (queries, args.languages))  # each language's relevant candidate's rank
        valid = torch.ones_like(whole, dtype=torch.bool)
        lang_of = torch.arange(args.languages).expand(queries, -1).contiguous()
        start = time.perf_counter()
        top = ranked_top(scores, max(args.k))
        ranking = time.perf_counter() - start
        start = time.perf_counter()
        bias.per_query(top, whole, valid, lang_of, pool_of, 0, langs, [args.per_language] * args.languages)
        tests = time.perf_counter() - start
        each = (ranking + tests) / queries
        print(f"| {queries} | {ranking:.2f} s | {tests:.2f} s | {each * 1e6:.0f} µs | {each * 1e6:.0f} s |")


if __name__ == "__main__":
    main()
