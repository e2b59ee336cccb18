"""Reproduce the paper's comparison (X-X vs X-Y vs hybrid) on real data on this machine.

multilingual-e5-small (built offline from ../shared/tools) is fine-tuned on the training half of
XQuAD-R's articles and evaluated on the held-out half in the mono, cross and multi settings:
zero-shot, then ratio 0 (X-Y), 0.25, 0.5 (hybrid), 0.75 and 1 (X-X), with the same steps, batch size,
learning rate; three seeds for X-Y, hybrid and X-X and two for 0.25 and 0.75 by default, run seed by
seed so that a partial run is already a complete table for its first seeds. Resumable: a run whose
results.json exists is not run again. Writes the table to docs/paper_reproduction_table.md and the
ratio curve to docs/ratio_curve.png (docs/paper_reproduction.md discusses them).

    python benchmarks/reproduce_paper.py                  # ~13 runs of ~5 minutes each on a 2-core machine (bf16)
    python benchmarks/reproduce_paper.py --main-seeds 5   # more seeds for the three main ratios
    python benchmarks/reproduce_paper.py --language-bias  # PEER@10 and language preference of the runs that exist

--language-bias re-evaluates (evaluate.py on each run's exported model) the runs whose results.json predates
the language-bias metrics, then writes docs/paper_reproduction_bias.md (docs/paper_reproduction.md
discusses it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, me5_small_dir

from hbt.report import load_run

SETTINGS = [
    ("mono", "map"),
    ("mono", "recall@1"),
    ("cross", "map"),
    ("cross", "recall@1"),
    ("multi", "map"),
    ("multi", "recall@10"),
    ("multi", "rank_distance"),
]
# Zero-shot evaluation with the experiment's settings (conf/experiment/xquad_r_me5_small.yaml).
EVALUATE = [
    "evaluate.py",
    "model=me5_small",
    "eval=xquad_r_heldout",
    "model.max_query_length=64",
    "model.max_passage_length=96",
    "evaluator.batch_size=64",
]
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
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        default="bf16",
        help="training and evaluation precision (bf16: hbt's default on CPUs with native bf16 and on GPUs)",
    )
    parser.add_argument("--report-only", action="store_true", help="write the table and plot from the runs that exist; run nothing")
    parser.add_argument("--language-bias", action="store_true", help="the language-bias table of the runs that exist (see above)")
    args = parser.parse_args()
    if args.report_only:
        return write_docs(Path(args.out), args, Path(args.docs))
    if args.language_bias:
        return write_bias(Path(args.out), args, Path(args.docs))
    out, model = Path(args.out), me5_small_dir()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"model.name_or_path={model}", "logger=csv", f"evaluator.precision={args.precision}"]
    train_precision = "trainer.precision=" + ("bf16-mixed" if args.precision == "bf16" else "32-true")

    zero = out / "zero-shot"
    if not (zero / "results.json").exists():
        run(
            [*EVALUATE, *common, f"hydra.run.dir={zero}"],
            out / "zero-shot.log",
        )
    seeds = {**{r: args.side_seeds for r in args.side_ratios}, **{r: args.main_seeds for r in args.main_ratios}}
    ratios = args.main_ratios + [r for r in args.side_ratios if r not in args.main_ratios]
    plan = [(r, seed) for seed in range(max(seeds.values())) for r in ratios if seed < seeds[r]]
    for ratio, seed in plan:
        target = out / f"ratio{ratio}-seed{seed}"
        if not (target / "results.json").exists():
            run(
                [
                    "train.py",
                    "experiment=xquad_r_me5_small",
                    *common,
                    train_precision,
                    f"sampler.ratio={ratio}",
                    f"seed={seed}",
                    f"hydra.run.dir={target}",
                ],
                out / f"ratio{ratio}-seed{seed}.log",
            )
    write_docs(out, args, Path(args.docs))


def metric(row: dict, setting: str, name: str) -> float:
    return row[f"xquad_r_heldout/{setting}/{name}"]


# The paper's claims, each a comparison of two groups of runs: (A, B, what the paper reports).
CLAIMS = [
    (0.5, 0.0, "hybrid above X-Y in mono and multi, on par in cross, lower rank distance"),
    (0.5, 1.0, "hybrid on par with X-X in mono, above it in cross and multi, lower rank distance"),
    (1.0, 0.0, "X-X best in mono, X-Y best in cross"),
    (0.75, 0.5, "alpha = 0.5 the best ratio (ratios 0.25 and 0.75 below it)"),
    (0.25, 0.5, "alpha = 0.5 the best ratio (ratios 0.25 and 0.75 below it)"),
]
# Per-query metric compared in each setting (the paper's: mAP everywhere, R@1 mono/cross, R@10 and rank distance multi).
COMPARED = [("map", ("mono", "cross", "multi")), ("recall@1", ("mono", "cross")), ("recall@10", ("multi",)), ("rank_distance", ("multi",))]


def comparison_lines(a: list[Path], b: list[Path], name_a: str, name_b: str, compared) -> list[str]:
    """Table rows of ``hbt.report``'s paired comparison of runs ``a`` and ``b``, for each (metric, settings)."""
    from hbt.report import compare

    lines = []
    for name, settings in compared:
        for row in compare(a, b, metric=name):
            if row["setting"] not in settings or "p" not in row:
                continue
            digits = 1 if name == "rank_distance" else 4
            lines.append(
                f"| {name_a} | {name_b} | {name} | {row['setting']} | {row['A']:.{digits}f} | {row['B']:.{digits}f} | "
                f"{row['A - B']:+.{digits}f} | {row['d_z']:+.2f} | {row['p']:.4f} | {row['p (Holm)']:.4f} | {row['verdict']} |"
            )
    return lines


