"""Arrow-backed storage of parallel items, memory-mapped rather than held in Python lists.

One row per item: ``id``, then per language ``q.<lang>``, ``p.<lang>`` (null where the language is
missing) and ``n.<lang>`` (hard-negative passages, possibly empty). Loaders write the table once
through ``datasets`` (cached on disk and memory-mapped); the sampler only needs the language mask.
Both the table and its token cache are files keyed by content, so one process per node builds them
and every other rank memory-maps what it built.
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.fingerprint import Hasher

from hbt.compat import dataset_fingerprint
from hbt.data.schema import ParallelItem, TextTokenizer
from hbt.progress import Ticker

log = logging.getLogger(__name__)
# Bump when the token cache's layout or the tokenization it stores changes.
TOKEN_FORMAT = 1
# Below this many items a single process tokenizes: worker start-up costs more than it saves.
PARALLEL_TOKENIZE_MIN_ITEMS = 50_000


def cache_root() -> Path:
    """Where in-memory tables are saved for the other ranks (inside the ``datasets`` cache)."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "hbt"


def tokenize_processes(items: int, requested: int | None = None) -> int:
    """``data.tokenize_workers``: the number given, else every core this process may use once the data
    is large enough to repay the worker start-up."""
    if requested is not None:
        return max(1, int(requested))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores if items >= PARALLEL_TOKENIZE_MIN_ITEMS else 1


def _features(languages: Sequence[str]) -> datasets.Features:
    spec = {"id": datasets.Value("string")}
    for lang in languages:
        spec[f"q.{lang}"] = datasets.Value("string")
        spec[f"p.{lang}"] = datasets.Value("string")
        spec[f"n.{lang}"] = datasets.Sequence(datasets.Value("string"))
    return datasets.Features(spec)


def _token_features(languages: Sequence[str]) -> datasets.Features:
    ids = datasets.Sequence(datasets.Value("int32"))
    spec = {"id": datasets.Value("string")}
    for lang in languages:
        spec.update({f"q.{lang}": ids, f"p.{lang}": ids, f"n.{lang}": datasets.Sequence(ids)})
    return datasets.Features(spec)


@contextmanager
def datasets_bars(shown: bool):
    """datasets' own progress bars only where they draw on a terminal: in a log file each is one line of
    carriage-return updates."""
    enabled = datasets.utils.logging.is_progress_bar_enabled()
    if not shown:
        datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            datasets.utils.logging.enable_progress_bar()


def item_to_row(item: ParallelItem, languages: Sequence[str]) -> dict:
    row = {"id": item.id}
    for lang in languages:
        row[f"q.{lang}"] = item.questions.get(lang)
        row[f"p.{lang}"] = item.passages.get(lang)
        row[f"n.{lang}"] = list(item.hard_negatives.get(lang, ()))
    return row


