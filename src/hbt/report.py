"""Collect ``results.json`` from run or multirun directories into one table (CSV and Markdown).

    python -m hbt.report outputs/train/multiruns/2026-11-22_10-00-00-000000 --out report

Rows are runs (with their Hydra overrides), columns are macro metrics ``<dataset>/<setting>/<metric>``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

from hbt.errors import DataError, HbtError


def find_runs(paths: list[str | Path]) -> list[Path]:
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise DataError(str(path), "no such directory")
        runs.extend(sorted(p.parent for p in path.rglob("results.json")) if path.is_dir() else [path.parent])
    return runs


def load_run(run: Path) -> dict:
    try:
        results = json.loads((run / "results.json").read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{run / 'results.json'}:{err.lineno}", f"invalid JSON: {err.msg}") from None
    overrides_file = run / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    row = {"run": str(run), "overrides": " ".join(o for o in overrides if not o.startswith("hydra."))}
    row.update(run_settings(run))
    for dataset, by_setting in results.items():
        for setting, block in by_setting.items():
            for metric, value in block["macro"].items():
                row[f"{dataset}/{setting}/{metric}"] = value
    return row


def run_settings(run: Path) -> dict:
    """The model choice and the ratio of a run, from the files Hydra and hbt write beside results.json."""
    settings: dict = {}
    hydra_file, config_file = run / ".hydra" / "hydra.yaml", run / "config.yaml"
    if hydra_file.exists():
        choices = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("runtime", {}).get("choices", {})
        settings["model"] = choices.get("model")
    if config_file.exists():
        config = yaml.safe_load(config_file.read_text()) or {}
        settings["ratio"] = (config.get("sampler") or {}).get("ratio")
        settings["seed"] = config.get("seed")
    return settings


def collect(paths: list[str | Path]) -> list[dict]:
    return [load_run(run) for run in find_runs(paths)]


def columns_of(rows: list[dict]) -> list[str]:
    fixed = ["run", "overrides", "model", "ratio", "seed"]
    metrics = sorted({key for row in rows for key in row if key not in fixed})
    return [*fixed, *metrics]


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns_of(rows))
        writer.writeheader()
        writer.writerows(rows)


def to_markdown(rows: list[dict], columns: list[str] | None = None, digits: int = 4) -> str:
    columns = columns or columns_of(rows)
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v if v is not None else "")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Collect results.json files into one table.")
    parser.add_argument("paths", nargs="+", help="run or multirun directories (searched recursively)")
    parser.add_argument("--out", help="write <out>.csv and <out>.md")
    args = parser.parse_args(argv)
    try:
        rows = collect(args.paths)
        if not rows:
            raise DataError(" ".join(args.paths), "no results.json found")
    except HbtError as err:
        print(str(err), file=sys.stderr)
        return 1
    table = to_markdown(rows)
    if args.out:
        write_csv(rows, Path(f"{args.out}.csv"))
        Path(f"{args.out}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def pair_matrix(by_setting: dict, metric: str = "map"):
    """Query language x candidate language matrix of ``metric``: mono pairs on the diagonal, cross off it
    (Tatoeba's two directions, ``xx_en`` and ``en_xx``, are its cross pairs)."""
    import numpy as np

    pairs = {}
    for setting in ("mono", "cross", "xx_en", "en_xx"):
        pairs.update(by_setting.get(setting, {}).get("pairs", {}))
    split = {key: key.split("-", 1) for key in pairs if "-" in key}
    langs = sorted({lang for q, c in split.values() for lang in (q, c)})
    index = {lang: i for i, lang in enumerate(langs)}
    matrix = np.full((len(langs), len(langs)), np.nan)
    for key, (q, c) in split.items():
        matrix[index[q], index[c]] = pairs[key][metric]
    return langs, matrix


def plot_pair_heatmap(langs: list[str], matrix, title: str):
    """A heatmap figure of a pair matrix (rows: query language, columns: candidate language)."""
    import matplotlib.pyplot as plt  # no backend forced: inline in notebooks, Agg on headless hosts

    size = max(4.0, 0.45 * len(langs) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=max(1e-9, float(np_nanmax(matrix))))
    ax.set_xticks(range(len(langs)), langs, rotation=90)
    ax.set_yticks(range(len(langs)), langs)
    ax.set(xlabel="candidate language", ylabel="query language", title=title)
    if len(langs) <= 12:
        for i in range(len(langs)):
            for j in range(len(langs)):
                if matrix[i, j] == matrix[i, j]:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def np_nanmax(matrix) -> float:
    import numpy as np

    return float(np.nanmax(matrix)) if np.isfinite(matrix).any() else 1.0
