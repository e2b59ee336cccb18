"""Typed results inside, the same results.json outside (hbt.results)."""

import json

import pytest

from hbt.errors import DataError
from hbt.results import PairResult, SettingResult, dumps, flatten_macro, from_json, read_results

# Every optional part of a block, in results.json's order.
RESULTS = {
    "toy": {
        "mono": {"macro": {"map": 0.5, "recall@1": 0.25}, "pairs": {"en-en": {"map": 0.5, "recall@1": 0.25, "num_queries": 3}}},
        "cross": {
            "macro": {"map": 0.75},
            "pairs": {"en-de": {"map": 1.0, "num_queries": 2}, "de-en": {"map": 0.5, "num_queries": 2}},
            "skipped": {"de-hi": "no query has a relevant candidate in this pool"},
        },
        "multi": {"macro": {}, "pairs": {}, "not_applicable": "the benchmark has no such view"},
    },
    "miracl": {
        "mono": {
            "macro": {"ndcg@10": 0.3, "recall@100": 0.9},
            "pairs": {"sw-sw": {"ndcg@10": 0.3, "recall@100": 0.9, "num_queries": 7}},
            "corpus": "full",
            "skipped": {"yo-yo": "an empty corpus"},
        }
    },
}


def test_results_json_round_trips_byte_for_byte(tmp_path):
    text = json.dumps(RESULTS, indent=2)
    typed = from_json(json.loads(text))
    assert dumps(typed) == text
    assert typed["toy"]["mono"].pairs["en-en"] == PairResult({"map": 0.5, "recall@1": 0.25}, 3)
    assert typed["toy"]["multi"].not_applicable == "the benchmark has no such view" and typed["toy"]["multi"].corpus is None
    assert typed["miracl"]["mono"].corpus == "full" and typed["miracl"]["mono"].skipped == {"yo-yo": "an empty corpus"}
    assert flatten_macro(typed, "test")["test/toy/cross/map"] == 0.75
    (tmp_path / "results.json").write_text(text)
    assert read_results(tmp_path / "results.json") == typed


def test_the_macro_view_is_the_mean_over_pairs_and_a_bad_file_names_its_line(tmp_path):
    block = SettingResult.of_pairs(
        {"a-b": PairResult({"map": 1.0, "recall@1": 1.0}, 4), "b-a": PairResult({"map": 0.5, "recall@1": 0.0}, 9)}
    )
    assert block.macro == {"map": 0.75, "recall@1": 0.5}  # pairs weigh alike, whatever their query counts
    assert SettingResult.of_pairs({}).macro == {}
    (tmp_path / "results.json").write_text('{"toy":\n  {"mono": oops}}')
    with pytest.raises(DataError, match=r"results.json:2: invalid JSON"):
        read_results(tmp_path / "results.json")
