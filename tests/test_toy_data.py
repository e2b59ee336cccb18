"""The built-in corpus meets its contract: size, scripts, disjoint splits."""

import unicodedata

from hbt.data.toy import toy_items
from hbt.eval.toy import toy_benchmark

LANGS = ["en", "de", "es", "fr", "ru", "ar", "zh", "hi", "el"]


def script_of(text: str) -> str:
    for ch in text:
        if ch.isalpha():
            return unicodedata.name(ch).split()[0]
    return "?"


def test_corpus_size_languages_scripts_and_disjoint_splits():
    splits = {s: toy_items(s, LANGS) for s in ("train", "validation", "test")}
    assert sum(len(v) for v in splits.values()) >= 300
    ids = {s: {item.id for item in items} for s, items in splits.items()}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["validation"] and not ids["validation"] & ids["test"]
    territories = {s: {i.split("-")[0] for i in v} for s, v in ids.items()}
    assert not territories["train"] & territories["test"]
    item = splits["test"][0]
    scripts = {script_of(item.questions[lang]) for lang in LANGS}
    assert len(scripts - {"LATIN"}) >= 3
    assert all(item.languages == tuple(sorted(LANGS)) for item in splits["train"])


def test_benchmark_relevance_points_at_the_items_passage():
    bench = toy_benchmark("test", ["en", "zh"])
    items = {item.id: item for item in toy_items("test", ["en", "zh"])}
    for lang in ("en", "zh"):
        for qid, question in bench.queries[lang]:
            (pos,) = bench.relevant[lang][qid]
            assert question == items[qid].questions[lang]
            assert bench.candidates[lang][pos] == items[qid].passages[lang]  # the one relevant passage is the item's own
        assert len(bench.candidates[lang]) == len(bench.queries[lang])
    en_q = dict(bench.queries["en"])
    qid = next(iter(en_q))
    assert bench.relevant["en"][qid] == bench.relevant["zh"][qid]  # same item order in both pools
