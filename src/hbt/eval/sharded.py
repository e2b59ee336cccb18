"""Search of corpora too large for memory: fp16 embedding shards on disk, searched one by one, merged top-k.

Each rank encodes its share of the corpus (:meth:`hbt.eval.trec.Corpus.docs`) ``shard_size`` documents at a
time into ``shard-<n>.npy`` (fp16), with the documents' ids and global positions beside it. The flat
(exact) search loads one shard at a time and keeps a running top-k; IVF and HNSW build one index over the
rank's shards. Under torch.distributed the ranks' top-k lists are gathered and merged, so N devices return
what one process returns. Ties are broken by corpus position, the same on any number of ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hbt.eval.search import FaissSearcher, TorchSearcher
from hbt.progress import progress as show_progress

NO_POSITION = np.iinfo(np.int64).max
RELEASE_AFTER = 10_000  # shards at least this large hand their freed memory back (small ones: not worth a gc pass)


@dataclass
class Shard:
    embeddings: Path  # [n, dim] float16
    positions: Path  # [n] int64: positions in the whole corpus
    ids: Path  # n lines: document ids

    def load(self, dtype=np.float32) -> np.ndarray:
        """The shard's embeddings as ``dtype`` (float16: as stored, memory-mapped)."""
        return np.asarray(np.load(self.embeddings, mmap_mode="r"), dtype=dtype)

    def doc_ids(self) -> list[str]:
        return self.ids.read_text(encoding="utf-8").split("\n")

    def __len__(self) -> int:
        return int(np.load(self.positions, mmap_mode="r").shape[0])


def encode_shards(
    docs: Iterator[tuple[int, str, str]],
    encode: Callable[[list[str], np.ndarray], np.ndarray],
    directory: Path,
    shard_size: int,
) -> list[Shard]:
    """Encode ``(position, docid, text)`` into shards under ``directory`` (``encode(texts, positions)``
    returns their embeddings). A directory holding a
    ``complete.json`` from an earlier run is reused as it is; shards are written under temporary names
    and renamed, so an interrupted run leaves no shard that looks finished."""
    marker = directory / "complete.json"
    if marker.exists():
        return [_shard(directory, n) for n in range(json.loads(marker.read_text())["shards"])]
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[Shard] = []
    buffer: list[tuple[int, str, str]] = []

    def flush() -> None:
        shard = _shard(directory, len(shards))
        positions = np.array([p for p, _, _ in buffer], dtype=np.int64)
        embeddings = np.asarray(encode([text for _, _, text in buffer], positions)).astype(np.float16)
        for target, write in (
            (shard.embeddings, lambda f: np.save(f, embeddings)),
            (shard.positions, lambda f: np.save(f, positions)),
            (shard.ids, lambda f: f.write("\n".join(docid for _, docid, _ in buffer).encode("utf-8"))),
        ):
            partial = target.with_name(target.name + ".partial")
            with open(partial, "wb") as handle:
                write(handle)
            os.replace(partial, target)
        shards.append(shard)
        if len(buffer) >= RELEASE_AFTER:
            release_freed_memory()
        buffer.clear()

    for doc in docs:
        if "\n" in doc[1]:
            from hbt.errors import DataError

            raise DataError(f"docid {doc[1]!r}", "contains a line break")
        buffer.append(doc)
        if len(buffer) >= shard_size:
            flush()
    if buffer:
        flush()
    marker.write_text(json.dumps({"shards": len(shards)}))
    return shards


def release_freed_memory() -> None:
    """Hand memory freed by the last shard back to the OS. Encoding leaves glibc's heap fragmented
    (thousands of short-lived tensors), and without this the process would keep every shard's high-water
    mark; with it, the peak is one shard's, whatever the corpus size. A no-op off glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _shard(directory: Path, n: int) -> Shard:
    return Shard(directory / f"shard-{n:05d}.npy", directory / f"shard-{n:05d}.positions.npy", directory / f"shard-{n:05d}.ids")


def shard_directory_key(*parts) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


class TopK:
    """The best ``k`` (score, position, docid) per query, merged batch by batch; ties go to the lower
    corpus position."""

    def __init__(self, queries: int, k: int):
        self.k = k
        self.scores = np.empty((queries, 0), dtype=np.float32)
        self.positions = np.empty((queries, 0), dtype=np.int64)
        self.ids = np.empty((queries, 0), dtype=object)

    def add(self, scores: np.ndarray, positions: np.ndarray, ids: np.ndarray) -> None:
        scores = np.where(positions == NO_POSITION, -np.inf, scores).astype(np.float32)
        s = np.concatenate([self.scores, scores], axis=1)
        p = np.concatenate([self.positions, positions], axis=1)
        i = np.concatenate([self.ids, ids], axis=1)
        order = np.lexsort((p, -s), axis=1)[:, : self.k]
        rows = np.arange(len(s))[:, None]
        self.scores, self.positions, self.ids = s[rows, order], p[rows, order], i[rows, order]

    def merge(self, other: TopK) -> None:
        self.add(other.scores, other.positions, other.ids)

    def ranked_ids(self) -> list[list[str]]:
        return [[d for d, p in zip(ids, pos) if p != NO_POSITION] for ids, pos in zip(self.ids, self.positions)]


def search_shards(searcher: FaissSearcher | TorchSearcher, queries: np.ndarray, shards: list[Shard], k: int, progress=False) -> TopK:
    """This rank's top-k over its shards: exact search shard by shard, or one approximate index; with
    ``progress`` (:mod:`hbt.progress`) the documents searched or indexed so far, rate and ETA."""
    top = TopK(len(queries), k)
    if not shards:
        return top
    total = sum(len(shard) for shard in shards)
    if searcher.index_type == "flat":
        for shard in show_progress(shards, total, "search", progress, unit="documents", weight=len):
            scores, local = searcher.search(queries, shard.load(searcher.shard_dtype), k)
            top.add(scores, *_resolve(local, np.load(shard.positions), shard.doc_ids()))
        return top
    sizes = [len(shard) for shard in shards]
    loaded = (shard.load() for shard in show_progress(shards, total, "build index", progress, unit="documents", weight=len))
    index = searcher.build_incremental(loaded, total)
    scores, local = searcher.search_index(index, queries, min(k, sum(sizes)))
    positions = np.concatenate([np.load(shard.positions) for shard in shards])
    # Only the ids of shards that hold a hit are read.
    offsets = np.cumsum([0, *sizes])
    ids = np.full(local.shape, "", dtype=object)
    for n, shard in enumerate(shards):
        hit = (local >= offsets[n]) & (local < offsets[n + 1])
        if hit.any():
            names = np.array(shard.doc_ids(), dtype=object)
            ids[hit] = names[local[hit] - offsets[n]]
    top.add(scores, np.where(local >= 0, positions[np.maximum(local, 0)], NO_POSITION), ids)
    return top


def _resolve(local: np.ndarray, positions: np.ndarray, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    valid = local >= 0
    names = np.array(ids, dtype=object)
    return np.where(valid, positions[np.maximum(local, 0)], NO_POSITION), np.where(valid, names[np.maximum(local, 0)], "")
