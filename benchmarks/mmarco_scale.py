"""Set-up time and peak memory of the mMARCO loader as the collection, the items and the languages grow.

Writes synthetic data in mMARCO's layout (``<lang>/queries.train.tsv``, ``<lang>/collection.tsv``,
``triples.train.ids.small.tsv``; passages of about mMARCO's mean length, 330 characters), then builds the
training table with ``hbt.data.loaders.load_mmarco`` and, side by side, with the baseline join that holds
every referenced text of every language in Python dicts (hbt's loader before it streamed). Each build runs
in a fresh process with its own ``datasets`` cache; peak RSS is that process's, minus the RSS of the same
process after its imports. Two figures: peak RSS, and peak anonymous RSS (sampled every 20 ms), which
leaves out the pages of memory-mapped files that the kernel can drop under pressure (the streamed loader's
staging files and the Arrow table itself).

    python benchmarks/mmarco_scale.py                       # the grid in docs/benchmarks.md
    python benchmarks/mmarco_scale.py --grid 2:1000000:50000 --keep /tmp/mm
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

GRID = ["2:1000000:50000", "2:4000000:50000", "4:1000000:50000", "2:4000000:200000"]
LANGUAGES = ["english", "french", "german", "spanish", "chinese", "russian", "arabic", "hindi"]
TRIPLES_PER_ITEM = 2  # mMARCO's small triples file has ~100 per (query, positive); see docs/benchmarks.md


def generate(root: Path, languages: int, passages: int, items: int, seed: int = 0) -> dict:
    """mMARCO-format files; returns the line counts. Reuses files already there with the same shape."""
    shape = {"languages": languages, "passages": passages, "items": items, "seed": seed, "format": 2}
    marker = root / "shape.json"
    if marker.exists() and json.loads(marker.read_text()) == shape:
        return json.loads((root / "lines.json").read_text())
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(5000)]
    pool = [" ".join(rng.choices(words, k=55)) for _ in range(2000)]
    queries = int(items * 1.5)  # mMARCO: 808k training queries, ~530k with a judged positive
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "triples.train.ids.small.tsv", "w") as f:
        for i in range(items):
            qid, pos = i, rng.randrange(passages)  # one item per training query with a positive
            for _ in range(TRIPLES_PER_ITEM):
                f.write(f"{qid}\t{pos}\t{rng.randrange(passages)}\n")
    for lang in LANGUAGES[:languages]:
        (root / lang).mkdir(exist_ok=True)
        with open(root / lang / "queries.train.tsv", "w") as f:
            f.writelines(f"{q}\t{lang} {' '.join(rng.choices(words, k=6))} {q}?\n" for q in range(queries))
        with open(root / lang / "collection.tsv", "w") as f:
            for start in range(0, passages, 100_000):
                f.writelines(f"{p}\t{lang} {p} {pool[(p * 7919) % len(pool)]}\n" for p in range(start, min(passages, start + 100_000)))
    lines = {"triples": items * TRIPLES_PER_ITEM, "queries": queries * languages, "collection": passages * languages}
    (root / "lines.json").write_text(json.dumps(lines))
    marker.write_text(json.dumps(shape))
    return lines


def baseline_items(root: Path, languages: list[str]):
    """The join as hbt did it before streaming: referenced texts of every language in dicts."""
    from hbt.data.readers import read_tsv
    from hbt.data.schema import ParallelItem

    triples: dict[tuple[str, str], list[str]] = {}
    for _, (qid, pos, neg) in read_tsv(root / "triples.train.ids.small.tsv", 3):
        negs = triples.setdefault((qid, pos), [])
        if not negs:
            negs.append(neg)
    qids = {qid for qid, _ in triples}
    pids = {pid for (_, pos), negs in triples.items() for pid in (pos, *negs)}
    queries = {lang: {q: t for _, (q, t) in read_tsv(root / lang / "queries.train.tsv", 2) if q in qids} for lang in languages}
    passages = {lang: {p: t for _, (p, t) in read_tsv(root / lang / "collection.tsv", 2) if p in pids} for lang in languages}
    for (qid, pos), negs in triples.items():
        yield ParallelItem(
            f"{qid}-{pos}",
            {l: queries[l][qid] for l in languages},
            {l: passages[l][pos] for l in languages},
            {l: tuple(passages[l][n] for n in negs) for l in languages},
        )


def baseline_rows(root: str, languages: str):
    from hbt.data.store import item_to_row

    languages = languages.split(",")
    for item in baseline_items(Path(root), languages):
        yield item_to_row(item, sorted(languages))


def child(root: str, languages: int, method: str) -> None:
    """One measured build (run in a fresh process): prints JSON with seconds and RSS figures."""
    import datasets
    from common import PeakMemory

    from hbt.data.loaders import load_mmarco
    from hbt.data.store import ItemStore, _features

    langs = LANGUAGES[:languages]
    memory = PeakMemory()
    start = time.perf_counter()
    if method == "streamed":
        store = load_mmarco(root, langs)
    else:
        table = datasets.Dataset.from_generator(
            baseline_rows, features=_features(sorted(langs)), gen_kwargs={"root": root, "languages": ",".join(langs)}
        )
        # (a string: datasets would split a list-valued gen_kwarg into shards, one language each)
        store = ItemStore(table, langs)
    seconds = time.perf_counter() - start
    figures = memory.stop()
    assert len(store) == items_in(Path(root)), (len(store), method)
    print(json.dumps({"seconds": seconds, **figures, "items": len(store)}))


def items_in(root: Path) -> int:
    return json.loads((root / "shape.json").read_text())["items"]


def measure(root: Path, languages: int, method: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import mmarco_scale as m; m.child({str(root)!r}, {languages}, {method!r})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", nargs="+", default=GRID, help="languages:passages_per_language:items")
    parser.add_argument("--keep", help="directory for the generated data (default: a temporary one, deleted)")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mmarco-"))
    print(
        "| languages | passages/lang | items | lines read | streamed s | streamed MB (anon) | baseline s | baseline MB (anon) | time ratio | anon memory ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        for spec in args.grid:
            languages, passages, items = map(int, spec.split(":"))
            root = work / f"{languages}x{passages}x{items}"
            lines = generate(root, languages, passages, items)
            new = measure(root, languages, "streamed")
            old = None if args.no_baseline else measure(root, languages, "baseline")
            mb = lambda r: f"{r['peak_rss_mb']:.0f} ({r['peak_anon_mb']:.0f})"
            row = [languages, passages, items, sum(lines.values()), f"{new['seconds']:.1f}", mb(new)]
            if old:
                row += [
                    f"{old['seconds']:.1f}",
                    mb(old),
                    f"{new['seconds'] / old['seconds']:.2f}",
                    f"{new['peak_anon_mb'] / old['peak_anon_mb']:.2f}",
                ]
            print("| " + " | ".join(map(str, row)) + " |", flush=True)
            if not args.keep:
                import shutil

                shutil.rmtree(root)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
