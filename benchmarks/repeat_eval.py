"""A training callback's repeated evaluation: the same evaluator run again on the same texts, with the
token ids it kept from the run before, against a fresh evaluator that tokenizes again (the baseline).

The retrieval callback evaluates the same benchmark every few steps. The weights change between runs,
the token ids do not, so ``Evaluator`` keeps them (``Evaluator.token_ids``). This times full XQuAD-R
evaluations (26,104 texts, 11 languages, every setting) both ways, interleaved, the order alternating,
and checks that both give the same results. ``--model`` is a model directory, ``me5_small``, or
``small-me5`` (default): mE5's architecture and real 250k-piece tokenizer at hidden size 32 and 2 layers,
random weights, whose encoding costs little, as a small model's does on a GPU, where tokenizing is
then a large share of an evaluation (docs/benchmarks.md, "On a GPU").

    python benchmarks/repeat_eval.py --rounds 3      # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from common import SHARED, make_encoder, me5_small_dir

from hbt.eval.lareqa import load_lareqa
from hbt.eval.retrieval import Evaluator
from hbt.results import dumps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small-me5")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="timed pairs (kept ids vs a fresh evaluator)")
    args = parser.parse_args()
    bench = {"xquad_r": load_lareqa("xquad_r", SHARED / "data" / "xquad-r")}
    if args.model == "small-me5":
        from hbt.models.encoder import Encoder
        from hbt.models.families import build

        directory = build("me5", tempfile.mkdtemp(prefix="hbt-small-me5-"), me5_small_dir(), hidden=32, layers=2)
        lengths = {"max_query_length": args.max_length, "max_passage_length": args.max_length}
        encoder = Encoder(name_or_path=str(directory), query_prefix="query: ", passage_prefix="passage: ", **lengths)
    else:
        encoder = make_encoder(args.model, args.max_length)
    texts = sum(len(q) for q in bench["xquad_r"].queries.values()) + sum(len(c) for c in bench["xquad_r"].candidates.values())
    start = time.perf_counter()
    for lang, queries in bench["xquad_r"].queries.items():
        encoder.tokenize_compact([t for _, t in queries], "query", lang)
    for lang, candidates in bench["xquad_r"].candidates.items():
        encoder.tokenize_compact(candidates, "passage", lang)
    tokenizing = time.perf_counter() - start

    kept = Evaluator(progress=False)
    reference = dumps(kept.run(encoder, bench))  # the first run tokenizes; later ones reuse

    def fresh() -> str:
        return dumps(Evaluator(progress=False).run(encoder, bench))

    def again() -> str:
        return dumps(kept.run(encoder, bench))

    took: dict[str, list[float]] = {"fresh evaluator (tokenizes)": [], "same evaluator (kept ids)": []}
    for round_ in range(args.rounds):
        order = [("fresh evaluator (tokenizes)", fresh), ("same evaluator (kept ids)", again)]
        for name, run in order if round_ % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            assert run() == reference, f"{name}: results differ from the first run"
            took[name].append(time.perf_counter() - start)
        print(f"round {round_ + 1}: " + ", ".join(f"{name} {seconds[-1]:.2f} s" for name, seconds in took.items()), flush=True)
    base, new = (statistics.median(v) for v in took.values())
    print(
        f"\nmodel={args.model} threads={torch.get_num_threads()}: {texts} texts; tokenizing them once: {tokenizing:.2f} s\n"
        f"an evaluation, median of {args.rounds}: fresh evaluator {base:.2f} s, same evaluator {new:.2f} s "
        f"({base / new:.2f}x; {base - new:.2f} s saved per evaluation); results identical"
    )


if __name__ == "__main__":
    main()
