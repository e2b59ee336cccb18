"""Training with mined hard negatives against training without them, on real data on this machine.

multilingual-e5-small (built offline from ../shared/tools) mines hard negatives for the training half
of XQuAD-R's articles (`python -m hbt.mine`, zero-shot encoder, the default filters), then is fine-tuned
on that half twice per seed with the same items, steps, batch, learning rate and ratio: once with
`data.num_hard_negatives=K`, once with 0 (in-batch negatives only). Both are evaluated on the held-out
half (mono, cross, multi mAP and rank distance). Resumable: finished steps are not run again.
Writes the table to docs/mined_negatives_table.md (docs/mining.md discusses it).

    python benchmarks/mined_negatives.py          # about 45 minutes on an idle 2-core machine
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import ROOT, me5_small_dir
from reproduce_paper import run

from hbt.report import load_run

SETTINGS = [("mono", "map"), ("cross", "map"), ("multi", "map"), ("multi", "rank_distance")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "outputs" / "mined_negatives"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--negatives", type=int, default=2, help="hard negatives per training pair (K)")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    args = parser.parse_args()
    out, model = Path(args.out), me5_small_dir()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"model.name_or_path={model}", "logger=csv"]

    mined = out / "mined.jsonl"
    if not mined.exists():
        run(
            [
                "-m",
                "hbt.mine",
                "data=xquad_r_train",
                "model=me5_small",
                f"model.name_or_path={model}",
                f"output={mined}",
                "mine.progress=false",
                "mine.num_negatives=4",
                "model.max_query_length=64",
                "model.max_passage_length=96",
                f"hydra.run.dir={out / 'mine'}",
            ],
            out / "mine.log",
        )
    usable = out / f"usable-{args.negatives}.jsonl"
    if not usable.exists():
        rows = [json.loads(line) for line in mined.read_text().splitlines()]
        # Both arms train on the items that have K negatives in every language, so only the negatives differ.
        keep = [r for r in rows if all(len(r["hard_negatives"].get(lang, [])) >= args.negatives for lang in r["passages"])]
        print(f"items with {args.negatives} mined negatives in every language: {len(keep)} of {len(rows)}")
        usable.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
    for seed in args.seeds:
        for k in (args.negatives, 0):
            target = out / f"neg{k}-seed{seed}"
            if not (target / "results.json").exists():
                run(
                    [
                        "train.py",
                        "experiment=xquad_r_me5_small",
                        *common,
                        "data=jsonl",
                        f"data.train.path={usable}",
                        "data.batch_size=16",
                        f"data.num_hard_negatives={k}",
                        f"sampler.ratio={args.ratio}",
                        f"seed={seed}",
                        f"hydra.run.dir={target}",
                    ],
                    out / f"neg{k}-seed{seed}.log",
                )
    write_table(out, args, Path(args.docs))


def write_table(out: Path, args, docs: Path) -> None:
    summary = json.loads((out / "mined.jsonl.summary.json").read_text())
    kept = sum(counts["kept"] for counts in summary.values())
    header = "| training | seeds | " + " | ".join(f"{s} {m}" for s, m in SETTINGS) + " |"
    lines = [header, "|" + "---|" * (len(SETTINGS) + 2)]
    for k, name in ((0, "in-batch negatives only"), (args.negatives, f"+ {args.negatives} mined hard negatives")):
        runs = [load_run(out / f"neg{k}-seed{s}") for s in args.seeds if (out / f"neg{k}-seed{s}" / "results.json").exists()]
        if not runs:
            continue
        cells = []
        for setting, metric in SETTINGS:
            values = [r[f"xquad_r_heldout/{setting}/{metric}"] for r in runs]
            cells.append(f"{statistics.mean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""))
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    per_seed = ["", "| run | " + " | ".join(f"{s} {m}" for s, m in SETTINGS) + " |", "|" + "---|" * (len(SETTINGS) + 1)]
    for target in sorted(out.glob("neg*-seed*")):
        if (target / "results.json").exists():
            row = load_run(target)
            per_seed.append(f"| {target.name} | " + " | ".join(f"{row[f'xquad_r_heldout/{s}/{m}']:.4f}" for s, m in SETTINGS) + " |")
    text = "\n".join(lines + per_seed) + f"\n\nMined negatives kept (all languages): {kept}; ratio {args.ratio}.\n"
    (docs / "mined_negatives_table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