def ratio_runs(out: Path) -> dict[float, list[Path]]:
    by_ratio: dict[float, list[Path]] = {}
    for target in sorted(out.glob("ratio*-seed*")):
        if (target / "results.json").exists():
            by_ratio.setdefault(float(target.name.split("-")[0].removeprefix("ratio")), []).append(target)
    return by_ratio


def write_docs(out: Path, args, docs: Path) -> None:
    """The table (mean and 95% t-interval over seeds), the paired tests of each claim and the plot."""
    from hbt.stats import mean_ci

    zero = load_run(out / "zero-shot")
    runs = ratio_runs(out)
    by_ratio = {ratio: [load_run(r) for r in paths] for ratio, paths in runs.items()}
    header = "| run | seeds | " + " | ".join(f"{s} {m}" for s, m in SETTINGS) + " |"
    lines = [header, "|" + "---|" * (len(SETTINGS) + 2)]
    lines.append(
        "| zero-shot | - | " + " | ".join(f"{metric(zero, s, m):.{1 if m == 'rank_distance' else 4}f}" for s, m in SETTINGS) + " |"
    )
    for ratio in sorted(by_ratio, key=lambda r: (r not in (0.0, 0.5, 1.0), r)):
        rows = by_ratio[ratio]
        cells = []
        for s, m in SETTINGS:
            mean, half = mean_ci([metric(r, s, m) for r in rows])
            digits = 1 if m == "rank_distance" else 4
            cells.append(f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if half is not None else ""))
        lines.append(f"| {NAMES.get(ratio, ratio)} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: mean ± half-width of the 95% Student-t interval over the seeds.", ""]
    lines += [
        "Paired randomization tests (10,000 sign flips) on per-query values, each group's seeds averaged per",
        "query; Holm-adjusted over the settings of one metric; d_z = mean / sd of the per-query differences.",
        "",
    ]
    lines += ["| A | B | metric | setting | A | B | A - B | d_z | p | p (Holm) | verdict |", "|" + "---|" * 11]
    for a, b, _ in CLAIMS:
        if a not in runs or b not in runs:
            lines.append(f"| {NAMES[a]} | {NAMES[b]} | - | - | | | | | | | not run |")
            continue
        lines += comparison_lines(runs[a], runs[b], NAMES[a], NAMES[b], COMPARED)
    table = "\n".join(lines)
    plot_curve(by_ratio, zero, docs / "ratio_curve.png")
    (docs / "paper_reproduction_table.md").write_text(table + "\n")
    print(table)


BIAS = [("multi", "peer@10"), ("multi", "own_share@10"), ("multi", "own_relevant_share"), ("multi", "rank_distance")]
QUALITY = [("mono", "map"), ("cross", "map"), ("multi", "map")]
BIAS_CLAIMS = [("zero-shot", 0.5), (0.5, 0.0), (0.5, 1.0), (1.0, 0.0)]


def reevaluate(trained: Path, args) -> None:
    """A run evaluated before hbt computed the language-bias metrics: evaluate.py on its exported model,
    with the evaluation settings it was trained with, into <run>/language-bias."""
    target = trained / "language-bias"
    if (target / "results.json").exists():
        return
    model = trained / "model" if (trained / "model").exists() else me5_small_dir()
    cmd = [*EVALUATE, f"model.name_or_path={model}", "logger=csv", f"evaluator.precision={args.precision}", f"hydra.run.dir={target}"]
    run(cmd, trained.parent / f"{trained.name}.language-bias.log")


def bias_source(run: Path) -> Path:
    """The run directory whose results.json has the language-bias metrics (the run's own, or its re-evaluation)."""
    row = load_run(run)
    return run if "xquad_r_heldout/multi/peer@10" in row else run / "language-bias"


