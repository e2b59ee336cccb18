"""Evaluation cost split: encoding vs everything after it (search + metrics), on the full XQuAD-R.

Encodes the 11 languages' questions and candidates once (timed), then scores the 11 mono, 110 cross
and 11 multi settings from those embeddings (timed), and prints the ratio. Target: after-encoding work
at most 5% of the encoding time.

    python benchmarks/eval_speed.py --model me5_small
"""

from __future__ import annotations

import argparse

import torch
from common import SHARED, Stopwatch, make_encoder

from hbt.eval.lareqa import load_lareqa
from hbt.eval.retrieval import Evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="me5_small")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    bench = load_lareqa("xquad_r", SHARED / "data" / "xquad-r")
    encoder = make_encoder(args.model, args.max_length)
    evaluator = Evaluator(batch_size=args.batch_size, ks=(1, 10))
    clock = Stopwatch()
    queries, pools = evaluator.embed(encoder, bench)
    encode_s = clock.seconds()
    clock = Stopwatch()
    results = evaluator.score(bench, queries, pools)
    score_s = clock.seconds()
    texts = sum(len(q) for q in bench.queries.values()) + sum(len(c) for c in bench.candidates.values())
    pairs = {s: len(results[s].pairs) for s in results}
    print(f"\nmodel={args.model} max_length={args.max_length} threads={torch.get_num_threads()} texts encoded={texts} settings={pairs}")
    print(f"encoding:                  {encode_s:8.1f} s")
    print(f"search + metrics (all):    {score_s:8.2f} s")
    print(f"after-encoding / encoding: {100 * score_s / encode_s:8.2f} %")
    print("macro mAP: " + ", ".join(f"{s} {results[s].macro['map']:.4f}" for s in results))


if __name__ == "__main__":
    main()
