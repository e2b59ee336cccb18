"""Speed against the machine's own limit: hbt's encoding and training as a fraction of the measured
dense-matmul peak, and against sentence-transformers at its default and at its best (bf16) settings.

Everything is measured in one run, on this machine, on real multilingual text (XQuAD-R's sentences and
questions, 11 languages) with multilingual-e5-small; the contenders run interleaved, ``--repeats``
times, so drift in machine load hits each alike, and the median is reported. FLOPs are counted from the
model's shapes and the real (unpadded) token counts of the texts: per token and layer 2·(4h² + 2h·f)
for the projections and the feed-forward block, plus 4·L·h for the attention scores and their weighted
sum over a text of L tokens; a training step counts forward and backward as 3x the forward. Padding,
extra work the hardware does, is not counted as useful work. The peak is the better of a square matmul
and a linear layer of the model's own feed-forward shape; since a shared machine's speed drifts, the
peak is measured again right before each timing of hbt's default encoding, and the fraction of the peak
is the median of those side-by-side pairs. hbt's compiled encoding (``evaluator.compile``, opt-in) is timed
the same way, against its own peak, after one untimed call that compiles it (``--compiled off`` skips it);
hbt's compiled training (``compile=true``, opt-in) is a fourth trainer, on GPUs (``--train-compiled``).

    python benchmarks/hardware_limit.py --repeats 2 --train-steps 8   # 9-16 minutes on 2 idle cores

On a GPU host the same script measures the GPU (its bf16 and fp32 matmul peak, MFU of encoding and
training, sentence-transformers on the GPU).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from types import SimpleNamespace

import torch
import train_throughput
from common import SHARED, make_encoder

from hbt.eval.lareqa import lareqa_items, load_lareqa
from hbt.hardware import default_precision, describe_cpu
from hbt.models.precision import encode_precision, token_budget
from hbt.models.tokenizer import token_batches

GOALS = {  # the targets issue #18 sets, each a ratio measured in this run
    "hbt encode (default) / ST encode (default)": 1.8,
    "hbt encode (default) / ST encode (bf16, best batch)": 1.1,
    "hbt train (default) / ST train (default)": 1.4,
    "hbt encode (default) / bf16 matmul peak": 0.5,
    "hbt encode (compiled, opt-in) / bf16 matmul peak": 0.5,
    "hbt train (compile=true, opt-in) / ST train (default)": 1.4,
}


def machine(device: torch.device) -> str:
    """Which hardware the figures are of: the GPU's name, or the CPU's model and its bf16 instruction
    sets. The bf16 peak depends on them far more than on load, and a shared virtual machine is not
    always placed on the same CPU (docs/benchmarks.md)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else describe_cpu()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn, flops: float, device: torch.device, seconds: float) -> float:
    """FLOP/s of the best of three timed rounds of ``fn`` (``flops`` each call)."""
    fn()
    best = 0.0
    for _ in range(3):
        sync(device)
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            fn()
            count += 1
        sync(device)
        best = max(best, flops * count / (time.perf_counter() - start))
    return best


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int, shape: tuple[int, int, int], seconds: float = 1.0) -> float:
    """The machine's dense-matmul limit in ``dtype``: the better of an n x n by n x n product (2n³ FLOPs)
    and a linear layer of the model's own largest shape (``shape``: tokens, in, out), which on some
    hardware runs faster than the square one."""
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    tokens, d_in, d_out = shape
    x, w = torch.randn(tokens, d_in, device=device).to(dtype), torch.randn(d_out, d_in, device=device).to(dtype)
    square = rate(lambda: torch.matmul(a, b), 2 * n**3, device, seconds)
    linear = rate(lambda: torch.nn.functional.linear(x, w), 2 * tokens * d_in * d_out, device, seconds)
    return max(square, linear)


