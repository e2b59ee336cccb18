"""Training throughput (pairs/s): hbt (Lightning) vs a hand-written PyTorch loop vs sentence-transformers.

All three train the same encoder on the same pairs, batch size and maximum length with AdamW (fused, as
hbt's default config and the Hugging Face trainer use), InfoNCE
at temperature 0.05 (= MultipleNegativesRankingLoss scale 20) and in-batch negatives, one after the
other in this process. The first `--warmup` steps of each are not timed.

    python benchmarks/train_throughput.py --model tiny --batch-size 32 --steps 60
    python benchmarks/train_throughput.py --model me5_small --batch-size 16 --max-length 64 --steps 12
    python benchmarks/train_throughput.py --model micro --batch-size 8 --max-length 16 --steps 300 --skip-st

``--model micro`` (one layer, 16 wide) leaves next to no compute in a step, so the difference in step time
between hbt and the plain loop is the framework's fixed per-step cost (printed in ms).
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import lightning as L
import torch
from common import Stopwatch, make_datamodule, make_encoder


def batches_for(args, encoder) -> list[dict]:
    return list(
        _cycle(make_datamodule(encoder, args.batch_size, items=getattr(args, "items", None)).train_dataloader(), args.warmup + args.steps)
    )


def plain_setup(args, device: str = "cpu") -> tuple:
    """The reference: the same step as hbt's written by hand. Returns the loader (batches made live, as
    in hbt) and ``step(batch, autocast=False)``, one training step (bf16 autocast with ``autocast``)."""
    from hbt.loss import InfoNCELoss
    from hbt.module import warmup_linear

    torch.manual_seed(0)
    encoder = make_encoder(args.model, args.max_length).to(device)
    loader = make_datamodule(encoder, args.batch_size, items=getattr(args, "items", None)).train_dataloader()
    loss_fn = InfoNCELoss(0.05)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=args.lr, weight_decay=0.01, fused=True)
    scheduler = warmup_linear(optimizer, args.warmup + args.steps)
    encoder.train()

    def step(batch: dict, autocast: bool = False) -> None:
        if device != "cpu":
            batch = {kind: {k: v.to(device) for k, v in batch[kind].items()} for kind in ("query", "passage")}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            queries, passages = encoder(batch["query"]), encoder(batch["passage"])
            loss, _ = loss_fn(queries, passages, torch.arange(len(queries), device=device))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        optimizer.step()
        scheduler.step()

    return loader, step


def plain_loop(args) -> float:
    """Pairs/s of the hand-written step (:func:`plain_setup`) over the steps after ``args.warmup``."""
    loader, step = plain_setup(args)
    for i, batch in enumerate(_cycle(loader, args.warmup + args.steps)):
        if i == args.warmup:
            clock = Stopwatch()
        step(batch)
    return args.steps * args.batch_size / clock.seconds()


def _cycle(loader, n: int):
    done = 0
    while True:
        for batch in loader:
            if done == n:
                return
            yield batch
            done += 1


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, *args):
        self.end = time.perf_counter()


def hbt_setup(args, callbacks: list) -> tuple:
    """hbt's real path, ready to fit: ParallelDataModule + RetrieverModule under lightning.Trainer (in
    ``args.precision`` where given, else 32-true; the backbone compiled with ``args.compile``, a mode, where
    given), with ``callbacks``."""
    from functools import partial

    from hbt.loss import InfoNCELoss
    from hbt.module import RetrieverModule, warmup_linear

    torch.manual_seed(0)
    encoder = make_encoder(args.model, args.max_length)
    if getattr(args, "compile", None):  # train.py's compile=true: compiles at the first (warm-up) step
        encoder.compile_for_training(args.compile)
    module = RetrieverModule(
        encoder,
        InfoNCELoss(0.05),
        optimizer=partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.01, fused=True),
        scheduler=partial(warmup_linear),
    )
    trainer = L.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu",
        precision=getattr(args, "precision", "32-true"),
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        use_distributed_sampler=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    return module, trainer, make_datamodule(encoder, args.batch_size, items=getattr(args, "items", None))


def hbt_lightning(args) -> float:
    """Pairs/s of hbt's real path (:func:`hbt_setup`) over the steps after ``args.warmup``."""
    timer = StepTimer(args.warmup)
    module, trainer, datamodule = hbt_setup(args, [timer])
    trainer.fit(module, datamodule=datamodule)
    return args.steps * args.batch_size / (timer.end - timer.start)


