"""Where hbt's encoding time goes: PyTorch's profiler over Encoder.encode, operator by operator.

The same texts and model as ``hardware_limit.py`` (XQuAD-R's sentences and questions, 11 languages,
multilingual-e5-small, hbt's default precision and token budget). It prints each operator's share of the
time and, for the matrix multiplies, the FLOP/s they reach on their own (FLOPs from the model's shapes and
the padded token counts of the batches), which says how much of the gap to the machine's matmul peak is
the matmuls and how much everything between them (attention, GELU, layer norms, casts).

With ``--pairs N`` it first times the given precisions against each other, N rounds interleaved (the
order alternating), and prints each round's speeds and the median speed-up of the first over the others:
on a machine whose speed drifts, side-by-side pairs are what can tell two close contenders apart.

    python benchmarks/encode_profile.py --precision bf16 bf16-mixed --pairs 8     # about 3 minutes on 2 cores

A precision with ``+compiled`` (``bf16+compiled``, ``fp32+compiled``) encodes through torch.compile
(``evaluator.compile``); its one-off compile happens in the untimed warm-up, and its linear layers are
inductor's fused oneDNN calls (``mkldnn::_linear_pointwise``):

    python benchmarks/encode_profile.py --precision bf16+compiled bf16 --pairs 8  # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import make_encoder
from hardware_limit import forward_flops, matmul_peak, timed, xquad_r_texts
from torch.profiler import ProfilerActivity, profile

from hbt.models.precision import encode_precision, token_budget
from hbt.models.tokenizer import token_batches


def pad_row_by_row(text_tokenizer, ids) -> dict[str, torch.Tensor]:
    """hbt's padding until it became one array operation per batch (kept as the baseline): a tensor copy per row."""
    width = max((len(row) for row in ids), default=0)
    input_ids = torch.full((len(ids), width), text_tokenizer.tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def host_work(encoder, texts: list[str], batch_size: int, budget: int) -> None:
    """Work an encode pass does on the host besides running the model (best of 3 each). On an H200 the
    GPU was busy a fifth of a multilingual-e5-small pass or less (docs/benchmarks.md): host work bounds
    it. The padding is timed against the row-by-row way it was done before, on the same batches (and
    checked to give the same tensors)."""
    best = lambda fn: min(timed(fn) for _ in range(3))
    tokenize = best(lambda: encoder.tokenize_compact(texts, "passage"))
    ids = encoder.tokenize_compact(texts, "passage")
    batches = token_batches([len(row) for row in ids], batch_size, budget)
    for rows in batches:
        new, old = encoder.text_tokenizer.pad([ids[i] for i in rows]), pad_row_by_row(encoder.text_tokenizer, [ids[i] for i in rows])
        assert all(torch.equal(new[k], old[k]) for k in old), "padding differs from the row-by-row reference"
    pad = best(lambda: [encoder.text_tokenizer.pad([ids[i] for i in rows]) for rows in batches])
    pad_before = best(lambda: [pad_row_by_row(encoder.text_tokenizer, [ids[i] for i in rows]) for rows in batches])
    print(
        f"host work per pass ({len(batches)} batches): tokenizing {tokenize:.3f} s, padding {pad:.4f} s "
        f"(row by row, as before: {pad_before:.4f} s, {pad_before / pad:.1f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts-per-language", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=None, help="default: evaluator.max_tokens=auto")
    parser.add_argument(
        "--precision", nargs="+", default=["auto"], help="fp32, bf16, bf16-mixed, fp16, auto; fp32 and bf16 also with +compiled"
    )
    parser.add_argument("--rows", type=int, default=10, help="operators listed")
    parser.add_argument("--pairs", type=int, default=0, help="rounds of the precisions timed against each other first")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    budget = args.max_tokens or token_budget("auto", device)

    texts = xquad_r_texts(args.texts_per_language)
    encoder = make_encoder("me5_small", args.max_length).to(device)
    config = encoder.backbone.config
    lengths = [len(ids) for ids in encoder.tokenize_compact(texts, "passage")]
    padded = sum(len(rows) * max(lengths[i] for i in rows) for rows in token_batches(lengths, args.batch_size, budget))
    h, f = config.hidden_size, config.intermediate_size
    matmul_flops = config.num_hidden_layers * padded * 2 * (4 * h * h + 2 * h * f)
    print(
        f"device={device} ({torch.get_num_threads()} threads), {len(texts)} texts, {sum(lengths)} tokens "
        f"({padded} once padded), max_tokens {budget}"
    )
    host_work(encoder, texts, args.batch_size, budget)
    precisions = [
        encode_precision(name.removesuffix("+compiled"), device) + ("+compiled" if name.endswith("+compiled") else "")
        for name in args.precision
    ]

    def timed_pass(precision: str) -> float:
        base = precision.removesuffix("+compiled")
        return timed(
            lambda: encoder.encode(
                texts, "passage", batch_size=args.batch_size, max_tokens=budget, precision=base, compile=base != precision
            )
        )

    if args.pairs:
        for precision in precisions:  # warm-up
            timed_pass(precision)
        speedups: dict[str, list[float]] = {other: [] for other in precisions[1:]}
        for round_ in range(args.pairs):
            order = precisions if round_ % 2 == 0 else precisions[::-1]
            took = {precision: timed_pass(precision) for precision in order}
            for other in speedups:
                speedups[other].append(took[other] / took[precisions[0]])
            print(f"round {round_ + 1}: " + ", ".join(f"{p} {len(texts) / took[p]:.1f} texts/s" for p in precisions), flush=True)
        for other, values in speedups.items():
            print(f"{precisions[0]} over {other}: median {statistics.median(values):.2f}x (min {min(values):.2f}, max {max(values):.2f})")
    for precision in precisions:
        timed_pass(precision)  # warm-up: one-off allocations and kernel selection
        peak = matmul_peak(torch.bfloat16, device, 2048, (budget, h, f))
        wall = timed_pass(precision)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])) as prof:
            timed_pass(precision)
        events = sorted(
            prof.key_averages(), key=lambda e: e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total, reverse=True
        )
        own = [(e.key, (e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total) / 1e6) for e in events]
        total = sum(seconds for _, seconds in own)
        linear = sum(seconds for key, seconds in own if key in ("aten::addmm", "aten::mm", "aten::matmul", "mkldnn::_linear_pointwise"))
        print(f"\nprecision {precision}: {len(texts) / wall:.1f} texts/s unprofiled; profiled operator time {total:.2f} s")
        print(
            f"  matrix multiplies (the linear layers): {linear:.2f} s ({100 * linear / total:.0f}%), {matmul_flops / linear / 1e9:.0f} GFLOP/s on their own"
        )
        print(f"  everything else: {total - linear:.2f} s ({100 * (total - linear) / total:.0f}%)")
        print(
            f"  bf16 matmul peak measured just before: {peak / 1e9:.0f} GFLOP/s; the linear layers at "
            f"{100 * matmul_flops / linear / peak:.0f}% of it, the whole encoding (unprofiled) at "
            f"{100 * forward_flops(config, lengths) / wall / peak:.0f}% (useful FLOPs, as hardware_limit.py counts them)"
        )
        print(f"  {'operator':<52}{'s':>8}{'share':>8}{'calls':>8}")
        calls = {e.key: e.count for e in events}
        for key, seconds in own[: args.rows]:
            print(f"  {key[:50]:<52}{seconds:>8.2f}{100 * seconds / total:>7.1f}%{calls[key]:>8}")


if __name__ == "__main__":
    main()
