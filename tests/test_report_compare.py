"""Comparing runs: CIs over seeds, the paired randomization test (against scipy's), Holm's correction,
and `python -m hbt.report --compare / --group-by` on runs written in hbt's layout."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from scipy.stats import permutation_test

from hbt.report import main as report
from hbt.stats import holm, mean_ci, paired_randomization


def scipy_paired(d, w, n_resamples):
    # The same null (each query's pair of values swapped, i.e. its difference's sign flipped), by scipy.
    result = permutation_test(
        (d, np.zeros_like(d)),
        lambda x, y: np.sum(w * (x - y)),
        permutation_type="samples",
        n_resamples=n_resamples,
        alternative="two-sided",
        random_state=0,
    )
    return result.pvalue


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_randomization_p_values_equal_scipys(seed):
    rng = np.random.default_rng(seed)
    d, w = rng.normal(0.3, 1.0, 12), rng.uniform(0.5, 2.0, 12)
    assert paired_randomization(d, w, permutations=10_000) == pytest.approx(scipy_paired(d, w, np.inf), abs=1e-12)


def test_sampled_randomization_p_value_agrees_with_scipys():
    rng = np.random.default_rng(3)
    d, w = rng.normal(0.12, 1.0, 200), np.full(200, 1 / 200)
    ours, theirs = paired_randomization(d, w, permutations=20_000), scipy_paired(d, w, 20_000)
    assert 0.01 < theirs < 0.5 and abs(ours - theirs) < 0.015


def test_holm_and_the_t_interval_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    mean, half = mean_ci([1.0, 2.0, 3.0])  # t(0.975, 2) = 4.302653; sd 1
    assert mean == 2.0 and half == pytest.approx(4.302653 / 3**0.5, rel=1e-6)
    assert mean_ci([0.4]) == (0.4, None)


def write_run(root, name, ratio, seed, values):
    """A run as hbt writes it: config.yaml, results.json (macro of the per-query values) and per_query.parquet."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"sampler": {"ratio": ratio}, "seed": seed, "model": {"name_or_path": "m"}}))
    rows, results = [], {}
    for (setting, pair), per_query in values.items():
        for qid, v in per_query.items():
            rows.append({"dataset": "xquad_r", "setting": setting, "pair": pair, "query_id": qid, "map": v, "ranks": [1]})
        block = results.setdefault("xquad_r", {}).setdefault(setting, {"macro": {}, "pairs": {}})
        block["pairs"][pair] = {"map": float(np.mean(list(per_query.values()))), "num_queries": len(per_query)}
    for block in results["xquad_r"].values():
        block["macro"] = {"map": float(np.mean([p["map"] for p in block["pairs"].values()]))}
    (run / "results.json").write_text(json.dumps(results))
    pq.write_table(pa.Table.from_pylist(rows), run / "per_query.parquet")
    return results


def test_compare_and_group_by_on_runs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base = {("mono", f"{x}-{x}"): {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0.2, 0.8, 30))} for x in ("en", "de")}
    base.update({("cross", "en-de"): {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0.2, 0.8, 30))}})
    macros = {}
    for ratio in (0.5, 0.0):
        for seed in (0, 1):
            noise = np.random.default_rng(seed + 10)
            values = {}
            for (setting, pair), queries in base.items():
                # ratio 0.5 is better by 0.1 on every mono query; cross is the same up to seed noise
                lift = 0.1 if (ratio == 0.5 and setting == "mono") else 0.0
                values[(setting, pair)] = {q: v + lift + float(noise.normal(0, 0.01)) for q, v in queries.items()}
            macros[(ratio, seed)] = write_run(tmp_path, f"r{ratio}-s{seed}", ratio, seed, values)
    assert report([str(tmp_path), "--compare", "ratio=0.5", "ratio=0", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "A = ratio=0.5 (2 runs), B = ratio=0 (2 runs)" in out
    rows = {row["setting"]: row for row in __import__("csv").DictReader(open(tmp_path / "cmp.csv"))}
    expected = {
        s: np.mean([macros[(0.5, k)]["xquad_r"][s]["macro"]["map"] for k in (0, 1)])
        - np.mean([macros[(0.0, k)]["xquad_r"][s]["macro"]["map"] for k in (0, 1)])
        for s in ("mono", "cross")
    }
    for setting in ("mono", "cross"):  # the effect is the difference of the reported macro numbers, seeds averaged
        assert float(rows[setting]["A - B"]) == pytest.approx(expected[setting], abs=1e-9)
    assert rows["mono"]["verdict"] == "A higher" and float(rows["mono"]["p (Holm)"]) < 0.01
    assert rows["cross"]["verdict"] == "no significant difference"  # negative control: no real difference
    # A setting only one group has is listed as not compared, not dropped.
    extra = tmp_path / "r0.5-s0" / "per_query.parquet"
    table = pq.read_table(extra).to_pylist()
    pq.write_table(pa.Table.from_pylist(table + [{**table[0], "setting": "multi", "pair": "en"}]), extra)
    assert report([str(tmp_path), "--compare", "ratio=0.5", "ratio=0", "--out", str(tmp_path / "cmp2")]) == 0
    again = {row["setting"]: row for row in __import__("csv").DictReader(open(tmp_path / "cmp2.csv"))}
    assert again["multi"]["verdict"] == "not compared: map only in A" and again["mono"]["verdict"] == "A higher"
    capsys.readouterr()
    assert report([str(tmp_path), "--group-by", "ratio"]) == 0
    table = capsys.readouterr().out
    assert "| 0.5 | 2 |" in table and "±" in table


def test_compare_errors_are_one_line(tmp_path, capsys):
    write_run(tmp_path, "a", 0.5, 0, {("mono", "en-en"): {"q0": 0.5}})
    assert report([str(tmp_path), "--compare", "ratio=0.5", "ratio=0.25"]) == 1
    assert capsys.readouterr().err.strip() == "config error: --compare: no run matches 'ratio=0.25'"
    (tmp_path / "a" / "per_query.parquet").unlink()
    assert report([str(tmp_path), "--compare", "ratio=0.5", "seed=0"]) == 1
    assert "per_query.parquet: missing" in capsys.readouterr().err
