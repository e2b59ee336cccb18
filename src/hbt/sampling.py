"""Hybrid batch sampling (Elmahdy, Lin & Ahmad 2024, arXiv 2408.10536).

Each global batch is X-X (monolingual: one language for the whole batch, query and passage both in it)
with probability ``ratio`` and X-Y (cross-lingual: every pair has query language != passage language,
drawn per example) otherwise. ``mode="example"`` is the ablation that makes the same choice per example
inside a batch instead.

Under DDP every rank runs the same random stream, so all ranks agree on the batch type and language of
each step; rank ``r`` keeps slice ``r`` of the global batch, so items are disjoint across ranks and the
gathered global batch is homogeneous. An item id appears at most once per global batch, so its
translations never act as false negatives.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from hbt.errors import ConfigError

MODES = ("batch", "example")


@dataclass(frozen=True)
class PairRef:
    """One training pair: item index, the language of its query and of its passage."""

    item: int
    query_lang: str
    passage_lang: str

    @property
    def monolingual(self) -> bool:
        return self.query_lang == self.passage_lang


def check_settings(ratio, mode: str = "batch", batch_size=1, ratio_schedule=None, temperature=None) -> None:
    """The sampler's values that need no data, one line naming the key for a bad one. The entry points
    call it before anything heavy starts (models, loggers, the trainer); the sampler calls it again."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
        raise ConfigError("sampler.ratio", f"must lie in [0, 1], got {ratio}")
    if mode not in MODES:
        raise ConfigError("sampler.mode", f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("data.batch_size", f"must be an integer >= 1, got {batch_size!r}")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0):
        raise ConfigError(
            "sampler.temperature", f"must be > 0 (1: proportional to each language's items; .inf: uniform) or null, got {temperature!r}"
        )
    for point in ratio_schedule or []:
        if len(point) != 2 or not all(isinstance(v, (int, float)) for v in point) or not 0.0 <= float(point[1]) <= 1.0:
            raise ConfigError("sampler.ratio_schedule", f"expected [[epoch, ratio], ...] with ratios in [0, 1], got {list(point)}")


