"""Language-aware hard-negative mining: ``python -m hbt.mine data=jsonl data.train.path=... model=...``.

For each language L, the item's L question searches a pool of passages: the distinct L passages of the
training items (``mine.pool=same``, what X-X and X-Y pairs with passage language L train on) or the
passages of every language (``mine.pool=all``). The pool is encoded into fp16 shards on disk and searched
shard by shard (:mod:`hbt.eval.sharded`), queries in blocks of ``mine.query_block``, so memory stays
bounded. Candidates then pass, in order, these filters, each counted in the summary:

1. ``own``: the item's own passage, its translations (the item's passages in other languages) and any
   passage whose normalized text (NFKC, case-folded, whitespace collapsed) equals one of them are removed;
2. the rank window: the top ``mine.depth`` of the rest are considered (``window``), of which
3. ``skip_top``: the first ``mine.skip_top`` are dropped (likely unlabelled positives), and
4. ``margin``: those scoring above ``mine.margin`` × the positive's score (NV-Retriever's relative margin,
   e.g. 0.95; null: off) are dropped;

and the first ``mine.num_negatives`` survivors become ``hard_negatives[L]`` (``kept``; survivors past that
are ``unused``; ``short`` counts items left with fewer). The output is the same data
in hbt's JSONL schema with those hard negatives (replacing any the source had), written atomically;
per-language results are kept under ``<output>.work/`` so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import unicodedata
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from hbt.errors import ConfigError, OutputError
from hbt.progress import check_progress
from hbt.progress import progress as show_progress

log = logging.getLogger(__name__)
FILTERS = ("own", "skip_top", "margin")


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def passage_keys(store) -> np.ndarray:
    """[items, languages] int64: a key of each passage's normalized text (0 where missing), read one
    language column at a time. Equal keys mean equal normalized text (Python's 64-bit string hash,
    consistent within the process)."""
    keys = np.zeros((len(store), len(store.languages)), dtype=np.int64)
    for j, lang in enumerate(store.languages):
        column = store.table.data.column(f"p.{lang}").to_pylist()
        keys[:, j] = [(hash(normalize(t)) or 1) if t is not None else 0 for t in column]
    return keys


class Pool:
    """The distinct passages (by normalized text) of some languages."""

    def __init__(self, store, languages: list[str], keys: np.ndarray):
        self.texts: list[str] = []
        self.langs: list[str] = []
        self.index: dict[int, int] = {}  # text key -> entry
        for lang in languages:
            column = store.table.data.column(f"p.{lang}").to_pylist()
            for item, key in enumerate(keys[:, store.languages.index(lang)].tolist()):
                if key and key not in self.index:
                    self.index[key] = len(self.texts)
                    self.texts.append(column[item])
                    self.langs.append(lang)

    def __len__(self) -> int:
        return len(self.texts)

    def entries(self, keys) -> set[int]:
        """Entries equal to any of these passages (an item's own passage and its translations)."""
        return {self.index[k] for k in keys if k and k in self.index}


class Miner:
    def __init__(
        self,
        depth: int = 50,
        skip_top: int = 0,
        margin: float | None = 0.95,
        num_negatives: int = 8,
        pool: str = "same",
        batch_size: int = 128,
        query_block: int = 100_000,
        shard_size: int = 200_000,
        searcher=None,
        progress: bool | str = "auto",
        precision: str = "auto",
        max_tokens: int | str | None = "auto",
        compile: bool = False,
    ):
        from hbt.eval.search import FaissSearcher

        if pool not in ("same", "all"):
            raise ConfigError("mine.pool", f"must be 'same' or 'all', got {pool!r}")
        for key, value, least in (
            ("depth", depth, 1),
            ("num_negatives", num_negatives, 1),
            ("skip_top", skip_top, 0),
            ("query_block", query_block, 1),
        ):
            if value < least:
                raise ConfigError(f"mine.{key}", f"must be >= {least}, got {value}")
        if margin is not None and not 0 < margin <= 1.5:
            raise ConfigError("mine.margin", f"must lie in (0, 1.5] or be null, got {margin}")
        self.depth, self.skip_top, self.margin, self.num_negatives = depth, skip_top, margin, num_negatives
        self.pool_mode, self.batch_size, self.query_block, self.shard_size = pool, batch_size, query_block, shard_size
        self.searcher = searcher or FaissSearcher()
        self.progress = check_progress(progress, "mine.progress")
        from hbt.models.precision import encoding

        encoding(precision, max_tokens, "cpu", "mine", compile)  # bad values stop before the model loads
        self.precision, self.max_tokens, self.compile = precision, max_tokens, compile

    def _encode(self, encoder, texts: list[str], kind: str, lang, progress=None) -> np.ndarray:
        from hbt.models.precision import encoding

        options = encoding(self.precision, self.max_tokens, next(encoder.parameters()).device, "mine", self.compile)
        shown = self.progress if progress is None else progress
        return encoder.encode(texts, kind, lang, self.batch_size, shown, **options).numpy()

    def mine_language(self, encoder, store, lang: str, work: Path, keys: np.ndarray | None = None) -> tuple[dict[int, list[str]], Counter]:
        """Hard negatives of language ``lang`` for every item that has it: ``{item: [texts]}``
        (``keys``: :func:`passage_keys` of the store, computed once for all languages)."""
        from hbt.eval.sharded import encode_shards, search_shards

        keys = passage_keys(store) if keys is None else keys
        column = store.languages.index(lang)
        pool = Pool(store, [lang] if self.pool_mode == "same" else store.languages, keys)
        pool_langs = np.array(pool.langs, dtype=object)

        def encode(texts: list[str], positions: np.ndarray) -> np.ndarray:
            return self._encode(encoder, texts, "passage", list(pool_langs[positions]))

        docs = ((j, str(j), text) for j, text in enumerate(pool.texts))
        shards = encode_shards(docs, encode, work / f"pool-{lang}-{self.pool_mode}", self.shard_size)
        embeddings = _ShardRows(shards, self.shard_size)
        questions = store.table.data.column(f"q.{lang}").to_pylist()
        passages = store.table.data.column(f"p.{lang}").to_pylist()
        items = [i for i, (q, p) in enumerate(zip(questions, passages)) if q is not None and p is not None]
        # Enough candidates that the own-passage filter cannot starve the depth window.
        k = min(len(pool), self.depth + len(store.languages) + 8)
        out: dict[int, list[str]] = {}
        counts: Counter = Counter()
        blocks = range(0, len(items), self.query_block)
        blocks = show_progress(
            blocks,
            len(items),
            f"mine {lang}",
            self.progress,
            unit="queries",
            weight=lambda start: len(items[start : start + self.query_block]),
        )
        for start in blocks:
            block = items[start : start + self.query_block]
            q = self._encode(encoder, [questions[i] for i in block], "query", lang, progress=False)  # the blocks' bar counts these
            positive = embeddings.rows([pool.index[keys[i, column]] for i in block]) if self.margin is not None else None
            top = search_shards(self.searcher, q, shards, k)
            for row, item in enumerate(block):
                own = pool.entries(keys[item].tolist())
                kept: list[str] = []
                candidates = [(int(j), float(sc)) for j, sc in zip(top.positions[row], top.scores[row]) if sc > -np.inf]
                others = [(j, sc) for j, sc in candidates if j not in own]
                counts["own"] += len(candidates) - len(others)
                window = others[: self.depth]
                counts["window"] += len(window)
                bound = self.margin * float(q[row] @ positive[row]) if self.margin is not None else None
                for rank, (j, score) in enumerate(window):
                    if rank < self.skip_top:
                        counts["skip_top"] += 1
                    elif bound is not None and score > bound:
                        counts["margin"] += 1
                    elif len(kept) < self.num_negatives:
                        kept.append(pool.texts[j])
                    else:
                        counts["unused"] += 1
                counts["kept"] += len(kept)
                counts["short"] += len(kept) < self.num_negatives
                counts["queries"] += 1
                out[item] = kept
        return out, counts


class _ShardRows:
    """Rows of the pool's embeddings by pool index (shards hold consecutive indices)."""

    def __init__(self, shards, shard_size: int):
        self.shards, self.shard_size = shards, shard_size
        self.maps: dict[int, np.ndarray] = {}

    def rows(self, indices: list[int]) -> np.ndarray:
        out = []
        for j in indices:
            n = j // self.shard_size
            if n not in self.maps:
                self.maps[n] = np.load(self.shards[n].embeddings, mmap_mode="r")
            out.append(self.maps[n][j % self.shard_size].astype(np.float32))
        return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)


