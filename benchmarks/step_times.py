"""Every training step's time, synchronized, for hbt (Lightning) and the same step written by hand.

A throughput figure hides one-off costs (on a GPU, CUDA loading a kernel's module on its first use) and
fixed per-step costs; this prints each step's milliseconds so both show. The runs are, in this order,
in one process, on the same model and batches (XQuAD-R's training articles, multilingual-e5-small, batch
32, length 64): the hand-written loop under bf16 autocast, hbt, the hand-written loop in fp32, and hbt again
under cProfile (the 25 functions with the most own time, and the 40 with the most cumulative time).

    python benchmarks/step_times.py --steps 20      # on a GPU host (bf16-mixed); on a CPU, hbt in 32-true
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from types import SimpleNamespace

import lightning as L
import torch
import train_throughput
from common import SHARED

from hbt.eval.lareqa import lareqa_items

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class StepTimes(L.Callback):
    def __init__(self):
        self.ms: list[float] = []

    def on_train_batch_start(self, trainer, *args) -> None:
        sync()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, *args) -> None:
        sync()
        self.ms.append(1000 * (time.perf_counter() - self.start))


def hbt_run(args, profile: bool = False) -> None:
    times = StepTimes()
    module, trainer, datamodule = train_throughput.hbt_setup(args, [times])
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    trainer.fit(module, datamodule=datamodule)
    if profiler:
        profiler.disable()
    print(f"hbt fit total {time.perf_counter() - start:.1f}s", flush=True)
    print("hbt step ms:", " ".join(f"{ms:.0f}" for ms in times.ms), flush=True)
    if profiler:
        for order, count in (("tottime", 25), ("cumulative", 40)):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(count)
            print(out.getvalue())


def plain_run(args, autocast: bool) -> None:
    loader, step = train_throughput.plain_setup(args, DEVICE)
    times = []
    for batch in train_throughput._cycle(loader, args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        step(batch, autocast)
        sync()
        times.append(1000 * (time.perf_counter() - start))
    print(f"plain autocast={autocast} step ms:", " ".join(f"{ms:.0f}" for ms in times), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps after the warm-up (3 steps; all are printed)")
    args = parser.parse_args()
    run = SimpleNamespace(
        model="me5_small",
        batch_size=32,
        max_length=64,
        steps=args.steps,
        warmup=3,
        lr=3e-5,
        items=lareqa_items(SHARED / "data" / "xquad-r", articles="train"),
        precision="bf16-mixed" if DEVICE == "cuda" else "32-true",
    )
    plain_run(run, autocast=True)
    hbt_run(run)
    plain_run(run, autocast=False)
    hbt_run(run, profile=True)


if __name__ == "__main__":
    main()
