"""Host time to fetch and pad one training batch from the token cache, as the table grows: hbt's cell
reads against the whole-row reads they replaced, side by side on the same batches.

Writes synthetic token caches in the layout of hbt's (:mod:`hbt.data.store`: per language ``q.<lang>``,
``p.<lang>`` and ``n.<lang>``, lists of int32 token ids, in Arrow chunks of 1,000 rows as ``datasets.map``
writes them), 14 languages as in mMARCO, one hard negative per item and language (``load_mmarco``'s
``negatives_per_item: 1``), queries of 8-19 tokens and passages of 50-129 (about mMARCO's ~330
characters), and memory-maps them as training does. "views MB": the anonymous memory the cell path
keeps after reading every batch once (its numpy views of the chunks it touched; the ids stay in the
memory-mapped file). Batches come from the hybrid sampler (ratio 0.5);
each is fetched and padded by both paths in turn (the order alternating), the padded tensors checked
equal. Both run in the main process, as with ``data.num_workers: 0`` (every data config but mMARCO's): there
this is host time in series with every training step.

    python benchmarks/batch_fetch.py                          # the grid in docs/benchmarks.md
    python benchmarks/batch_fetch.py --items 10000 --batches 50
    python benchmarks/batch_fetch.py --xquad-r                # the real XQuAD-R batches of hardware_limit.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
from common import anonymous_rss_mb

from hbt.data.datamodule import PairCollator, PairDataset
from hbt.data.store import ItemStore, _token_features
from hbt.models.encoder import Encoder
from hbt.sampling import HybridBatchSampler

LANGUAGES = ["ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "nl", "pt", "ru", "vi", "zh"]
CHUNK = 1000  # rows per Arrow record batch, as datasets.map writes the token cache


class WholeRows(PairDataset):
    """hbt's fetch before: the batch's whole rows (every language's query, passage and negatives) as
    Python values, then the two cells each pair uses."""

    def __getitems__(self, refs):
        rows = self.store.rows([ref.item for ref in refs])
        examples = []
        for i, ref in enumerate(refs):
            example = {
                "query": rows[f"q.{ref.query_lang}"][i],
                "passage": rows[f"p.{ref.passage_lang}"][i],
                "query_lang": ref.query_lang,
                "passage_lang": ref.passage_lang,
            }
            if self.num_hard_negatives:
                example["negatives"] = list(rows[f"n.{ref.passage_lang}"][i][: self.num_hard_negatives])
            examples.append(example)
        return examples


def token_lists(rng: np.random.Generator, rows: int, low: int, high: int) -> pa.Array:
    lengths = rng.integers(low, high, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(offsets, pa.array(rng.integers(5, 250_000, int(offsets[-1]), dtype=np.int32)))


def write_cache(directory: Path, items: int, seed: int = 0) -> ItemStore:
    """A synthetic token cache of ``items`` rows on disk, memory-mapped (reused when already there)."""
    target = directory / f"tokens-{items}-{seed}"
    if not (target / "state.json").exists():
        rng = np.random.default_rng(seed)
        features = _token_features(LANGUAGES)
        batches = []
        for start in range(0, items, CHUNK):
            rows = min(CHUNK, items - start)
            columns = {"id": pa.array([str(i) for i in range(start, start + rows)])}
            for lang in LANGUAGES:
                columns[f"q.{lang}"] = token_lists(rng, rows, 8, 20)
                columns[f"p.{lang}"] = token_lists(rng, rows, 50, 130)
                negatives = token_lists(rng, rows, 50, 130)
                columns[f"n.{lang}"] = pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32)), negatives)
            batches.append(pa.RecordBatch.from_pydict(columns).cast(features.arrow_schema))
        datasets.Dataset(pa.Table.from_batches(batches)).save_to_disk(str(target))
    return ItemStore(datasets.load_from_disk(str(target)), LANGUAGES)


def compare(store: ItemStore, batch_size: int, batches: int, negatives: int, collate: PairCollator) -> tuple[float, float, float]:
    """Median ms a batch for the whole-row path and the cell path, and the MB the cell path keeps."""
    sampler = HybridBatchSampler(store.item_languages(), batch_size, ratio=0.5, seed=0)
    drawn, epoch = [], 0
    while len(drawn) < batches + 5:  # as many epochs as it takes (XQuAD-R's are short)
        sampler.set_epoch(epoch)
        drawn += [batch for _, batch in zip(range(batches + 5 - len(drawn)), sampler)]
        epoch += 1
    fresh, rss = PairDataset(ItemStore(store.table, store.languages), negatives), anonymous_rss_mb()
    for refs in drawn:  # the cell path's views of the chunks it read, kept for the run: their memory
        fresh.__getitems__(refs)
    grown = anonymous_rss_mb() - rss
    paths = {"whole rows": WholeRows(store, negatives), "cells": PairDataset(store, negatives)}
    seconds = {name: [] for name in paths}
    for i, refs in enumerate(drawn):
        out = {}
        for name in list(paths)[:: 1 if i % 2 else -1]:
            clock = time.perf_counter()
            out[name] = collate(paths[name].__getitems__(refs))
            seconds[name].append(time.perf_counter() - clock)
        for kind in ("query", "passage", "negatives")[: 3 if negatives else 2]:
            assert torch.equal(out["cells"][kind]["input_ids"], out["whole rows"][kind]["input_ids"]), kind
    old, new = (1000 * statistics.median(seconds[name][5:]) for name in paths)
    return old, new, grown


def xquad_r(args) -> None:
    """The same comparison on XQuAD-R's training articles (11 languages), tokenized by multilingual-e5-small
    at length 64: the batches of ``hardware_limit.py``'s training."""
    from common import SHARED, make_datamodule, make_encoder

    from hbt.eval.lareqa import lareqa_items

    encoder = make_encoder("me5_small", 64)
    datamodule = make_datamodule(encoder, 32, items=lareqa_items(SHARED / "data" / "xquad-r", articles="train"))
    datamodule.train_dataloader()  # builds the token cache
    store = datamodule.token_store
    print(f"XQuAD-R training articles: {len(store)} items, {len(store.languages)} languages, multilingual-e5-small's tokens")
    print(f"{'batch':>7}{'whole rows ms':>15}{'cells ms':>10}{'ratio':>8}")
    for batch_size in args.batch_sizes:
        old, new, _ = compare(store, batch_size, args.batches, 0, PairCollator(encoder.text_tokenizer))
        print(f"{batch_size:>7}{old:>15.2f}{new:>10.2f}{old / new:>8.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 100])
    parser.add_argument("--batches", type=int, default=200, help="timed batches per size (and path)")
    parser.add_argument("--negatives", type=int, default=0, help="data.num_hard_negatives (mMARCO's config: 0)")
    parser.add_argument("--dir", default=None, help="where the synthetic caches go (default: a temporary directory)")
    parser.add_argument("--xquad-r", action="store_true", help="time XQuAD-R's training batches instead (../shared, mE5-small)")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    if args.xquad_r:
        xquad_r(args)
        return
    collate = PairCollator(Encoder(tiny={"hidden_size": 16, "num_layers": 1, "num_heads": 1, "intermediate_size": 16}).text_tokenizer)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.dir or scratch)
        print(f"{'items':>8}{'GB':>6}{'batch':>7}{'whole rows ms':>15}{'cells ms':>10}{'ratio':>8}{'cells: views MB':>18}")
        for items in args.items:
            start = time.perf_counter()
            store = write_cache(root, items)
            size = sum(f.stat().st_size for f in Path(store.table.cache_files[0]["filename"]).parent.glob("*.arrow")) / 1e9
            built = time.perf_counter() - start
            for batch_size in args.batch_sizes:
                old, new, grown = compare(store, batch_size, args.batches, args.negatives, collate)
                print(f"{items:>8}{size:>6.2f}{batch_size:>7}{old:>15.2f}{new:>10.2f}{old / new:>8.1f}{grown:>18.1f}", flush=True)
            print(f"         (cache written and memory-mapped in {built:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
