"""Is the data path a bottleneck? Sampler + collation throughput (pairs/s) beside training throughput.

Iterates hbt's DataLoader (hybrid sampler, Arrow store, collation; with and without the token cache)
in the main process, then times training steps of the model on the same batches, and prints
data pairs/s ÷ training pairs/s: far above 1 means the GPU/CPU never waits for data.

    python benchmarks/data_throughput.py --model tiny
    python benchmarks/data_throughput.py --model me5_small --batch-size 16 --max-length 64
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch
from common import Stopwatch, make_datamodule, make_encoder
from train_throughput import plain_loop


def data_pairs_per_second(encoder, batch_size: int, cache_tokens: bool, batches: int) -> float:
    dm = make_datamodule(encoder, batch_size, cache_tokens=cache_tokens)
    loader = dm.train_dataloader()  # builds the token cache outside the timed part
    next(iter(loader))
    done, clock = 0, Stopwatch()
    while done < batches:
        for _ in loader:
            done += 1
            if done == batches:
                break
    return batches * batch_size / clock.seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--data-batches", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=10)
    args = parser.parse_args()
    encoder = make_encoder(args.model, args.max_length)
    data = {cache: data_pairs_per_second(encoder, args.batch_size, cache, args.data_batches) for cache in (True, False)}
    train = plain_loop(
        SimpleNamespace(model=args.model, max_length=args.max_length, batch_size=args.batch_size, steps=args.train_steps, warmup=2, lr=3e-5)
    )
    print(f"\nmodel={args.model} batch={args.batch_size} max_length={args.max_length} threads={torch.get_num_threads()}")
    print(f"{'path':<36}{'pairs/s':>10}{'÷ training':>12}")
    print(f"{'training step (forward+backward+AdamW)':<36}{train:>10.1f}{1.0:>12.2f}")
    for cache, value in data.items():
        label = f"sampler + collation, token cache {'on' if cache else 'off'}"
        print(f"{label:<36}{value:>10.1f}{value / train:>12.2f}")


if __name__ == "__main__":
    main()