def mine(cfg: DictConfig) -> dict:
    """The ``hbt.mine`` task: mine every language, then write the data with its hard negatives."""
    from hydra.utils import instantiate

    from hbt.data.schema import languages_of
    from hbt.data.store import ItemStore
    from hbt.tasks import load_encoder

    output = Path(cfg.output)
    if output.exists():
        raise OutputError(str(output), "already exists; not overwriting mined data (choose another output=)")
    miner: Miner = instantiate(cfg.mine, _convert_="all")
    source = instantiate(cfg.data.train, _convert_="all")()
    store = source if isinstance(source, ItemStore) else ItemStore.from_items(source, languages_of(source))
    encoder = load_encoder(cfg)
    import torch

    if torch.cuda.is_available():
        encoder = encoder.cuda()
    work = output.with_name(output.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    summary, keys = {}, None
    for lang in store.languages:
        part = work / f"{lang}.json"
        if part.exists():  # finished by an earlier, interrupted run
            done = json.loads(part.read_text())
        else:
            keys = passage_keys(store) if keys is None else keys
            negatives, counts = miner.mine_language(encoder, store, lang, work, keys)
            done = {"negatives": {str(k): v for k, v in negatives.items()}, "counts": dict(counts)}
            tmp = part.with_name(part.name + ".partial")
            tmp.write_text(json.dumps(done, ensure_ascii=False))
            os.replace(tmp, part)
        summary[lang] = done["counts"]
        log.info("%s: %s", lang, ", ".join(f"{k} {v}" for k, v in done["counts"].items()))
    negatives = {lang: json.loads((work / f"{lang}.json").read_text())["negatives"] for lang in store.languages}
    tmp = output.with_name(output.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as handle:
        for item in range(len(store)):
            row = store.item(item)
            mined = {lang: negatives[lang][str(item)] for lang in store.languages if negatives[lang].get(str(item))}
            handle.write(
                json.dumps(
                    {"id": row.id, "questions": row.questions, "passages": row.passages, "hard_negatives": mined}, ensure_ascii=False
                )
                + "\n"
            )
    os.replace(tmp, output)
    (output.with_name(output.name + ".summary.json")).write_text(json.dumps(summary, indent=2))
    print(summary_table(summary), flush=True)
    shutil.rmtree(work)
    return summary


def summary_table(summary: dict) -> str:
    columns = ["queries", *FILTERS, "window", "kept", "unused", "short"]
    lines = ["language  " + "  ".join(f"{c:>9}" for c in columns)]
    for lang, counts in summary.items():
        lines.append(f"{lang:<8}  " + "  ".join(f"{counts.get(c, 0):>9}" for c in columns))
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[2] / "conf"), config_name="mine")
def main(cfg: DictConfig) -> None:
    from hbt.tasks import run_task

    run_task(lambda c: (mine(c), {}), cfg)


if __name__ == "__main__":
    from hbt.cli import preflight

    preflight(Path(__file__).resolve().parents[2] / "conf", "mine")
    main()
