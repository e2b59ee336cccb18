"""Progress of long work (encoding, index building, mining, tokenization): a bar with rate and ETA on a
terminal, a plain log line with the same figures every ``interval`` seconds where output goes to a file
(cluster job logs), and nothing for work that ends within a few seconds.

``enabled`` is a config value (``evaluator.progress``, ``mine.progress``): ``auto`` (the default) shows
progress as above, ``true`` the same, ``false`` nothing."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from hbt.errors import ConfigError

log = logging.getLogger("hbt.progress")
T = TypeVar("T")
CHOICES = ("auto", True, False)
INTERVAL = 30.0  # seconds between log lines where output is no terminal


def check_progress(enabled, key: str):
    """``auto`` / ``true`` / ``false`` (YAML booleans included); anything else is one line naming the key."""
    if isinstance(enabled, str) and enabled.lower() in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[enabled.lower()]
    if enabled in CHOICES:
        return enabled
    raise ConfigError(key, f"expected auto, true or false; got {enabled!r}")


def progress(
    items: Iterable[T],
    total: float | None,
    desc: str,
    enabled="auto",
    unit: str = "texts",
    weight: Callable[[T], float] | None = None,
    interval: float | None = None,
    stream=None,
) -> Iterable[T]:
    """``items`` with progress shown; ``total`` in ``unit`` (plural: texts, queries), each item counting ``weight(item)`` of them
    (1 without a weight)."""
    if enabled is False:
        return items
    stream = stream or sys.stderr
    if stream.isatty():
        return _bar(items, total, desc, unit, weight, stream)
    return _lines(items, total, desc, unit, weight, interval)


def _bar(items, total, desc, unit, weight, stream) -> Iterator:
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit=unit, leave=False, delay=2.0, file=stream, dynamic_ncols=True) as bar:
        for item in items:
            yield item
            bar.update(weight(item) if weight else 1)


def _lines(items, total, desc, unit, weight, interval) -> Iterator:
    ticker = Ticker(desc, total, unit, interval)
    for item in items:
        yield item
        ticker.add(weight(item) if weight else 1)


class Ticker:
    """Counts work done and logs a :func:`status_line` every ``interval`` seconds; also for work that
    reports its own pieces (a ``datasets.map`` function: each worker process counts in its own copy, on
    the system-wide monotonic clock started here)."""

    def __init__(self, desc: str, total: float | None, unit: str = "texts", interval: float | None = None):
        self.desc, self.total, self.unit = desc, total, unit
        self.interval = INTERVAL if interval is None else interval
        self.done = 0.0
        self.start = self.last = time.monotonic()

    def add(self, amount: float) -> None:
        now = time.monotonic()
        self.done += amount
        if now - self.last >= self.interval:
            self.last = now
            log.info("%s", status_line(self.desc, self.done, self.total, now - self.start, self.unit))


def status_line(desc: str, done: float, total: float | None, elapsed: float, unit: str) -> str:
    """``encode passage: 12000/50000 texts (24%), 410.3 texts/s, ETA 1m33s``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        eta = _duration((total - done) / rate) if rate > 0 else "?"
        return f"{desc}: {done:.0f}/{total:.0f} {unit} ({100 * done / total:.0f}%), {rate:.1f} {unit}/s, ETA {eta}"
    return f"{desc}: {done:.0f} {unit}, {rate:.1f} {unit}/s"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
