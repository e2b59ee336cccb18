"""Per-query values (per_query.parquet beside results.json): the rows average to exactly the numbers
results.json reports, the ranks behind them reproduce each AP, and every benchmark kind writes them."""

import json
import math

import pyarrow.parquet as pq
import pytest
from conftest import FAST

from hbt.eval.mtop import load_mtop
from hbt.eval.parallel import load_parallel_files
from hbt.eval.retrieval import Evaluator
from hbt.eval.toy import toy_benchmark
from hbt.eval.trec import load_trec
from hbt.models.encoder import Encoder
from hbt.results import Results, from_json

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
KEYS = ("dataset", "setting", "pair", "query_id", "ranks")


def check_rows_average_to_results(results: Results, table) -> None:
    rows = table.to_pylist()
    seen = set()
    for dataset, by_setting in results.items():
        if "[" in dataset:  # query subsets are rows of the full set
            continue
        for setting, block in by_setting.items():
            for pair, metrics in block.pairs.items():
                mine = [r for r in rows if (r["dataset"], r["setting"], r["pair"]) == (dataset, setting, pair)]
                assert len(mine) == metrics.num_queries, (dataset, setting, pair)
                seen.add((dataset, setting, pair))
                for name, value in metrics.metrics.items():
                    if name.startswith("last_language:"):  # the share of the rows naming that language as ranked last
                        named = [r["last_language"] for r in mine if r["last_language"] is not None]
                        assert named.count(name.split(":", 1)[1]) / len(named) == pytest.approx(value, abs=1e-12)
                        continue
                    assert math.fsum(r[name] for r in mine) / len(mine) == pytest.approx(value, abs=1e-12), (dataset, setting, pair, name)
    assert seen == {(r["dataset"], r["setting"], r["pair"]) for r in rows}  # no row outside results.json


def test_rows_average_to_the_reported_pairs_and_ranks_reproduce_ap(tmp_path):
    from test_mtop import write_mtop

    benchmarks = {"toy": toy_benchmark("test", ["en", "de", "fr"]), "mtop": load_mtop(str(write_mtop(tmp_path)), ["en", "de", "fr"])}
    evaluator = Evaluator(ks=(1, 5), at_k=("recall", "f1"))
    results = evaluator.run(Encoder(tiny=TINY), benchmarks, {"toy": {"some": "re:."}})
    table = evaluator.query_table()
    assert set(table.column_names) >= {*KEYS, "map", "recall@1", "f1@5", "rank_distance", "peer@10", "own_share@10", "last_language"}
    check_rows_average_to_results(results, table)
    assert any(name.startswith("last_language:") for name in results["toy"]["multi"].macro)
    for row in table.to_pylist():  # AP from the relevant candidates' ranks
        assert row["map"] == pytest.approx(sum((n + 1) / r for n, r in enumerate(row["ranks"])) / len(row["ranks"]))
        if row["setting"] == "multi":
            assert row["rank_distance"] == max(row["ranks"]) - min(row["ranks"])
    # Parallel by id: MTOP's en query 3232343246 has no German translation, so no en-de row.
    assert not [r for r in table.to_pylist() if r["dataset"] == "mtop" and r["pair"] == "en-de" and r["query_id"] == "3232343246"]


def test_tatoeba_style_groups_and_trec_benchmarks_write_rows_under_their_reported_keys(tmp_path):
    from test_metrics_reference import write_miracl

    from hbt.eval.benchmark import BenchmarkGroup

    for lang in ("xx", "eng"):
        (tmp_path / f"{lang}.txt").write_text("a cat\nthe dog barks\nrain today\n")
    part = load_parallel_files("pair/xx", str(tmp_path / "{lang}.txt"), ["xx", "eng"])
    group = BenchmarkGroup("pair", {"xx": part}, {"xx": {"eng": "eng"}}, pivot="eng")
    trec = load_trec("miracl", ["sw"], pooled=False, **write_miracl(tmp_path / "miracl"))
    evaluator = Evaluator(ks=(1, 10))
    results = evaluator.run(Encoder(tiny=TINY), {"pair": group, "miracl": trec})
    table = evaluator.query_table()
    check_rows_average_to_results(results, table)
    settings = {(r["dataset"], r["setting"]) for r in table.to_pylist()}
    assert {("pair", "xx_en"), ("pair", "en_xx"), ("pair", "multi"), ("miracl", "mono")} <= settings
    assert {r["pair"] for r in table.to_pylist() if r["setting"] == "multi"} == {"xx", "eng(xx)"}


@pytest.mark.slow
def test_a_run_writes_per_query_parquet_beside_an_unchanged_results_json(make_cfg, tmp_path):
    from hbt.tasks import train

    train(make_cfg("train", [*FAST, "callbacks.retrieval_eval.at_epoch_end=false"], tmp_path))  # train.py's task
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["toy"]["mono"]) == {"macro", "pairs"}  # results.json keeps its shape
    table = pq.read_table(tmp_path / "per_query.parquet")
    check_rows_average_to_results(from_json(results), table)
