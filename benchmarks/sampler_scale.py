"""How drawing one epoch of hybrid batches grows with the number of training items, on balanced data (every
item in every language, as mMARCO) and on unbalanced data (languages missing from many items, as MIRACL or
partly translated sets), beside the pool hbt used before (a list of skipped items rescanned at every draw),
run side by side on the same items. Prints seconds per epoch, the ratio, and seconds per million items.

    python benchmarks/sampler_scale.py
    python benchmarks/sampler_scale.py --sizes 100000 1000000 --baseline-up-to 100000 --temperature 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import hbt.sampling
from hbt.hardware import describe_cpu
from hbt.sampling import HybridBatchSampler


class SkippedListPool:
    """The earlier pool, kept as the baseline: skipped items wait in a list that every draw scans first."""

    def __init__(self, order: np.ndarray):
        self.order, self.next, self.deferred = order, 0, []
        self.position = {int(item): i for i, item in enumerate(order)}

    def take(self, n: int, kind, qualifies: np.ndarray) -> list[int] | None:
        picked: list[int] = []
        kept: list[int] = []
        for item in self.deferred:
            (picked if len(picked) < n and qualifies[item] else kept).append(item)
        while len(picked) < n and self.next < len(self.order):
            item = int(self.order[self.next])
            self.next += 1
            (picked if qualifies[item] else kept).append(item)
        if len(picked) < n:
            self.deferred = sorted(picked + kept, key=self.position.__getitem__)
            return None
        self.deferred = kept
        return picked


def items_of(kind: str, n: int) -> list[list[str]]:
    if kind == "balanced":
        return [["ar", "de", "en", "es", "hi", "zh"]] * n
    # every item in English, 40% also in German, 5% also in Swahili
    return [["en", "de", "sw"] if i % 20 == 0 else ["en", "de"] if i % 5 < 2 else ["en"] for i in range(n)]


def epoch_seconds(items, batch_size: int, temperature, pool) -> tuple[float, int]:
    original = hbt.sampling._Pool
    hbt.sampling._Pool = pool
    try:
        sampler = HybridBatchSampler(items, batch_size=batch_size, ratio=0.5, seed=0, temperature=temperature)
        start = time.perf_counter()
        batches = sum(1 for _ in sampler.global_batches(0))
        return time.perf_counter() - start, batches
    finally:
        hbt.sampling._Pool = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 50_000, 100_000, 400_000])
    parser.add_argument("--baseline-up-to", type=int, default=100_000, help="the baseline is quadratic: skip it above this")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=None)
    args = parser.parse_args()
    print(f"CPU: {describe_cpu()}; batch {args.batch_size}, ratio 0.5, temperature {args.temperature}")
    print(f"{'data':<11}{'items':>9}{'batches':>9}{'hbt s':>9}{'baseline s':>12}{'baseline/hbt':>14}{'hbt s per M':>13}")
    for kind in ("balanced", "unbalanced"):
        for n in args.sizes:
            items = items_of(kind, n)
            seconds, batches = epoch_seconds(items, args.batch_size, args.temperature, hbt.sampling._Pool)
            base = epoch_seconds(items, args.batch_size, args.temperature, SkippedListPool)[0] if n <= args.baseline_up_to else None
            ratio = f"{base / seconds:.1f}x" if base else "-"
            base_text = f"{base:.2f}" if base else "-"
            print(f"{kind:<11}{n:>9}{batches:>9}{seconds:>9.2f}{base_text:>12}{ratio:>14}{seconds / n * 1e6:>13.1f}", flush=True)


if __name__ == "__main__":
    main()