class HybridBatchSampler:
    """Batch sampler yielding this rank's ``batch_size`` pairs of each global batch.

    Deterministic from ``(seed, epoch)``; ``state_dict`` records the position inside the epoch so a
    resumed run sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(
        self,
        item_languages: Sequence[Sequence[str]],
        batch_size: int,
        ratio: float = 0.5,
        mode: str = "batch",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        language_weights: dict[str, float] | None = None,
        ratio_schedule: Sequence[Sequence[float]] | None = None,
        temperature: float | None = None,
    ):
        check_settings(ratio, mode, batch_size, ratio_schedule, temperature)
        self.languages = sorted({lang for langs in item_languages for lang in langs})
        self.lang_index = lang_index = {lang: i for i, lang in enumerate(self.languages)}
        self.has_lang = np.zeros((len(item_languages), len(self.languages)), dtype=bool)
        for i, langs in enumerate(item_languages):
            self.has_lang[i, [lang_index[lang] for lang in langs]] = True
        self.item_languages = [sorted(langs) for langs in item_languages]
        self.batch_size = batch_size
        self.ratio = float(ratio)
        self.mode = mode
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.global_batch_size = batch_size * world_size
        self.ratio_schedule = [tuple(map(float, point)) for point in ratio_schedule or []]
        self.temperature = None if temperature is None else float(temperature)
        self.language_shares = self._tempered_shares()
        self.language_probs = self._language_probs(language_weights)
        # X-Y pairs: within an item, language l weighs share_l / items_l, which moves each language's share
        # of X-Y pairs toward the tempered shares as far as the items' languages allow (each item is used
        # once per epoch; at T = 1 all weigh the same).
        self.pair_weights = None if self.temperature is None else self.language_shares / np.maximum(self.has_lang.sum(0), 1)
        self.log_pair_weights = None if self.pair_weights is None else np.log(self.pair_weights)
        self.epoch = 0
        self._start_step = 0
        self._length_cache: tuple[int, int] = (-1, 0)
        # Lightning calls ``set_epoch`` on ``batch_sampler.sampler``, not on the batch sampler itself.
        self.sampler = _EpochForwarder(self)
        self._validate()

    # -- configuration checks: fail before training, one line each ------------------------------
    def _tempered_shares(self) -> np.ndarray:
        """Each language's share of the draw: proportional to its items raised to 1/T (XLM's and mT5's
        sampling temperature; T = 1 proportional, T -> inf uniform); uniform when no temperature is set
        (the paper's draw)."""
        counts = self.has_lang.sum(0).astype(float)
        if self.temperature is None or not counts.sum():
            return np.full(len(self.languages), 1.0 / max(len(self.languages), 1))
        shares = (counts / counts.max()) ** (1.0 / self.temperature)
        return shares / shares.sum()

    def _language_probs(self, weights: dict[str, float] | None) -> np.ndarray:
        """X-X batches: the tempered shares times ``language_weights`` (when given), renormalised."""
        if not weights:
            return self.language_shares
        unknown = sorted(set(weights) - set(self.languages))
        if unknown:
            raise ConfigError("sampler.language_weights", f"languages {unknown} are not in the training data")
        raw = np.array([float(weights.get(lang, 0.0)) for lang in self.languages])
        if (raw < 0).any() or raw.sum() <= 0:
            raise ConfigError("sampler.language_weights", "weights must be non-negative and not all zero")
        raw = raw * self.language_shares
        return raw / raw.sum()

    def _validate(self) -> None:
        uses_mono = self.ratio > 0 or any(r > 0 for _, r in self.ratio_schedule)
        uses_cross = self.ratio < 1 or any(r < 1 for _, r in self.ratio_schedule)
        if uses_cross and len(self.languages) < 2:
            raise ConfigError("sampler.ratio", f"X-Y batches (ratio < 1) need at least 2 languages, data has {self.languages}")
        if uses_cross:
            multi = int((self.has_lang.sum(1) >= 2).sum())
            if multi < self.global_batch_size:
                raise ConfigError(
                    "data.batch_size", f"only {multi} items have 2+ languages, fewer than the global batch of {self.global_batch_size}"
                )
        if uses_mono:
            for lang, count, p in zip(self.languages, self.has_lang.sum(0), self.language_probs):
                if p > 0 and count < self.global_batch_size:
                    raise ConfigError(
                        "data.batch_size", f"language {lang!r} has {count} items, fewer than the global batch of {self.global_batch_size}"
                    )

    # -- the sampler protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        """Steps of the current epoch, exactly: what the learning-rate schedule is sized by. With fully
        parallel data that is items // global batch; otherwise the epoch is drawn once to count them."""
        if self.has_lang.all():
            return len(self.has_lang) // self.global_batch_size
        if self._length_cache[0] != self.epoch:
            self._length_cache = (self.epoch, sum(1 for _ in self.global_batches(self.epoch)))
        return self._length_cache[1]

    def _max_steps(self) -> int:
        return len(self.has_lang) // self.global_batch_size

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start_step = 0
        self.epoch = epoch

    def ratio_at(self, step: int) -> float:
        """The probability of an X-X batch at ``step`` of the current epoch.

        ``ratio_schedule`` is a list of ``(epoch, ratio)`` points, interpolated linearly in fractional
        epochs and held constant outside them: ``[[0, 1.0], [2, 0.5]]`` anneals from pure X-X to hybrid
        over two epochs. Without a schedule the ratio is constant.
        """
        if not self.ratio_schedule:
            return self.ratio
        progress = self.epoch + step / max(self._max_steps(), 1)
        xs, ys = zip(*self.ratio_schedule)
        return float(np.interp(progress, xs, ys))

    def __iter__(self) -> Iterator[list[PairRef]]:
        start = self._start_step
        for step, global_batch in enumerate(self.global_batches(self.epoch)):
            if step < start:
                continue
            self._start_step = step + 1
            yield global_batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        self._start_step = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self._start_step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._start_step, self.seed = int(state["epoch"]), int(state["step"]), int(state["seed"])

    # -- drawing ------------------------------------------------------------------------------------
    def global_batches(self, epoch: int) -> Iterator[list[PairRef]]:
        """All global batches of ``epoch``, identical on every rank."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.has_lang))
        pool = _Pool(order)
        any_lang, two_langs = self.has_lang.any(1), self.has_lang.sum(1) >= 2
        for step in range(self._max_steps()):
            ratio = self.ratio_at(step)
            if self.mode == "example":
                picked = pool.take(self.global_batch_size, "any", any_lang)
                if picked is None:
                    return
                yield [self._example_pair(int(i), ratio, rng) for i in picked]
                continue
            batch = self._mono_batch(pool, rng) if rng.random() < ratio else self._cross_batch(pool, two_langs, rng)
            # A draw that cannot be filled (data that is not fully parallel, late in the epoch) falls back
            # to the other kinds of batch the remaining items can still fill; the epoch ends when none can.
            if batch is None:
                batch = self._cross_batch(pool, two_langs, rng) if ratio < 1 else None
            if batch is None and ratio > 0:
                batch = self._mono_batch(pool, rng, any_language=True)
            if batch is None:
                return
            yield batch

    def _mono_batch(self, pool: _Pool, rng: np.random.Generator, any_language: bool = False) -> list[PairRef] | None:
        """An X-X batch in a language drawn by ``language_probs``; a language that cannot fill it is
        left out of the draw and another drawn (with ``any_language``, also those of weight zero)."""
        probs = self.language_probs.copy()
        if any_language:
            probs = np.where(probs > 0, probs, 1e-12)
        while probs.sum() > 0:
            lang = int(rng.choice(len(self.languages), p=probs / probs.sum()))
            picked = pool.take(self.global_batch_size, lang, self.has_lang[:, lang])
            if picked is not None:
                name = self.languages[lang]
                return [PairRef(int(i), name, name) for i in picked]
            probs[lang] = 0.0
        return None

    def _cross_batch(self, pool: _Pool, two_langs: np.ndarray, rng: np.random.Generator) -> list[PairRef] | None:
        picked = pool.take(self.global_batch_size, "two", two_langs)
        return None if picked is None else [self._cross_pair(int(i), rng) for i in picked]

    def _cross_pair(self, item: int, rng: np.random.Generator) -> PairRef:
        """Uniform over the item's ordered language pairs (q != p); with a temperature, the query language
        drawn by ``pair_weights`` among the item's languages, then the passage language among the rest."""
        langs = self.item_languages[item]
        if self.pair_weights is None:
            q, p = rng.choice(len(langs), size=2, replace=False)
        else:
            # Gumbel top-2: the query drawn in proportion to the weights, then the passage among the rest
            keys = self.log_pair_weights[[self.lang_index[lang] for lang in langs]] + rng.gumbel(size=len(langs))
            q, p = np.argpartition(-keys, 1)[:2]
        return PairRef(item, langs[q], langs[p])

    def _example_pair(self, item: int, ratio: float, rng: np.random.Generator) -> PairRef:
        langs = self.item_languages[item]
        if len(langs) < 2 or rng.random() < ratio:
            lang = langs[int(rng.integers(len(langs)))]
            return PairRef(item, lang, lang)
        return self._cross_pair(item, rng)


class _EpochForwarder:
    def __init__(self, batch_sampler: HybridBatchSampler):
        self.batch_sampler = batch_sampler

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


class _Pool:
    """Items of one epoch in shuffled order; ``take`` returns the first ``n`` unused items that qualify,
    in that order, and marks them used (or, when fewer than ``n`` are left, returns None and uses none).

    One cursor per kind of draw (a language, "two languages", "any language") moves forward only: items
    before it that qualify are used. An epoch is O(items x kinds), whatever the languages' balance (a
    list of skipped items, rescanned at every draw, made unbalanced data quadratic)."""

    def __init__(self, order: np.ndarray):
        self.order = order
        self.used = np.zeros(len(order), dtype=bool)  # by item
        self.cursor: dict = {}
        self.short: dict = {}  # kind -> a count it can no longer fill

    def take(self, n: int, kind, qualifies: np.ndarray) -> list[int] | None:
        if self.short.get(kind, n + 1) <= n:
            return None  # this kind had fewer than n left, and used items never come back
        order, used = self.order, self.used
        end = self.cursor.get(kind, 0)
        found = np.empty(0, dtype=np.int64)  # positions in the order, scanned a growing window at a time
        window = max(4 * n, 1024)
        while len(found) < n and end < len(order):
            stop = min(end + window, len(order))
            items = order[end:stop]
            found = np.concatenate([found, np.flatnonzero(qualifies[items] & ~used[items]) + end])
            end, window = stop, window * 2
        if len(found) < n:  # not enough: nothing is consumed
            self.short[kind] = len(found) + 1
            return None
        picked = order[found[:n]]
        used[picked] = True
        self.cursor[kind] = int(found[n - 1]) + 1
        return [int(item) for item in picked]
