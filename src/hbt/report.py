"""Collect ``results.json`` from run or multirun directories into one table (CSV and Markdown), summarize
groups of runs over seeds, and compare two groups with a paired test on per-query values.

    python -m hbt.report outputs/train/multiruns/<sweep> --out report                 # one row per run
    python -m hbt.report <dirs> --group-by model ratio                                 # mean and 95% CI over seeds
    python -m hbt.report <dirs> --compare ratio=0.5 ratio=0 --metric map               # paired test per setting
    python -m hbt.report <dirs> --language-bias                                        # PEER and language preference

Rows are runs (with their Hydra overrides), columns are macro metrics ``<dataset>/<setting>/<metric>``.
A group is ``key=value[,key=value]`` over ``model``, ``ratio``, ``seed`` or any dotted key of the run's
config.yaml (``data.num_hard_negatives=2``). The comparison pools each group's seeds per query and tests
the difference of the macro metric with a paired randomization test, Holm-corrected over the
(dataset, setting) rows compared (:mod:`hbt.stats`).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import yaml

from hbt.errors import DataError, HbtError
from hbt.results import DatasetResult, Results, read_results


def find_runs(paths: list[str | Path]) -> list[Path]:
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise DataError(str(path), "no such directory")
        runs.extend(sorted(p.parent for p in path.rglob("results.json")) if path.is_dir() else [path.parent])
    return runs


def load_run(run: Path) -> dict:
    results = read_results(run / "results.json")
    overrides_file = run / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    row = {"run": str(run), "overrides": " ".join(o for o in overrides if not o.startswith("hydra."))}
    row.update(run_settings(run))
    for dataset, by_setting in results.items():
        for setting, block in by_setting.items():
            for metric, value in block.macro.items():
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


def write_csv(rows: list[dict], path: Path, columns: list[str] | None = None) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or columns_of(rows))
        writer.writeheader()
        writer.writerows(rows)


def to_markdown(rows: list[dict], columns: list[str] | None = None, digits: int = 4) -> str:
    columns = columns or columns_of(rows)
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v if v is not None else "")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def config_value(run: Path, key: str):
    """``model``, ``ratio``, ``seed`` (as in the table) or a dotted key of the run's config.yaml."""
    settings = run_settings(run)
    if key in settings:
        return settings[key]
    node = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def select(runs: list[Path], spec: str) -> list[Path]:
    """The runs matching every ``key=value`` of ``spec`` (values compared as YAML scalars: 0.5 == 0.50)."""
    wanted = []
    for term in filter(None, spec.split(",")):
        if "=" not in term:
            raise HbtError(f"config error: --compare: {term!r} is not key=value")
        key, value = term.split("=", 1)
        wanted.append((key.strip(), yaml.safe_load(value)))
    return [run for run in runs if all(_same(config_value(run, key), value) for key, value in wanted)]


def _same(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def group_summary(runs: list[Path], by: list[str]) -> list[dict]:
    """One row per group of runs (equal values of ``by``): each macro metric's mean and 95% CI half-width over its runs."""
    from hbt.stats import mean_ci

    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(str(config_value(run, key)) for key in by), []).append(load_run(run))
    out = []
    for key, rows in groups.items():
        summary: dict = {**dict(zip(by, key)), "runs": len(rows)}
        for metric in columns_of(rows)[5:]:
            values = [row[metric] for row in rows if metric in row]
            mean, half = mean_ci(values)
            summary[metric] = f"{mean:.4f}" + (f" ± {half:.4f}" if half is not None else "")
        out.append(summary)
    return out


def per_query_values(runs: list[Path], metric: str) -> dict[tuple[str, str], dict[tuple[str, str], float]]:
    """``{(dataset, setting): {(pair, query id): value}}``, each query's value averaged over the runs (seeds)."""
    import pyarrow.parquet as pq

    sums: dict[tuple[str, str], dict[tuple[str, str], list[float]]] = {}
    for run in runs:
        path = run / "per_query.parquet"
        if not path.exists():
            raise DataError(str(path), "missing: the run predates per-query results; evaluate it again (evaluate.py ckpt_path=...)")
        table = pq.read_table(path)
        if metric not in table.column_names:
            continue
        for row in table.select(["dataset", "setting", "pair", "query_id", metric]).to_pylist():
            if row[metric] is not None:
                sums.setdefault((row["dataset"], row["setting"]), {}).setdefault((row["pair"], row["query_id"]), []).append(row[metric])
    return {block: {q: sum(v) / len(v) for q, v in queries.items()} for block, queries in sums.items()}