def sentence_transformers(args) -> float:
    """sentence-transformers' own trainer with MultipleNegativesRankingLoss on the same pairs (bf16
    autocast with ``args.st_bf16``)."""
    import tempfile

    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments, losses
    from transformers import TrainerCallback

    torch.manual_seed(0)
    encoder = make_encoder(args.model, args.max_length)
    batches = batches_for(args, encoder)
    tok = encoder.tokenizer
    pairs = {"anchor": [], "positive": []}
    for batch in batches:  # the same texts hbt trains on, prefixes stripped (ST adds them as prompts)
        pairs["anchor"] += [t.removeprefix("query: ") for t in tok.batch_decode(batch["query"]["input_ids"], skip_special_tokens=True)]
        pairs["positive"] += [
            t.removeprefix("passage: ") for t in tok.batch_decode(batch["passage"]["input_ids"], skip_special_tokens=True)
        ]
    with tempfile.TemporaryDirectory() as tmp:
        encoder.save_pretrained(tmp)
        model = SentenceTransformer(tmp, device="cuda" if torch.cuda.is_available() else "cpu")
        model.max_seq_length = args.max_length
        times = []

        class Timer(TrainerCallback):
            def on_step_begin(self, *a, **k):
                times.append(time.perf_counter())

            def on_train_end(self, *a, **k):
                times.append(time.perf_counter())

        training_args = SentenceTransformerTrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            learning_rate=args.lr,
            weight_decay=0.01,
            warmup_ratio=0.1,
            max_grad_norm=1.0,
            logging_steps=10_000,
            save_strategy="no",
            report_to=[],
            prompts={"anchor": "query: ", "positive": "passage: "},
            use_cpu=not torch.cuda.is_available(),
            dataloader_drop_last=True,
            disable_tqdm=True,
            bf16=getattr(args, "st_bf16", False),
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=training_args,
            train_dataset=datasets.Dataset.from_dict(pairs),
            loss=losses.MultipleNegativesRankingLoss(model, scale=20.0),
            callbacks=[Timer()],
        )
        trainer.train()
    return args.steps * args.batch_size / (times[-1] - times[args.warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, micro, me5_small, or a local HF directory")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, interleaved; the median is reported")
    parser.add_argument("--skip-st", action="store_true")
    parser.add_argument("--precision", default="32-true", help="hbt's trainer.precision (the plain loop runs in fp32)")
    parser.add_argument(
        "--compile", dest="with_compiled", action="store_true", help="also time hbt with compile=true (it compiles in the warm-up steps)"
    )
    args = parser.parse_args()
    runs = {"plain PyTorch loop": plain_loop, "hbt (Lightning)": hbt_lightning}
    if args.with_compiled:
        runs["hbt, compile=true"] = lambda a: hbt_lightning(SimpleNamespace(**{**vars(a), "compile": "default"}))
    if not args.skip_st:
        runs["sentence-transformers"] = sentence_transformers
    samples = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every run alike
        for name, run in runs.items():
            samples[name].append(run(args))
    results = {name: statistics.median(values) for name, values in samples.items()}
    base = results["plain PyTorch loop"]
    print(
        f"\nmodel={args.model} batch={args.batch_size} max_length={args.max_length} timed steps={args.steps} repeats={args.repeats} "
        f"threads={torch.get_num_threads()} hbt precision={args.precision}"
    )
    for name, values in samples.items():
        print(f"  {name}: " + ", ".join(f"{v:.2f}" for v in values))
    print(f"{'run':<24}{'pairs/s':>10}{'vs plain':>10}")
    for name, value in results.items():
        print(f"{name:<24}{value:>10.2f}{value / base:>10.3f}")
    if args.with_compiled:
        print(f"hbt compile=true / hbt eager: {results['hbt, compile=true'] / results['hbt (Lightning)']:.3f}")
    print(f"hbt framework overhead vs plain loop: {100 * (1 - results['hbt (Lightning)'] / base):+.1f}%")
    step_ms = {name: 1000 * args.batch_size / value for name, value in results.items()}
    print(
        f"step time: plain {step_ms['plain PyTorch loop']:.2f} ms, hbt {step_ms['hbt (Lightning)']:.2f} ms "
        f"(hbt's extra per step: {step_ms['hbt (Lightning)'] - step_ms['plain PyTorch loop']:+.2f} ms)"
    )
    if "sentence-transformers" in results:
        print(f"hbt / sentence-transformers: {results['hbt (Lightning)'] / results['sentence-transformers']:.3f}")


if __name__ == "__main__":
    main()