def xquad_r_texts(per_language: int) -> list[str]:
    """Real multilingual text of the lengths retrieval encodes: the first ``per_language`` answer
    sentences and half as many questions of each of XQuAD-R's 11 languages."""
    bench = load_lareqa("xquad_r", SHARED / "data" / "xquad-r")
    texts = [t for lang in sorted(bench.candidates) for t in bench.candidates[lang][:per_language]]
    return texts + [t for lang in sorted(bench.queries) for _, t in bench.queries[lang][: per_language // 2]]


def forward_flops(config, lengths: list[int]) -> float:
    h = config.hidden_size
    f = config.intermediate_size
    per_token = 2 * (4 * h * h + 2 * h * f)
    return config.num_hidden_layers * sum(per_token * n + 4 * n * n * h for n in lengths)


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(len(rows) * max(lengths[i] for i in rows) for rows in batches)
    return 1 - sum(lengths) / padded


def char_sorted(texts: list[str], size: int) -> list[list[int]]:
    """sentence-transformers' batching (and hbt's before): longest first by characters, fixed size."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[i : i + size] for i in range(0, len(order), size)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts-per-language", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=128, help="encoding's maximum tokens per text")
    parser.add_argument("--batch-size", type=int, default=256, help="hbt's encoding batch cap (evaluator.batch_size)")
    parser.add_argument("--max-tokens", type=int, default=None, help="hbt's encoding token budget (default: evaluator.max_tokens=auto)")
    parser.add_argument("--budgets", type=int, nargs="*", default=[2048, 4096, 8192, 16384], help="token budgets compared (hbt, bf16)")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-length", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--warmup-round",
        choices=["auto", "on", "off"],
        default="auto",
        help="one untimed round of every contender first (auto: on a GPU, which loads each kernel on its first use)",
    )
    parser.add_argument("--matmul-n", type=int, default=None, help="matrix size for the peak (2048 on CPU, 8192 on GPU)")
    parser.add_argument(
        "--compiled", choices=["on", "off"], default="on", help="also time hbt's compiled encoding (evaluator.compile; compiles once first)"
    )
    parser.add_argument(
        "--train-compiled",
        choices=["auto", "on", "off"],
        default="auto",
        help="also time hbt's training with compile=true (auto: on a GPU; on this CPU it gained nothing, docs/benchmarks.md)",
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = args.matmul_n or (8192 if device.type == "cuda" else 2048)
    args.max_tokens = args.max_tokens or token_budget("auto", device)
    print(f"measuring on {device}: {machine(device)}, {torch.get_num_threads()} threads", flush=True)

    texts = xquad_r_texts(args.texts_per_language)
    encoder = make_encoder("me5_small", args.max_length).to(device)
    config = encoder.backbone.config
    lengths = [len(ids) for ids in encoder.tokenize_compact(texts, "passage")]
    encode_flops = forward_flops(config, lengths)
    default_encode = encode_precision("auto", device)

    directory = tempfile.mkdtemp(prefix="hbt-st-")
    encoder.save_pretrained(directory)
    from sentence_transformers import SentenceTransformer

    st = {
        "fp32": SentenceTransformer(directory, device=str(device)),
        "bf16": SentenceTransformer(directory, device=str(device), model_kwargs={"torch_dtype": torch.bfloat16}),
    }
    for model in st.values():
        model.max_seq_length = args.max_length

    def hbt_encode(precision: str, budget: int | None = None, compile: bool = False):
        return lambda: encoder.encode(
            texts, "passage", batch_size=args.batch_size, max_tokens=budget or args.max_tokens, precision=precision, compile=compile
        )

    def st_encode(kind: str, batch: int):
        return lambda: st[kind].encode(texts, batch_size=batch, prompt="passage: ", normalize_embeddings=True, convert_to_tensor=True)

    default_name = f"hbt encode (default: {default_encode}, max_tokens {args.max_tokens})"
    compiled_name = f"hbt encode ({default_encode}, compiled: evaluator.compile)"
    contenders = {
        default_name: hbt_encode(default_encode),
        **({compiled_name: hbt_encode(default_encode, compile=True)} if args.compiled == "on" else {}),
        "hbt encode (bf16-mixed: autocast, the default before)": hbt_encode("bf16-mixed"),
        "hbt encode (fp32)": hbt_encode("fp32"),
        "ST encode (default: fp32, batch 32)": st_encode("fp32", 32),
        "ST encode (bf16, batch 32)": st_encode("bf16", 32),
        "ST encode (bf16, batch 128)": st_encode("bf16", 128),
        **{f"hbt encode ({default_encode}, max_tokens {b})": hbt_encode(default_encode, b) for b in args.budgets if b != args.max_tokens},
    }
    # The same embeddings (up to precision), or the comparison would be meaningless.
    reference = st_encode("fp32", 32)().float().cpu()
    mine = hbt_encode(default_encode)().float()
    agreement = float((reference * mine).sum(1).min())

    train_items = lareqa_items(SHARED / "data" / "xquad-r", articles="train")
    train_args = SimpleNamespace(
        model="me5_small",
        batch_size=args.train_batch,
        max_length=args.train_length,
        steps=args.train_steps,
        warmup=2,
        lr=3e-5,
        items=train_items,
        precision=default_precision(device.type == "cuda"),
        st_bf16=False,
    )

    trainers = {
        f"hbt train (default: {train_args.precision})": lambda: train_throughput.hbt_lightning(train_args),
        "ST train (default: fp32)": lambda: train_throughput.sentence_transformers(
            SimpleNamespace(**{**vars(train_args), "st_bf16": False})
        ),
        "ST train (bf16)": lambda: train_throughput.sentence_transformers(SimpleNamespace(**{**vars(train_args), "st_bf16": True})),
    }
    compiled_train = f"hbt train ({train_args.precision}, compile=true, opt-in)"
    if args.train_compiled == "on" or (args.train_compiled == "auto" and device.type == "cuda"):
        # It compiles in the 2 untimed warm-up steps of each repeat (inductor's cache makes the later ones quick).
        trainers[compiled_train] = lambda: train_throughput.hbt_lightning(SimpleNamespace(**{**vars(train_args), "compile": "default"}))

    peaks: dict[str, list[float]] = {"bf16": [], "fp32": []}
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    pairs_per_s: dict[str, list[float]] = {name: [] for name in trainers}
    # This machine's speed drifts by up to 2x within minutes (a shared virtual machine), so hbt's
    # default encoding is timed right after a bf16 peak measurement, and its fraction of the peak is
    # taken repeat by repeat (the median of those is reported), not median against median.
    peak_fraction: list[float] = []
    paired = {default_name: peak_fraction, compiled_name: []}  # each timed right after its own bf16 peak
    compile_seconds = None
    if compiled_name in contenders:  # torch.compile's one-off cost, paid once per set of weights, not timed below
        compile_seconds = timed(contenders[compiled_name])
        print(f"  {compiled_name}: first call (compiles) {compile_seconds:.1f} s", flush=True)
        compiled_embeddings = hbt_encode(default_encode, compile=True)().float()
        compiled_agreement = float((compiled_embeddings * mine).sum(1).min())
    shape = (args.max_tokens, config.hidden_size, config.intermediate_size)
    if args.warmup_round == "on" or (args.warmup_round == "auto" and device.type == "cuda"):
        # CUDA loads a kernel's module on its first use (lazy loading), so without this round whichever
        # contender first runs a kernel pays for loading it inside its own timing. On an H200 (docs/
        # benchmarks.md) the first training loop in a process had steps of 1.9 and 2.5 s among its
        # 60-200 ms ones. Every trainer repeats its timed steps' very batches (same seeds), shapes and all.
        for run in contenders.values():
            run()
        for run in trainers.values():
            run()
        print("warm-up round done (untimed)", flush=True)
    for repeat in range(args.repeats):  # interleaved
        peaks["fp32"].append(matmul_peak(torch.float32, device, n, shape))
        print(f"  fp32 matmul peak: {peaks['fp32'][-1] / 1e9:.1f} GFLOP/s", flush=True)
        for name, run in contenders.items():
            if name in paired:
                peaks["bf16"].append(matmul_peak(torch.bfloat16, device, n, shape))
                print(f"  bf16 matmul peak: {peaks['bf16'][-1] / 1e9:.1f} GFLOP/s", flush=True)
            seconds[name].append(timed(run))
            if name in paired:
                paired[name].append(encode_flops / seconds[name][-1] / peaks["bf16"][-1])
            # As it goes, so that a run cut short still shows what it measured.
            print(f"  {name}: {len(texts) / seconds[name][-1]:.1f} texts/s", flush=True)
        for name, run in trainers.items():
            pairs_per_s[name].append(run())
            print(f"  {name}: {pairs_per_s[name][-1]:.2f} pairs/s", flush=True)
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

    peak = {k: statistics.median(v) for k, v in peaks.items()}
    enc = {name: len(texts) / statistics.median(v) for name, v in seconds.items()}
    train = {name: statistics.median(v) for name, v in pairs_per_s.items()}
    # The timed steps' batches (the same pairs every contender trains on): their real token counts.
    timed_batches = train_throughput.batches_for(train_args, make_encoder("me5_small", args.train_length))[train_args.warmup :]
    masks = [batch[kind]["attention_mask"] for batch in timed_batches for kind in ("query", "passage")]
    train_lengths = [int(n) for mask in masks for n in mask.sum(1)]
    pair_flops = 3 * forward_flops(config, train_lengths) / (len(timed_batches) * args.train_batch)
    train_padding = 1 - sum(train_lengths) / sum(mask.numel() for mask in masks)

    hbt_enc = enc[default_name]
    st_bf16_best = max(enc["ST encode (bf16, batch 32)"], enc["ST encode (bf16, batch 128)"])
    hbt_train = train[f"hbt train (default: {train_args.precision})"]
    flops_per_text = encode_flops / len(texts)
    print(
        f"\ndevice={device}: {machine(device)}, {torch.get_num_threads()} threads, torch {torch.__version__}, model multilingual-e5-small, "
        f"{len(texts)} XQuAD-R texts ({sum(lengths)} tokens, max {args.max_length}), repeats={args.repeats}"
    )
    print(f"embeddings, hbt default vs ST fp32: min cosine {agreement:.6f}")
    if compile_seconds is not None:
        print(
            f"embeddings, hbt compiled vs hbt default: min cosine {compiled_agreement:.6f}; compiling took {compile_seconds:.1f} s (once)"
        )
    print(
        f"\nmatmul peak (best of {n}x{n} square and the {shape[0]}x{shape[1]} by {shape[1]}x{shape[2]} linear), median of repeats: "
        f"bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s (each repeat: {', '.join(f'{p / 1e9:.0f}' for p in peaks['bf16'])}), fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s"
    )
    for name, fractions in paired.items():
        if fractions:
            print(f"{name} / bf16 peak measured just before it, each repeat: {', '.join(f'{f:.2f}' for f in fractions)}")
    print(f"\n{'encoding':<48}{'texts/s':>10}{'GFLOP/s':>10}{'% bf16 peak':>13}{'% fp32 peak':>13}")
    for name, rate in enc.items():
        flops = rate * flops_per_text
        print(f"{name:<48}{rate:>10.1f}{flops / 1e9:>10.1f}{100 * flops / peak['bf16']:>12.1f}%{100 * flops / peak['fp32']:>12.1f}%")
    print(
        f"\n{f'training (batch {args.train_batch}, length {args.train_length})':<48}{'pairs/s':>10}{'GFLOP/s':>10}{'% bf16 peak':>13}{'% fp32 peak':>13}"
    )
    for name, rate in train.items():
        flops = rate * pair_flops
        print(f"{name:<48}{rate:>10.2f}{flops / 1e9:>10.1f}{100 * flops / peak['bf16']:>12.1f}%{100 * flops / peak['fp32']:>12.1f}%")
    print(
        f"\nMFU on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'this CPU'} (useful FLOP/s over the measured bf16 matmul peak): "
        f"hbt encoding {100 * hbt_enc * flops_per_text / peak['bf16']:.1f}%, hbt training {100 * hbt_train * pair_flops / peak['bf16']:.1f}%"
    )
    print("\npadding (share of the encoded tokens that are padding):")
    print(
        f"  hbt: token-sorted, <= {args.batch_size} texts and {args.max_tokens} tokens: "
        f"{100 * padding_fraction(token_batches(lengths, args.batch_size, args.max_tokens), lengths):.1f}%"
    )
    print(f"  character-sorted, batch 32 (sentence-transformers): {100 * padding_fraction(char_sorted(texts, 32), lengths):.1f}%")
    print(f"  character-sorted, batch 128 (hbt before): {100 * padding_fraction(char_sorted(texts, 128), lengths):.1f}%")
    print(f"  training batches (query and passage, padded to each batch's longest): {100 * train_padding:.1f}%")
    measured = {
        "hbt encode (default) / ST encode (default)": hbt_enc / enc["ST encode (default: fp32, batch 32)"],
        "hbt encode (default) / ST encode (bf16, best batch)": hbt_enc / st_bf16_best,
        "hbt train (default) / ST train (default)": hbt_train / train["ST train (default: fp32)"],
        "hbt encode (default) / bf16 matmul peak": statistics.median(peak_fraction),
    }
    if compiled_train in train:
        measured["hbt train (compile=true, opt-in) / ST train (default)"] = train[compiled_train] / train["ST train (default: fp32)"]
    if paired[compiled_name]:
        measured["hbt encode (compiled, opt-in) / bf16 matmul peak"] = statistics.median(paired[compiled_name])
        print(f"\nhbt encode compiled / default (same run, medians): {enc[compiled_name] / hbt_enc:.2f}x")
    print(f"\n{'ratio':<56}{'measured':>10}{'goal':>8}  met")
    for name, value in measured.items():
        print(f"{name:<56}{value:>10.2f}{GOALS[name]:>8.2f}  {'yes' if value >= GOALS[name] else 'NO'}")


if __name__ == "__main__":
    main()