class ItemStore:
    """Random access to parallel items by index, from an Arrow table."""

    def __init__(self, table: datasets.Dataset, languages: Sequence[str]):
        self.table = table
        self.languages = sorted(languages)
        # For :meth:`cells`, per column: the first row of each Arrow chunk; per chunk read, its view.
        self._chunk_bounds: dict[str, list[int]] = {}
        self._views: dict[tuple[str, int], np.ndarray | _Lists | _Scalars] = {}

    def __getstate__(self) -> dict:
        """Pickled (to DataLoader workers) without the views :meth:`cells` keeps: they would be copied."""
        return {**self.__dict__, "_chunk_bounds": {}, "_views": {}}

    @classmethod
    def from_items(cls, items: Iterable[ParallelItem], languages: Sequence[str]) -> ItemStore:
        rows = [item_to_row(item, languages) for item in items]
        return cls(datasets.Dataset.from_list(rows, features=_features(languages)), languages)

    @classmethod
    def from_generator(cls, generator, gen_kwargs: dict, languages: Sequence[str]) -> ItemStore:
        """Stream rows into an on-disk Arrow cache (keyed by ``gen_kwargs``), then memory-map it."""
        table = datasets.Dataset.from_generator(generator, features=_features(languages), gen_kwargs=gen_kwargs)
        return cls(table, languages)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def on_disk(self) -> bool:
        return bool(self.table.cache_files)

    def persisted(self) -> ItemStore:
        """This store as a memory-mapped file: file-backed stores as they are; in-memory ones saved once
        under :func:`cache_root`, keyed by their content fingerprint (a save in progress is a temporary
        directory renamed into place, so a reader never sees half a table)."""
        if self.on_disk:
            return self
        target = cache_root() / f"items-{dataset_fingerprint(self.table)}"
        if not (target / "state.json").exists():
            partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
            with datasets_bars(sys.stderr.isatty()):
                self.table.save_to_disk(str(partial))
            try:
                os.replace(partial, target)
            except OSError:  # another node's process saved it first
                shutil.rmtree(partial, ignore_errors=True)
        return ItemStore(datasets.load_from_disk(str(target)), self.languages)

    def language_mask(self) -> np.ndarray:
        """[items, languages] booleans: both question and passage exist in that language."""
        mask = np.zeros((len(self.table), len(self.languages)), dtype=bool)
        for j, lang in enumerate(self.languages):
            q = self.table.data.column(f"q.{lang}").is_valid().to_numpy(zero_copy_only=False)
            p = self.table.data.column(f"p.{lang}").is_valid().to_numpy(zero_copy_only=False)
            mask[:, j] = q & p
        return mask

    def item_languages(self) -> list[tuple[str, ...]]:
        mask = self.language_mask()
        return [tuple(lang for lang, ok in zip(self.languages, row) if ok) for row in mask]

    def rows(self, indices: Sequence[int]) -> dict[str, list]:
        """Every column of the given rows, as Python values (one Arrow take, not one lookup per row)."""
        return self.table[list(indices)]

    def cells(self, kind: str, indices: Sequence[int], langs: Sequence[str]) -> list:
        """The ``kind`` column (``q``, ``p`` or ``n``) of row ``indices[i]`` in language ``langs[i]``, in
        that order. A training batch needs two of the table's 3 × languages columns; converting whole
        rows to Python (:meth:`rows`) cost 10-11 ms a batch of 32 at 14 languages, against 0.4-1 ms for
        this, host time in series with every training step (docs/benchmarks.md, "Fetching a batch"). Token ids come back as int32 numpy arrays that view the
        memory-mapped table (the collator copies them once, into the padded batch; hard negatives: a list
        of them per row), texts as strings, a missing value as None."""
        if len(indices) != len(langs):
            raise ValueError(f"{len(indices)} rows but {len(langs)} languages")
        positions = np.asarray(indices, dtype=np.int64)
        if self.table._indices is not None:  # a selected/shuffled view: map to the rows of the Arrow table
            positions = self.table._indices.column(0).to_numpy()[positions]
        out = []
        for position, lang in zip(positions.tolist(), langs):
            name = f"{kind}.{lang}"
            bounds = self._chunk_bounds.get(name)
            if bounds is None:
                lengths = [len(chunk) for chunk in self.table.data.table.column(name).chunks]
                bounds = self._chunk_bounds[name] = np.cumsum([0, *lengths]).tolist()
            chunk = bisect.bisect_right(bounds, position) - 1
            view = self._views.get((name, chunk))
            if view is None:
                view = self._views[name, chunk] = _view(self.table.data.table.column(name).chunk(chunk))
            out.append(view[position - bounds[chunk]])
        return out

    def tokenized(self, text_tokenizer: TextTokenizer, workers: int | None = None) -> ItemStore:
        """The same table with every text replaced by its token ids (prefix added, truncated).

        Computed once with ``datasets.map`` over ``workers`` processes (see :func:`tokenize_processes`);
        for file-backed tables the result is a file next to the source, keyed by the table's and the
        tokenizer's fingerprints, that later runs and the other ranks memory-map instead of tokenizing.
        Progress: datasets' bar on a terminal; elsewhere (job logs) a status line per worker process
        every 30 s instead of the bar's carriage-return updates.
        """
        processes = tokenize_processes(len(self.table), workers)
        to_terminal = sys.stderr.isatty()
        share = -(-len(self.table) // processes)  # each worker's contiguous shard
        ticker = None if to_terminal else Ticker("tokenize" + (" (one worker's shard)" if processes > 1 else ""), share, "items")

        def encode(batch: dict) -> dict:
            out = {"id": batch["id"]}
            for lang in self.languages:
                for column, kind in ((f"q.{lang}", "query"), (f"p.{lang}", "passage")):
                    texts = batch[column]
                    present = [i for i, t in enumerate(texts) if t is not None]
                    ids = text_tokenizer.encode([texts[i] for i in present], kind, lang)
                    column_ids: list = [None] * len(texts)
                    for i, row in zip(present, ids):
                        column_ids[i] = row
                    out[column] = column_ids
                negatives = batch[f"n.{lang}"]
                flat = text_tokenizer.encode([t for texts in negatives for t in texts or []], "passage", lang)
                out[f"n.{lang}"], start = [], 0
                for texts in negatives:
                    out[f"n.{lang}"].append(flat[start : start + len(texts or [])])
                    start += len(texts or [])
            if ticker is not None:
                ticker.add(len(batch["id"]))
            return out

        # Given, so that datasets does not hash ``encode`` (and the tokenizer it holds) itself.
        fingerprint = Hasher.hash([TOKEN_FORMAT, dataset_fingerprint(self.table), text_tokenizer.fingerprint()])
        options = {"num_proc": processes if processes > 1 else None, "new_fingerprint": fingerprint}
        if self.on_disk:
            path = Path(self.table.cache_files[0]["filename"]).parent / f"tokens-{fingerprint}.arrow"
            built = any(path.parent.glob(f"{path.stem}*.arrow"))
            options.update(cache_file_name=str(path))
            log.info(
                "token cache: %s %s (%d items%s)",
                "reusing" if built else "building",
                path,
                len(self.table),
                "" if built else f", {processes} process{'es' if processes > 1 else ''}",
            )
        with datasets_bars(to_terminal):
            table = self.table.map(
                encode, batched=True, batch_size=1000, features=_token_features(self.languages), desc="tokenize", **options
            )
        return ItemStore(table, self.languages)

    def item(self, index: int) -> ParallelItem:
        row = self.table[int(index)]
        return ParallelItem(
            id=row["id"],
            questions={lang: row[f"q.{lang}"] for lang in self.languages if row[f"q.{lang}"] is not None},
            passages={lang: row[f"p.{lang}"] for lang in self.languages if row[f"p.{lang}"] is not None},
            hard_negatives={lang: tuple(row[f"n.{lang}"]) for lang in self.languages if row[f"n.{lang}"]},
        )


class _Lists:
    """One Arrow chunk of lists of integers (or of lists of those) as numpy views of its buffers, no copy:
    item ``i`` is a slice of the values between two offsets (a list of such slices when nested), None
    where the chunk holds a null."""

    def __init__(self, chunk: pa.Array):
        self.offsets = chunk.offsets.to_numpy()  # positions in ``values`` (which ignores a slice's start)
        self.valid = chunk.is_valid().to_numpy(zero_copy_only=False) if chunk.null_count else None
        self.values = _view(chunk.values)

    def __getitem__(self, i: int):
        if self.valid is not None and not self.valid[i]:
            return None
        start, end = self.offsets[i], self.offsets[i + 1]
        if isinstance(self.values, np.ndarray):
            return self.values[start:end]
        return [self.values[k] for k in range(start, end)]


class _Scalars:
    """Any other Arrow chunk (texts, lists of texts): item ``i`` as a Python value."""

    def __init__(self, chunk: pa.Array):
        self.chunk = chunk

    def __getitem__(self, i: int):
        return self.chunk[i].as_py()


def _view(chunk: pa.Array):
    """How :meth:`ItemStore.cells` reads one chunk: integers as a numpy array, lists of integers (at any
    depth) as :class:`_Lists`, the rest through Python."""
    if pa.types.is_integer(chunk.type) and not chunk.null_count:
        return chunk.to_numpy()
    if pa.types.is_list(chunk.type) and not isinstance(_view(chunk.values[:0]), _Scalars):
        return _Lists(chunk)
    return _Scalars(chunk)
