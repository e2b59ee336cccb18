"""Reproduce the paper's comparison (X-X vs X-Y vs hybrid) on real data on this machine.

multilingual-e5-small (built offline from ../shared/tools) is fine-tuned on the training half of
XQuAD-R's articles and evaluated on the held-out half in the mono, cross and multi settings:
zero-shot, then ratio 0 (X-Y), 0.25, 0.5 (hybrid), 0.75 and 1 (X-X), with the same steps, batch size,
learning rate; three seeds for X-Y, hybrid and X-X and two for 0.25 and 0.75 by default, run seed by
seed so that a partial run is already a complete table for its first seeds. Resumable: a run whose
results.json exists is not run again. Writes the table to docs/paper_reproduction_table.md and the
ratio curve to docs/ratio_curve.png (docs/paper_reproduction.md discusses them).

    python benchmarks/reproduce_paper.py                  # about two hours on an idle 2-core machine
    python benchmarks/reproduce_paper.py --main-seeds 5   # more seeds for the three main ratios
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, me5_small_dir

from hbt.report import load_run

SETTINGS = [("mono", "map"), ("mono", "recall@1"), ("cross", "map"), ("cross", "recall@1"), ("multi", "map"), ("multi", "recall@10"), ("multi", "rank_distance")]
NAMES = {0.0: "X-Y (ratio 0)", 0.25: "ratio 0.25", 0.5: "hybrid (ratio 0.5)", 0.75: "ratio 0.75", 1.0: "X-X (ratio 1)"}


def run(cmd: list[str], log: Path) -> None:
    started = time.time()
    with open(log, "w") as handle:
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    print(f"  {' '.join(cmd[:1] + cmd[-3:])}: exit {proc.returncode} in {time.time() - started:.0f}s", flush=True)
    if proc.returncode:
        raise SystemExit(f"run failed, see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "outputs" / "reproduce"))
    parser.add_argument("--main-ratios", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="X-Y, hybrid, X-X")
    parser.add_argument("--main-seeds", type=int, default=3, help="seeds 0..N-1 for each of --main-ratios")
    parser.add_argument("--side-ratios", type=float, nargs="+", default=[0.25, 0.75])
    parser.add_argument("--side-seeds", type=int, default=2, help="seeds 0..N-1 for each of --side-ratios")
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="training and evaluation precision (bf16: hbt's default on CPUs with native bf16 and on GPUs)")
    args = parser.parse_args()
    out, model = Path(args.out), me5_small_dir()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"model.name_or_path={model}", "logger=csv", f"evaluator.precision={args.precision}"]
    train_precision = "trainer.precision=" + ("bf16-mixed" if args.precision == "bf16" else "32-true")

    zero = out / "zero-shot"
    if not (zero / "results.json").exists():
        run(["evaluate.py", "model=me5_small", "eval=xquad_r_heldout", "model.max_query_length=64", "model.max_passage_length=96",
             "evaluator.batch_size=64", *common, f"hydra.run.dir={zero}"], out / "zero-shot.log")
    seeds = {**{r: args.side_seeds for r in args.side_ratios}, **{r: args.main_seeds for r in args.main_ratios}}
    ratios = args.main_ratios + [r for r in args.side_ratios if r not in args.main_ratios]
    plan = [(r, seed) for seed in range(max(seeds.values())) for r in ratios if seed < seeds[r]]
    for ratio, seed in plan:
        target = out / f"ratio{ratio}-seed{seed}"
        if not (target / "results.json").exists():
            run(["train.py", "experiment=xquad_r_me5_small", *common, train_precision, f"sampler.ratio={ratio}", f"seed={seed}", f"hydra.run.dir={target}"],
                out / f"ratio{ratio}-seed{seed}.log")
    write_docs(out, args, Path(args.docs))


def metric(row: dict, setting: str, name: str) -> float:
    return row[f"xquad_r_heldout/{setting}/{name}"]


def write_docs(out: Path, args, docs: Path) -> None:
    zero = load_run(out / "zero-shot")
    by_ratio: dict[float, list[dict]] = {}
    for target in sorted(out.glob("ratio*-seed*")):
        if (target / "results.json").exists():
            ratio = float(target.name.split("-")[0].removeprefix("ratio"))
            by_ratio.setdefault(ratio, []).append(load_run(target))
    header = "| run | seeds | " + " | ".join(f"{s} {m}" for s, m in SETTINGS) + " |"
    lines = [header, "|" + "---|" * (len(SETTINGS) + 2)]
    lines.append("| zero-shot | - | " + " | ".join(f"{metric(zero, s, m):.4f}" for s, m in SETTINGS) + " |")
    for ratio in sorted(by_ratio, key=lambda r: (r not in (0.0, 0.5, 1.0), r)):
        rows = by_ratio[ratio]
        cells = []
        for s, m in SETTINGS:
            values = [metric(r, s, m) for r in rows]
            spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.4f}{spread}")
        lines.append(f"| {NAMES.get(ratio, ratio)} | {len(rows)} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    plot_curve(by_ratio, zero, docs / "ratio_curve.png")
    (docs / "paper_reproduction_table.md").write_text(table + "\n")
    print(table)


def plot_curve(by_ratio: dict[float, list[dict]], zero: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sorted(by_ratio)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for setting, style in (("mono", "o-"), ("cross", "s-"), ("multi", "^-")):
        means = [statistics.mean(metric(r, setting, "map") for r in by_ratio[x]) for x in ratios]
        axes[0].plot(ratios, means, style, label=f"{setting} mAP")
        axes[0].axhline(metric(zero, setting, "map"), ls=":", color=axes[0].lines[-1].get_color())
    axes[0].set(xlabel="sampler.ratio (share of X-X batches)", ylabel="mAP (held-out XQuAD-R)", title="mAP vs ratio (dotted: zero-shot)")
    axes[0].legend()
    dist = [statistics.mean(metric(r, "multi", "rank_distance") for r in by_ratio[x]) for x in ratios]
    axes[1].plot(ratios, dist, "o-", color="tab:red")
    axes[1].axhline(metric(zero, "multi", "rank_distance"), ls=":", color="tab:red")
    axes[1].set(xlabel="sampler.ratio", ylabel="mean rank distance (lower = less language bias)", title="Language bias vs ratio")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
