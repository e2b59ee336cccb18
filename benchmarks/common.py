"""Shared set-up for the benchmark scripts: the models they compare on and the batches they feed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HBT_SHARED", ROOT.parent / "shared"))
TOY_LANGUAGES = ["en", "de", "es", "fr", "ru", "ar", "zh", "hi", "el"]
TINY = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 512, "max_positions": 256}
# Next to no compute per step: what is left of a step's time is the framework's fixed cost.
MICRO = {"hidden_size": 16, "num_layers": 1, "num_heads": 1, "intermediate_size": 16, "max_positions": 256}


def me5_small_dir() -> Path:
    """multilingual-e5-small as a local HF directory, built offline from ../shared/tools once."""
    target = Path(os.environ.get("HBT_ME5_DIR", ROOT / ".cache" / "me5-small"))
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(SHARED / "tools" / "offline_me5_small.py"), str(target)], check=True)
    return target


def make_encoder(model: str, max_length: int):
    from hbt.models.encoder import Encoder

    lengths = {"max_query_length": max_length, "max_passage_length": max_length}
    if model in ("tiny", "micro"):
        return Encoder(tiny=TINY if model == "tiny" else MICRO, **lengths)
    if model == "me5_small":  # mE5 was trained with these prefixes (conf/model/me5_small.yaml)
        return Encoder(name_or_path=str(me5_small_dir()), query_prefix="query: ", passage_prefix="passage: ", **lengths)
    return Encoder(name_or_path=str(Path(model)), **lengths)


def make_datamodule(encoder, batch_size: int, ratio: float = 0.5, cache_tokens: bool = True, items=None):
    from hbt.data.datamodule import ParallelDataModule
    from hbt.data.toy import toy_items
    from hbt.sampling import HybridBatchSampler

    items = items if items is not None else toy_items("train", TOY_LANGUAGES)
    dm = ParallelDataModule(
        train=lambda: items, sampler=partial(HybridBatchSampler, ratio=ratio, seed=0), batch_size=batch_size, cache_tokens=cache_tokens
    )
    dm.attach_tokenizer(encoder.text_tokenizer)
    return dm


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def anonymous_rss_mb() -> float:
    """Resident anonymous memory: RSS less the pages of mapped files, which the kernel can drop."""
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakMemory:
    """Peak RSS and peak anonymous RSS (sampled every ``interval`` seconds) of this process from its
    creation to :meth:`stop`, in MB above their values at creation."""

    def __init__(self, interval: float = 0.02):
        import threading

        self.base, self.base_anon = peak_rss_mb(), anonymous_rss_mb()
        self.peak_anon = self.base_anon
        self.done = threading.Event()
        self.interval = interval
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.done.wait(self.interval):
            self.peak_anon = max(self.peak_anon, anonymous_rss_mb())

    def stop(self) -> dict:
        self.done.set()
        self.peak_anon = max(self.peak_anon, anonymous_rss_mb())
        return {"peak_rss_mb": peak_rss_mb() - self.base, "peak_anon_mb": self.peak_anon - self.base_anon}


class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start
