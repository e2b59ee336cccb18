"""GradCache memory: peak memory of a training step at 16x the chunk's batch size vs the chunk's own.

Each configuration runs in a fresh process (peak RSS cannot be reset); on a GPU host the CUDA peak
(`torch.cuda.max_memory_allocated`) is reported instead.

    python benchmarks/grad_cache_memory.py --model me5_small --chunk 8 --max-length 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one_step(model: str, batch_size: int, chunk: int | None, max_length: int) -> dict:
    from functools import partial

    import torch
    from common import make_datamodule, make_encoder, peak_rss_mb

    from hbt.grad_cache import GradCache
    from hbt.loss import InfoNCELoss
    from hbt.module import RetrieverModule

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = make_encoder(model, max_length).to(device)
    grad_cache = GradCache(chunk) if chunk else None
    module = RetrieverModule(encoder, InfoNCELoss(0.05), optimizer=partial(torch.optim.AdamW, lr=1e-5), grad_cache=grad_cache)
    optimizer = module.configure_optimizers()
    batch = next(iter(make_datamodule(encoder, batch_size).train_dataloader()))
    batch = {k: ({n: t.to(device) for n, t in v.items()} if isinstance(v, dict) else v) for k, v in batch.items()}
    setup_mb = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # the second step has Adam's state allocated
        optimizer.zero_grad()
        if chunk:
            module.batch_loss(batch)[0].backward()
        else:
            loss, _ = module.contrastive_loss(encoder(batch["query"]), encoder(batch["passage"]), None)
            loss.backward()
        optimizer.step()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()
    return {"device": device, "setup_mb": setup_mb, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--factor", type=int, default=16)
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        batch, chunk = int(args._child[0]), int(args._child[1]) or None
        print(json.dumps(one_step(args.model, batch, chunk, args.max_length)))
        return
    big = args.chunk * args.factor
    configs = {
        f"batch {args.chunk} (the chunk), no GradCache": (args.chunk, 0),
        f"batch {big}, GradCache chunk {args.chunk}": (big, args.chunk),
        f"batch {big}, no GradCache": (big, 0),
    }
    results = {}
    for name, (batch, chunk) in configs.items():
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--model",
                args.model,
                "--max-length",
                str(args.max_length),
                "--_child",
                str(batch),
                str(chunk),
                "x",
            ],
            check=True,
            capture_output=True,
            text=True,
            cwd=HERE,
        )
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = next(iter(results.values()))
    print(
        f"\nmodel={args.model} max_length={args.max_length} device={base['device']} (peak {'RSS' if base['device'] == 'cpu' else 'CUDA allocated'})"
    )
    print(f"{'configuration':<40}{'peak MB':>10}{'ratio':>8}{'above set-up MB':>17}{'ratio':>8}")
    for name, r in results.items():
        extra, base_extra = r["peak_mb"] - r["setup_mb"], base["peak_mb"] - base["setup_mb"]
        print(f"{name:<40}{r['peak_mb']:>10.0f}{r['peak_mb'] / base['peak_mb']:>8.2f}{extra:>17.0f}{extra / base_extra:>8.2f}")


if __name__ == "__main__":
    main()
