"""Time and peak memory of TREC-style evaluation (MIRACL format) as the corpus grows.

Writes a synthetic corpus in MIRACL's released layout (``docs-*.jsonl`` of docid/title/text, topics TSV,
graded qrels), then evaluates the tiny model on it in a fresh process per run, two ways side by side:
- ``sharded``: hbt's evaluator: the corpus streamed into fp16 shards of ``--shard-size`` documents on disk,
  searched shard by shard (faiss flat) with a merged top-100;
- ``in_memory``: the baseline (hbt's evaluator before sharding): every document text in a list, all
  embeddings in one fp32 matrix, one flat index over it.
The last column is the difference in nDCG@10 between the two (fp16 shards against fp32 in memory). Peak RSS and peak anonymous RSS (sampled) are the
process's, minus its RSS after imports and model creation.

    python benchmarks/trec_scale.py --docs 500000 2000000
    python benchmarks/trec_scale.py --docs 2000000 --no-baseline
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUERIES = 200
MAX_LENGTH = 16  # keeps encoding 2M passages on 2 CPU cores to minutes; the search and memory are what is measured
FILE_DOCS = 500_000


def generate(root: Path, docs: int, seed: int = 0) -> dict:
    marker = root / "shape.json"
    shape = {"docs": docs, "seed": seed, "queries": QUERIES}
    paths = dict(
        topics=str(root / "topics.{lang}-{split}.tsv"),
        qrels=str(root / "qrels.{lang}-{split}.tsv"),
        corpus=str(root / "corpus-{lang}" / "docs-*.jsonl"),
    )
    if marker.exists() and json.loads(marker.read_text()) == shape:
        return paths
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 8))) for _ in range(3000)]
    (root / "corpus-sw").mkdir(parents=True, exist_ok=True)
    for n, start in enumerate(range(0, docs, FILE_DOCS)):
        with open(root / "corpus-sw" / f"docs-{n:02d}.jsonl", "w") as f:
            for i in range(start, min(docs, start + FILE_DOCS)):
                text = " ".join(words[(i * 31 + j * 7) % len(words)] for j in range(12))
                f.write(json.dumps({"docid": f"{i}#0", "title": words[i % len(words)], "text": text}) + "\n")
    with open(root / "topics.sw-dev.tsv", "w") as f:
        f.writelines(f"q{q}\t{' '.join(rng.choices(words, k=6))}\n" for q in range(QUERIES))
    with open(root / "qrels.sw-dev.tsv", "w") as f:
        f.writelines(f"q{q} Q0 {rng.randrange(docs)}#0 {grade}\n" for q in range(QUERIES) for grade in (1, 2))
    marker.write_text(json.dumps(shape))
    return paths


def child(root: str, method: str, shard_size: int, batch_size: int) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from common import PeakMemory, make_encoder

    from hbt.eval.metrics import trec_query_metrics
    from hbt.eval.retrieval import Evaluator
    from hbt.eval.search import FaissSearcher
    from hbt.eval.trec import load_trec
    from hbt.results import mean_of

    torch.manual_seed(0)
    encoder = make_encoder("tiny", MAX_LENGTH)
    paths = generate(Path(root), json.loads((Path(root) / "shape.json").read_text())["docs"])
    bench = load_trec("synthetic", ["sw"], **paths)
    memory = PeakMemory(0.05)
    start = time.perf_counter()
    evaluator = Evaluator(batch_size=batch_size, searcher=FaissSearcher("flat"), shard_size=shard_size)
    if method == "sharded":
        macro = evaluator.evaluate(encoder, bench)["mono"].macro
    else:
        data = bench.languages["sw"]
        ids, texts = [], []
        for _, docid, text in data.corpus.docs():
            ids.append(docid)
            texts.append(text)
        queries = [(qid, t) for qid, t in data.queries if any(g > 0 for g in data.qrels.get(qid, {}).values())]
        q = encoder.encode([t for _, t in queries], "query", "sw", batch_size)
        d = encoder.encode(texts, "passage", "sw", batch_size)
        _, top = FaissSearcher("flat").search(q.numpy(), d.numpy(), 100)
        macro = mean_of(
            [trec_query_metrics([ids[i] for i in row if i >= 0], data.qrels[qid], bench.ks) for (qid, _), row in zip(queries, top)]
        )
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, **memory.stop(), "macro": macro}))


def measure(root: Path, method: str, shard_size: int, batch_size: int) -> dict:
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import trec_scale as t; "
        f"t.child({str(root)!r}, {method!r}, {shard_size}, {batch_size})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "TMPDIR": str(root)})
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", nargs="+", type=int, default=[500_000, 2_000_000])
    parser.add_argument("--shard-size", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--keep", help="directory for the generated corpora (default: temporary)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--baseline-max-docs",
        type=int,
        default=1_000_000,
        help="largest corpus the in-memory baseline runs on (it needs ~7 GB per 500k documents here)",
    )
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="trec-"))
    print(
        "| docs | sharded s | sharded MB (anon) | in-memory s | in-memory MB (anon) | time ratio | anon memory ratio | abs. nDCG@10 difference |"
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for docs in args.docs:
        root = work / f"docs{docs}"
        generate(root, docs)
        new = measure(root, "sharded", args.shard_size, args.batch_size)
        row = [docs, f"{new['seconds']:.0f}", f"{new['peak_rss_mb']:.0f} ({new['peak_anon_mb']:.0f})"]
        if not args.no_baseline and docs <= args.baseline_max_docs:
            old = measure(root, "in_memory", args.shard_size, args.batch_size)
            same = f"{abs(new['macro']['ndcg@10'] - old['macro']['ndcg@10']):.1e}"
            row += [
                f"{old['seconds']:.0f}",
                f"{old['peak_rss_mb']:.0f} ({old['peak_anon_mb']:.0f})",
                f"{new['seconds'] / old['seconds']:.2f}",
                f"{new['peak_anon_mb'] / old['peak_anon_mb']:.2f}",
                same,
            ]
        print("| " + " | ".join(map(str, row)) + " |", flush=True)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
