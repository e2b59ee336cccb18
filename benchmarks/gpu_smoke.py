"""GPU smoke check: every encoder family through the user's path on one GPU, in a few minutes.

    python benchmarks/gpu_smoke.py --tokenizer <multilingual-E5 dir>          # on a GPU host
    python benchmarks/gpu_smoke.py --tokenizer <multilingual-E5 dir> --cpu    # the CPU mode the tests run

The families are small random-init models of the real architectures (``hbt.models.families``) with the
real XLM-R tokenizer of a local multilingual-E5 directory (``../shared/tools/offline_me5_small.py``
builds one). Checks, each printed as pass / FAIL / skip with its time and detail:

- ``step/<family>``: a bf16 training step on the GPU (autocast, AdamW), ms per step, every parameter learns;
- ``train/<family>``: ``train.py`` with the default trainer (the GPU in bf16-mixed; the CPU in fp32 with
  ``--cpu``), export and final evaluation;
- ``ddp``: the DDP trainer on one device (``trainer=ddp_cpu`` with ``--cpu``);
- ``fsdp/*``: ``trainer=fsdp`` on one GPU (``trainer=fsdp_cpu``, two processes, with ``--cpu``): training with the evaluation callback, export, the exported
  model evaluated again, exact resume from a mid-run checkpoint, GradCache refused with one line, and LoRA
  adapters trained under FSDP and merged into the export;
- ``evaluate``: ``evaluate.py`` on an exported model (encodes on the GPU);
- ``faiss``: top-k search on the GPU (faiss-gpu) against exact CPU search.

Exit status 1 if any check fails. ``--out FILE`` also writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
LANGS = "[en,de,ru,zh,ar]"  # languages every family (mBART-50 included) has codes for
ROWS: list[dict] = []


def record(name: str, status: str, seconds: float, detail: str = "") -> None:
    ROWS.append({"check": name, "status": status, "seconds": round(seconds, 1), "detail": detail})
    print(f"{status:5s} {name:24s} {seconds:7.1f}s  {detail}", flush=True)


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "HYDRA_FULL_ERROR": "1",
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)


def check_run(name: str, proc: subprocess.CompletedProcess, seconds: float, run_dir: Path | None = None, detail: str = "") -> dict | None:
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        record(name, "FAIL", seconds, f"exit {proc.returncode}: {tail[0][:160]}")
        return None
    results = json.loads((run_dir / "results.json").read_text()) if run_dir is not None else {}
    if run_dir is not None and not all(block["macro"] for bench in results.values() for block in bench.values()):
        record(name, "FAIL", seconds, "an evaluation setting came out empty")
        return None
    record(name, "pass", seconds, detail)
    return results


def step_time(family: str, path: Path, device: str) -> None:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hbt.data.toy import toy_items
    from hbt.loss import InfoNCELoss

    start = time.perf_counter()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            cfg = compose("train", overrides=[f"model={FAMILY_OPTIONS[family]}", f"model.name_or_path={path}"])
        encoder = instantiate(cfg.model).to(device)
        items = toy_items("train", ["en", "de", "ru", "zh", "ar"])[:32]
        langs = [["en", "de", "ru", "zh", "ar"][i % 5] for i in range(len(items))]
        q = encoder.text_tokenizer([it.questions[lang] for it, lang in zip(items, langs)], "query", langs)
        p = encoder.text_tokenizer([it.passages[lang] for it, lang in zip(items, langs)], "passage", langs)
        q, p = ({k: v.to(device) for k, v in t.items()} for t in (q, p))
        loss_fn, optimizer = InfoNCELoss(), torch.optim.AdamW(encoder.parameters(), lr=1e-4)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        times = []
        for i in range(13):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            optimizer.zero_grad()
            with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
                queries, passages = encoder(q), encoder(p)
            loss, _ = loss_fn(queries.float(), passages.float(), torch.arange(len(queries), device=device))
            loss.backward()
            unused = [n for n, prm in encoder.named_parameters() if prm.requires_grad and prm.grad is None]
            optimizer.step()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        ok = bool(torch.isfinite(loss)) and not unused
        detail = f"{1000 * sorted(times)[len(times) // 2]:.1f} ms/step (batch 32+32, {'bf16 autocast' if device == 'cuda' else 'fp32'}), loss {loss.item():.3f}"
        record(
            f"step/{family}", "pass" if ok else "FAIL", time.perf_counter() - start, detail + (f"; unused {unused[:3]}" if unused else "")
        )
    except Exception as err:  # a smoke check reports and goes on
        record(f"step/{family}", "FAIL", time.perf_counter() - start, f"{type(err).__name__}: {str(err)[:160]}")


def train_family(family: str, path: Path, work: Path, trainer: list[str]) -> Path | None:
    run = work / f"train-{family}"
    start = time.perf_counter()
    proc = cli(
        "train.py",
        f"model={FAMILY_OPTIONS[family]}",
        f"model.name_or_path={path}",
        *trainer,
        "trainer.max_steps=5",
        "data.batch_size=16",
        "logger=csv",
        f"data.train.languages={LANGS}",
        f"eval.toy.languages={LANGS}",
        "callbacks.retrieval_eval.at_epoch_end=false",
        f"hydra.run.dir={run}",
    )
    config = (run / "config.yaml").read_text() if (run / "config.yaml").exists() else ""
    precision = next((line.split(":", 1)[1].strip() for line in config.splitlines() if line.strip().startswith("precision:")), "?")
    accelerator = next((line.split(":", 1)[1].strip() for line in config.splitlines() if line.strip().startswith("accelerator:")), "?")
    ok = check_run(f"train/{family}", proc, time.perf_counter() - start, run, f"accelerator {accelerator}, precision {precision}")
    return run if ok is not None else None


def fsdp_checks(family: str, path: Path, work: Path, trainer: list[str]) -> None:
    common = [
        f"model={FAMILY_OPTIONS[family]}",
        f"model.name_or_path={path}",
        *trainer,
        "trainer.max_steps=6",
        "data.batch_size=16",
        "logger=csv",
        f"data.train.languages={LANGS}",
        f"eval.toy.languages={LANGS}",
        "callbacks.checkpoint.every_n_train_steps=3",
        "callbacks.checkpoint.save_top_k=-1",
        "callbacks.retrieval_eval.at_epoch_end=false",
        "callbacks.retrieval_eval.every_n_steps=3",
        "trainer.deterministic=true",
    ]
    start = time.perf_counter()
    first = check_run(
        "fsdp/train+callback", cli("train.py", *common, f"hydra.run.dir={work / 'fsdp'}"), time.perf_counter() - start, work / "fsdp"
    )
    if first is None:
        return
    start = time.perf_counter()
    # Evaluated as the FSDP run's own evaluation encoded (its log says: bf16 runs as bf16-mixed on a
    # sharded backbone, Encoder.runs_as), so that any difference is the export's.
    encoded = re.search(r"encoding in (\S+) \(evaluator", (work / "fsdp" / "train.log").read_text(errors="replace"))
    proc = cli(
        "evaluate.py",
        f"model={FAMILY_OPTIONS[family]}",
        f"model.name_or_path={work / 'fsdp' / 'model'}",
        *([f"evaluator.precision={encoded.group(1)}"] if encoded else []),
        "logger=csv",
        f"eval.toy.languages={LANGS}",
        f"hydra.run.dir={work / 'fsdp-eval'}",
    )
    again = check_run("fsdp/export", proc, time.perf_counter() - start, work / "fsdp-eval")
    if again is not None:
        # The training run's final evaluation (FSDP-wrapped, full-precision weights in eval mode) and
        # evaluate.py on the export compute the same embeddings, so the same metrics.
        gap = max(abs(again["toy"][s]["macro"][m] - v) for s in first["toy"] for m, v in first["toy"][s]["macro"].items())
        both = f"both in {encoded.group(1)}" if encoded else "no 'encoding in' line in the FSDP run's train.log"
        record(
            "fsdp/export-equal",
            "pass" if gap <= 1e-3 and encoded else "FAIL",
            0.0,
            f"max |metric difference| {gap:.2e} (train.py's final evaluation vs evaluate.py, {both})",
        )
    start = time.perf_counter()
    ckpt = work / "fsdp" / "checkpoints" / "step3.ckpt"
    proc = cli("train.py", *common, f"ckpt_path={ckpt}", f"hydra.run.dir={work / 'fsdp-resumed'}")
    resumed = check_run("fsdp/resume", proc, time.perf_counter() - start, work / "fsdp-resumed")
    if resumed is not None:
        same = (work / "fsdp-resumed" / "results.json").read_text() == (work / "fsdp" / "results.json").read_text()
        record(
            "fsdp/resume-exact",
            "pass" if same else "FAIL",
            0.0,
            "results.json identical to the uninterrupted run" if same else "results.json differs",
        )
    start = time.perf_counter()
    proc = cli("train.py", *common, "grad_cache.chunk_size=4", f"hydra.run.dir={work / 'fsdp-gradcache'}")
    line = [entry for entry in proc.stderr.strip().splitlines() if entry.strip()][-1:] or [""]
    refused = proc.returncode == 1 and line[0].startswith("config error: grad_cache.chunk_size:")
    record("fsdp/gradcache-refused", "pass" if refused else "FAIL", time.perf_counter() - start, line[0][:120])
    # LoRA under FSDP (experiment=scaling_past_13b): blocks mixing frozen and trainable parameters, and an
    # export that merges the adapters while FSDP holds the module.
    start = time.perf_counter()
    proc = cli("train.py", *common, "model.lora={r: 4, alpha: 8}", f"hydra.run.dir={work / 'fsdp-lora'}")
    if check_run("fsdp/lora", proc, time.perf_counter() - start, work / "fsdp-lora") is not None:
        from safetensors import safe_open

        keys = [k for f in (work / "fsdp-lora" / "model").rglob("*.safetensors") for k in safe_open(str(f), "pt").keys()]
        merged = bool(keys) and not any("lora_" in k for k in keys)
        record(
            "fsdp/lora-merged",
            "pass" if merged else "FAIL",
            0.0,
            f"{len(keys)} exported tensors, none an adapter" if merged else "adapters left in the export",
        )


def faiss_check(use_gpu: bool) -> None:
    import numpy as np

    start = time.perf_counter()
    try:
        import faiss
    except ImportError:
        record("faiss", "FAIL", 0.0, "faiss is not installed: pip install -e '.[gpu]' (or '.[cpu]')")
        return
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu and gpus == 0:
        record("faiss", "FAIL", 0.0, "faiss sees no GPU (faiss-cpu installed?): pip install -e '.[gpu]'")
        return
    from hbt.eval.search import FaissSearcher

    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((20000, 64)).astype("float32")
    queries = rng.standard_normal((100, 64)).astype("float32")
    _, got = FaissSearcher(index="flat", use_gpu=use_gpu).search(queries, corpus, 10)
    exact = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10]
    agree = float((got == exact).mean())
    record(
        "faiss",
        "pass" if agree > 0.99 else "FAIL",
        time.perf_counter() - start,
        f"{'GPU' if use_gpu else 'CPU'} flat search, {gpus} GPU(s) seen, top-10 agreement {agree:.4f}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True, help="a directory with an XLM-R style tokenizer.json (the offline multilingual-E5)")
    parser.add_argument("--cpu", action="store_true", help="run every check that does not need a GPU, on the CPU")
    parser.add_argument("--families", default=",".join(FAMILY_OPTIONS))
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--out", default=None)
    parser.add_argument("--skip", default="", help="comma-separated check groups to leave out: step,train,ddp,fsdp,evaluate,faiss")
    args = parser.parse_args()
    import torch

    from hbt.models.families import build_all

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no GPU visible to torch; run with --cpu for the CPU mode", file=sys.stderr)
        return 2
    families = args.families.split(",")
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hbt-smoke-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        dirs = build_all(work / "families", args.tokenizer, families, hidden=args.hidden, layers=2)
        record(
            "build-families", "pass", time.perf_counter() - start, f"{', '.join(families)} (hidden {args.hidden}, 2 layers, random init)"
        )
        skip = set(filter(None, args.skip.split(",")))
        for family in families if "step" not in skip else []:
            step_time(family, dirs[family], device)
        trained = {}
        for family in families if "train" not in skip else []:
            trained[family] = train_family(family, dirs[family], work, ["trainer=default"])
        if "ddp" not in skip:
            start = time.perf_counter()
            family = families[0]
            ddp = ["trainer=ddp_cpu"] if args.cpu else ["trainer=ddp", "trainer.devices=1"]
            proc = cli(
                "train.py",
                f"model={FAMILY_OPTIONS[family]}",
                f"model.name_or_path={dirs[family]}",
                *ddp,
                "trainer.max_steps=3",
                "data.batch_size=8",
                "logger=csv",
                f"data.train.languages={LANGS}",
                f"eval.toy.languages={LANGS}",
                "callbacks.retrieval_eval.at_epoch_end=false",
                f"hydra.run.dir={work / 'ddp'}",
            )
            check_run("ddp", proc, time.perf_counter() - start, work / "ddp", " ".join(ddp))
        if "fsdp" not in skip:  # on CPU: the same strategy over gloo (trainer=fsdp_cpu, full precision)
            sharded = "mt5" if "mt5" in dirs else families[0]
            fsdp_checks(sharded, dirs[sharded], work, ["trainer=fsdp_cpu"] if args.cpu else ["trainer=fsdp", "trainer.devices=1"])
            trained.setdefault(sharded, work / "fsdp" if (work / "fsdp" / "model").exists() else None)
        exported = next((run for run in trained.values() if run is not None), None)
        if exported is not None and "evaluate" not in skip:
            start = time.perf_counter()
            option = FAMILY_OPTIONS[next(f for f, run in trained.items() if run == exported)]
            proc = cli(
                "evaluate.py",
                f"model={option}",
                f"model.name_or_path={exported / 'model'}",
                "logger=csv",
                f"eval.toy.languages={LANGS}",
                f"hydra.run.dir={work / 'evaluate'}",
            )
            check_run("evaluate", proc, time.perf_counter() - start, work / "evaluate", f"{option} export, encoded on {device}")
        if "faiss" not in skip:
            faiss_check(use_gpu=not args.cpu)
    failed = [row["check"] for row in ROWS if row["status"] == "FAIL"]
    print(
        f"\n{len(ROWS) - len(failed)} of {len(ROWS)} checks passed or skipped in {time.perf_counter() - total:.0f}s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    if args.out:
        Path(args.out).write_text(json.dumps(ROWS, indent=2))
    return 1 if failed else 0


from hbt.models.families import FAMILIES as FAMILY_OPTIONS  # noqa: E402  (after sys.path is set)

if __name__ == "__main__":
    sys.exit(main())