def compare(
    runs_a: list[Path], runs_b: list[Path], metric: str = "map", permutations: int = 10_000, alpha: float = 0.05, seed: int = 0
) -> list[dict]:
    """Per (dataset, setting): both groups' macro ``metric`` over their shared queries, the difference
    A - B, Cohen's d_z of the per-query differences, the paired randomization p-value and its Holm
    adjustment over all rows, and a verdict at ``alpha``."""
    import numpy as np

    from hbt.stats import holm, paired_randomization

    a, b = per_query_values(runs_a, metric), per_query_values(runs_b, metric)
    rows = []
    for block in [k for k in a if k in b]:
        shared = sorted(set(a[block]) & set(b[block]))
        if not shared:
            continue
        per_pair: dict[str, int] = {}
        for pair, _ in shared:
            per_pair[pair] = per_pair.get(pair, 0) + 1
        weights = np.array([1.0 / (len(per_pair) * per_pair[pair]) for pair, _ in shared])
        va, vb = np.array([a[block][q] for q in shared]), np.array([b[block][q] for q in shared])
        diff = va - vb
        spread = diff.std(ddof=1) if len(diff) > 1 else 0.0
        rows.append(
            {
                "dataset": block[0],
                "setting": block[1],
                "metric": metric,
                "queries": len(shared),
                "A": float(weights @ va),
                "B": float(weights @ vb),
                "A - B": float(weights @ diff),
                "d_z": float(diff.mean() / spread) if spread > 0 else 0.0,
                "p": paired_randomization(diff, weights, permutations, seed),
            }
        )
    for row, adjusted in zip(rows, holm([row["p"] for row in rows])):
        row["p (Holm)"] = adjusted
        row["verdict"] = ("A higher" if row["A - B"] > 0 else "B higher") if adjusted < alpha else "no significant difference"
    # A (dataset, setting) that only one group has is listed as such, not left out.
    compared = {(row["dataset"], row["setting"]) for row in rows}
    for block in sorted((set(a) | set(b)) - compared):
        side = "A" if block in a and block not in b else "B" if block in b and block not in a else "A and B"
        rows.append(
            {
                "dataset": block[0],
                "setting": block[1],
                "metric": metric,
                "verdict": f"not compared: {metric} only in {side}" if side != "A and B" else "not compared: no shared query",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Collect results.json files into one table; summarize or compare groups of runs.")
    parser.add_argument("paths", nargs="+", help="run or multirun directories (searched recursively)")
    parser.add_argument("--out", help="write <out>.csv and <out>.md")
    parser.add_argument("--group-by", nargs="+", metavar="KEY", help="mean and 95%% CI over the runs of each group (e.g. model ratio)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two groups, each key=value[,key=value] (e.g. ratio=0.5 ratio=0)")
    parser.add_argument("--metric", default="map", help="per-query metric compared (map, recall@10, ndcg@10, peer@10, own_share@10, ...)")
    parser.add_argument(
        "--language-bias", action="store_true", help="per run and query language: PEER@k, the language preference, the language ranked last"
    )
    parser.add_argument("--permutations", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0, help="of the random sign flips")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.paths)
        if not runs:
            raise DataError(" ".join(args.paths), "no results.json found")
        if args.compare:
            groups = [select(runs, spec) for spec in args.compare]
            for spec, chosen in zip(args.compare, groups):
                if not chosen:
                    raise HbtError(f"config error: --compare: no run matches {spec!r}")
            rows = compare(*groups, metric=args.metric, permutations=args.permutations, alpha=args.alpha, seed=args.seed)
            if not any("p" in row for row in rows):
                raise DataError(" ".join(args.paths), f"the two groups share no query with a {args.metric!r} value")
            print(
                f"A = {args.compare[0]} ({len(groups[0])} runs), B = {args.compare[1]} ({len(groups[1])} runs); seeds pooled per query, "
                f"paired randomization test ({args.permutations} sign flips), Holm over {sum('p' in row for row in rows)} rows"
            )
        elif args.group_by:
            rows = group_summary(runs, args.group_by)
        elif args.language_bias:
            rows = [dict(run=str(run), **row) for run in runs for row in language_bias_rows(read_results(run / "results.json"))]
            if not rows:
                raise DataError(" ".join(args.paths), "no multi-setting results with language-bias metrics (evaluator.bias_ks)")
        else:
            rows = collect(args.paths)
    except HbtError as err:
        print(str(err), file=sys.stderr)
        return 1
    columns = list(dict.fromkeys(key for row in rows for key in row)) if (args.compare or args.group_by or args.language_bias) else None
    table = to_markdown(rows, columns)
    if args.out:
        write_csv(rows, Path(f"{args.out}.csv"), columns)
        Path(f"{args.out}.md").write_text(table + "\n")
    print(table)
    return 0


def pair_matrix(by_setting: DatasetResult, metric: str = "map"):
    """Query language x candidate language matrix of ``metric``: mono pairs on the diagonal, cross off it
    (Tatoeba's two directions, ``xx_en`` and ``en_xx``, are its cross pairs)."""
    import numpy as np

    pairs = {}
    for setting in ("mono", "cross", "xx_en", "en_xx"):
        if setting in by_setting:
            pairs.update({key: pair.metrics for key, pair in by_setting[setting].pairs.items()})
    split = {key: key.split("-", 1) for key in pairs if "-" in key}
    langs = sorted({lang for q, c in split.values() for lang in (q, c)})
    index = {lang: i for i, lang in enumerate(langs)}
    matrix = np.full((len(langs), len(langs)), np.nan)
    for key, (q, c) in split.items():
        matrix[index[q], index[c]] = pairs[key][metric]
    return langs, matrix


def language_bias_rows(results: Results) -> list[dict]:
    """One row per dataset and query language of the multi setting (and one ``macro`` row per dataset):
    PEER@k, the language preference (``own_share@k`` beside ``own_relevant_share`` and
    ``own_pool_share``) and the language most often ranked last with its share."""
    rows = []
    for dataset, by_setting in results.items():
        block = by_setting.get("multi")
        if block is None or not any(m.startswith("peer@") for m in block.macro):
            continue
        for language, metrics in [*((key, pair.metrics) for key, pair in block.pairs.items()), ("macro", block.macro)]:
            row = {"dataset": dataset, "query language": language}
            row.update({m: v for m, v in metrics.items() if m.startswith(("peer@", "own_"))})
            last = {m.split(":", 1)[1]: v for m, v in metrics.items() if m.startswith("last_language:")}
            if last:
                worst = max(last, key=last.get)
                row.update({"ranked last most often": worst, "its share": last[worst]})
            rows.append(row)
    return rows


def last_language_matrix(by_setting: DatasetResult):
    """Query language x language of the relevant candidate ranked last: the share of the multi setting's
    queries (with two or more relevant candidates) whose last one is in that language."""
    import numpy as np

    block = by_setting.get("multi")
    pairs = {key: pair.metrics for key, pair in block.pairs.items()} if block is not None else {}
    columns = sorted({m.split(":", 1)[1] for metrics in pairs.values() for m in metrics if m.startswith("last_language:")})
    rows = sorted(key for key, metrics in pairs.items() if any(m.startswith("last_language:") for m in metrics))
    matrix = np.array([[pairs[q].get(f"last_language:{c}", np.nan) for c in columns] for q in rows]).reshape(len(rows), len(columns))
    return rows, columns, matrix


def plot_pair_heatmap(langs: list[str], matrix, title: str, columns: list[str] | None = None, xlabel: str = "candidate language"):
    """A heatmap figure of a pair matrix (rows: query language, columns: candidate language, or the
    ``columns`` given with their ``xlabel``)."""
    import matplotlib.pyplot as plt  # no backend forced: inline in notebooks, Agg on headless hosts

    columns = langs if columns is None else columns
    size = max(4.0, 0.45 * max(len(langs), len(columns)) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=max(1e-9, float(np_nanmax(matrix))))
    ax.set_xticks(range(len(columns)), columns, rotation=90)
    ax.set_yticks(range(len(langs)), langs)
    ax.set(xlabel=xlabel, ylabel="query language", title=title)
    if max(len(langs), len(columns)) <= 12:
        for i in range(len(langs)):
            for j in range(len(columns)):
                if matrix[i, j] == matrix[i, j]:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def np_nanmax(matrix) -> float:
    import numpy as np

    return float(np.nanmax(matrix)) if np.isfinite(matrix).any() else 1.0


if __name__ == "__main__":
    raise SystemExit(main())
