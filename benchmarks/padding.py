"""Training padding: the share of padded tokens in hbt's training batches and the step time with the
rows encoded as one padded batch or in ``model.length_groups`` length-sorted groups (each padded only
to its own longest row), on XQuAD-R's training pairs with multilingual-e5-small, bf16 and fp32.

    python benchmarks/padding.py                   # about 3 minutes on 2 idle cores
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import SHARED, make_datamodule, make_encoder

from hbt.eval.lareqa import lareqa_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    encoder = make_encoder("me5_small", args.max_length)
    loader = make_datamodule(encoder, args.batch_size, items=lareqa_items(SHARED / "data" / "xquad-r", articles="train")).train_dataloader()
    batches = [batch for _, batch in zip(range(args.steps + 1), loader)]
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-6, fused=True)
    encoder.train()

    def padding(groups: int) -> float:
        real = padded = 0
        for batch in batches:
            for kind in ("query", "passage"):
                lengths = batch[kind]["attention_mask"].sum(1).sort(descending=True).values
                for part in lengths.tensor_split(groups):
                    real, padded = real + int(part.sum()), padded + len(part) * int(part.max())
        return 1 - real / padded

    def step(batch: dict, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            queries, passages = encoder(batch["query"]), encoder(batch["passage"])
            loss = -(queries @ passages.T / 0.05).float().log_softmax(1).diagonal().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times = {(bf16, groups): [] for bf16 in (True, False) for groups in args.groups}
    for bf16 in (True, False):
        step(batches[0], bf16)  # warm-up
    for _ in range(args.repeats):  # interleaved
        for bf16, groups in times:
            encoder.length_groups = groups
            start = time.perf_counter()
            for batch in batches[1:]:
                step(batch, bf16)
            times[(bf16, groups)].append((time.perf_counter() - start) / args.steps)
    print(
        f"\nbatch {args.batch_size}, max length {args.max_length}, {args.steps} steps x {args.repeats} repeats, {torch.get_num_threads()} threads"
    )
    print(f"{'length_groups':<15}{'padding':>9}{'bf16 s/step':>13}{'fp32 s/step':>13}")
    for groups in args.groups:
        print(
            f"{groups:<15}{100 * padding(groups):>8.1f}%{statistics.median(times[(True, groups)]):>13.3f}{statistics.median(times[(False, groups)]):>13.3f}"
        )


if __name__ == "__main__":
    main()