def write_bias(out: Path, args, docs: Path) -> None:
    """PEER@10, the language preference and rank distance of zero-shot, X-Y, hybrid and X-X (mean and 95%
    t-interval over seeds), their mAP beside them, and paired tests of the bias metrics."""
    from hbt.stats import mean_ci

    groups: dict = {"zero-shot": [out / "zero-shot"]}
    groups.update({ratio: paths for ratio, paths in ratio_runs(out).items() if ratio in (0.0, 0.5, 1.0)})
    for paths in groups.values():
        for path in paths:
            if "xquad_r_heldout/multi/peer@10" not in load_run(path):
                reevaluate(path, args)
    sources = {name: [bias_source(p) for p in paths] for name, paths in groups.items()}
    names = {"zero-shot": "zero-shot", **NAMES}
    columns = QUALITY + BIAS
    lines = [
        "What this page is for: the language-bias table and paired tests behind docs/paper_reproduction.md's",
        "section on PEER@10 and language preference (written by `python benchmarks/reproduce_paper.py --language-bias`).",
        "",
    ]
    lines += [
        "| run | seeds | " + " | ".join(f"{s} {m}" for s, m in columns) + " | ranked last most often (multi) |",
        "|" + "---|" * (len(columns) + 3),
    ]
    for name in ("zero-shot", 0.0, 0.5, 1.0):
        if name not in sources:
            lines.append(f"| {names[name]} | - | " + " | ".join("" for _ in columns) + " | not run |")
            continue
        rows = [load_run(p) for p in sources[name]]
        cells = []
        for s, m in columns:
            mean, half = mean_ci([metric(r, s, m) for r in rows])
            digits = 1 if m == "rank_distance" else 4
            cells.append(f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if half is not None else ""))
        last = {
            k.rsplit(":", 1)[1]: sum(r[k] for r in rows) / len(rows)
            for k in rows[0]
            if k.startswith("xquad_r_heldout/multi/last_language:")
        }
        worst = sorted(last, key=last.get, reverse=True)[:2]
        cells.append(", ".join(f"{lang} {last[lang]:.2f}" for lang in worst))
        lines.append(f"| {names[name]} | {len(rows) if name != 'zero-shot' else '-'} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells: mean ± half-width of the 95% Student-t interval over the seeds; the last column: the two languages",
        "whose relevant sentence is most often the one ranked last, with that share (macro over query languages).",
        "",
    ]
    lines += ["| A | B | metric | setting | A | B | A - B | d_z | p | p (Holm) | verdict |", "|" + "---|" * 11]
    compared = [(name, ("multi",)) for name in ("peer@10", "own_share@10", "rank_distance", "map")]
    for a, b in BIAS_CLAIMS:
        if a in sources and b in sources:
            lines += comparison_lines(sources[a], sources[b], names[a], names[b], compared)
        else:
            lines.append(f"| {names[a]} | {names[b]} | - | - | | | | | | | not run |")
    table = "\n".join(lines)
    (docs / "paper_reproduction_bias.md").write_text(table + "\n")
    print(table)


def plot_curve(by_ratio: dict[float, list[dict]], zero: dict, path: Path) -> None:
    """Means over seeds with their 95% t-interval as a band; zero-shot dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from hbt.stats import mean_ci

    ratios = sorted(by_ratio)

    def band(setting: str, name: str):
        stats = [mean_ci([metric(r, setting, name) for r in by_ratio[x]]) for x in ratios]
        means = np.array([m for m, _ in stats])
        halves = np.array([h or 0.0 for _, h in stats])
        return means, halves

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for setting, style in (("mono", "o-"), ("cross", "s-"), ("multi", "^-")):
        means, halves = band(setting, "map")
        line = axes[0].plot(ratios, means, style, label=f"{setting} mAP")[0]
        axes[0].fill_between(ratios, means - halves, means + halves, color=line.get_color(), alpha=0.2)
        axes[0].axhline(metric(zero, setting, "map"), ls=":", color=line.get_color())
    axes[0].set(
        xlabel="sampler.ratio (share of X-X batches)",
        ylabel="mAP (held-out XQuAD-R)",
        title="mAP vs ratio (band: 95% CI; dotted: zero-shot)",
    )
    axes[0].legend()
    means, halves = band("multi", "rank_distance")
    axes[1].plot(ratios, means, "o-", color="tab:red")
    axes[1].fill_between(ratios, means - halves, means + halves, color="tab:red", alpha=0.2)
    axes[1].set(
        xlabel="sampler.ratio",
        ylabel="mean rank distance (lower = less language bias)",
        title=f"Language bias vs ratio (zero-shot: {metric(zero, 'multi', 'rank_distance'):.0f})",
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
