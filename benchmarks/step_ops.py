"""Operators per training step: hbt (Lightning) against the same step written by hand.

On a GPU every operator is a kernel launch, and a small model's step is bound by the host launching
them, so the operators hbt adds to the step (duplicate masking, logging) are its fixed cost there. This
counts them on any machine with PyTorch's profiler: the outermost ``aten::`` operators of one step
(the fifth; forward, loss, backward, clipping and the optimizer), for both loops, and lists what hbt runs
more of.

    python benchmarks/step_ops.py                     # micro model, batch 32, length 64, fp32
    python benchmarks/step_ops.py --model me5_small
"""

from __future__ import annotations

import argparse
import collections
import contextlib
from types import SimpleNamespace

import lightning as L
import train_throughput
from torch.profiler import ProfilerActivity, profile

STEP = 4  # the step profiled (0-based), past the first steps' one-off work


def outer_ops(prof) -> collections.Counter:
    """``aten::`` operators not called from inside another one (what the step itself launches)."""

    def outermost(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return False
            parent = parent.cpu_parent
        return event.name.startswith("aten::")

    return collections.Counter(event.name for event in prof.events() if outermost(event))


class ProfileStep(L.Callback):
    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == STEP:
            self.profiler = profile(activities=[ProfilerActivity.CPU])
            self.profiler.__enter__()

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == STEP + 1:
            self.profiler.__exit__(None, None, None)


def hbt_ops(args) -> collections.Counter:
    callback = ProfileStep()
    module, trainer, datamodule = train_throughput.hbt_setup(args, [callback])
    trainer.fit(module, datamodule=datamodule)
    return outer_ops(callback.profiler)


def plain_ops(args) -> collections.Counter:
    loader, step = train_throughput.plain_setup(args)
    for i, batch in enumerate(train_throughput._cycle(loader, args.steps)):
        with profile(activities=[ProfilerActivity.CPU]) if i == STEP else contextlib.nullcontext() as prof:
            step(batch)
        if i == STEP:
            return outer_ops(prof)
    raise RuntimeError("too few steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="micro", help="micro, tiny, me5_small, or a local HF directory")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    cli = parser.parse_args()
    args = SimpleNamespace(
        model=cli.model, batch_size=cli.batch_size, max_length=cli.max_length, steps=STEP + 2, warmup=0, lr=3e-5, precision="32-true"
    )
    hbt, plain = hbt_ops(args), plain_ops(args)
    print(f"\nmodel={args.model} batch={args.batch_size} max_length={args.max_length}, step {STEP + 1}, fp32")
    print(f"operators per step: hbt {sum(hbt.values())}, hand-written {sum(plain.values())} ({sum(hbt.values()) - sum(plain.values()):+d})")
    more = hbt.copy()
    more.subtract(plain)
    print("hbt runs more of: " + ", ".join(f"{name} {n}" for name, n in more.most_common() if n > 0))
    fewer = [f"{name} {-n}" for name, n in more.items() if n < 0]
    print("hbt runs fewer of: " + (", ".join(fewer) if fewer else "none"))


if __name__ == "__main__":
    main()
