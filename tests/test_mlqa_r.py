"""MLQA-R as LAReQA built it, on an MLQA-shaped fixture: dev split, every question of each language kept,
questions 2-4-way parallel, languages that do not share articles; cross pairs over the questions present
in both languages, multi relevant sets over the languages where the question exists; nothing empty."""

import json

import pytest
from conftest import run_cli

from hbt.errors import DataError
from hbt.eval.benchmark import RetrievalBenchmark
from hbt.eval.lareqa import load_lareqa
from hbt.eval.mlqa_r import convert
from hbt.eval.retrieval import Evaluator
from hbt.models.encoder import Encoder

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
# question id -> the languages it exists in (MLQA: English plus up to three others)
PARALLEL = {
    "q1": ["en", "de", "ar", "es"],
    "q2": ["en", "de"],
    "q3": ["en", "ar"],
    "q4": ["en", "hi"],
    "q5": ["en", "de", "ar"],
    "q6": ["en"],
}
LANGS = ["en", "de", "ar", "hi", "es"]


def write_mlqa(root, split="dev"):
    """One file per language, holding only the contexts (articles) that have questions in it."""
    (root / split).mkdir(parents=True, exist_ok=True)
    for lang in LANGS:
        articles = []
        for qid, langs in PARALLEL.items():
            if lang not in langs:
                continue
            context = f"Intro {lang} {qid}. The answer {qid} is here in {lang}. Closing words."
            start = context.index(f"answer {qid}")
            articles.append(
                {
                    "title": f"{lang}-{qid}",
                    "paragraphs": [
                        {
                            "context": context,
                            "qas": [
                                {"id": qid, "question": f"Where is {qid} ({lang})?", "answers": [{"text": "answer", "answer_start": start}]}
                            ],
                        }
                    ],
                }
            )
        (root / split / f"{split}-context-{lang}-question-{lang}.json").write_text(json.dumps({"data": articles, "version": "1.0"}))


def test_every_question_of_each_language_is_kept_and_articles_need_not_align(tmp_path):
    write_mlqa(tmp_path / "mlqa")
    counts = convert(str(tmp_path / "mlqa"), str(tmp_path / "mlqa-r"), languages=LANGS)  # default split: dev
    assert {lang: n for lang, (n, _) in counts.items()} == {"en": 6, "de": 3, "ar": 3, "hi": 1, "es": 1}
    bench = load_lareqa("mlqa_r", tmp_path / "mlqa-r", LANGS)  # 6, 3, 3, 1, 1 articles: no alignment needed
    assert {lang: len(q) for lang, q in bench.queries.items()} == {"en": 6, "de": 3, "ar": 3, "hi": 1, "es": 1}
    with pytest.raises(DataError, match="different numbers of articles"):
        load_lareqa("mlqa_r", tmp_path / "mlqa-r", ["en", "de"], articles="heldout")  # the article split is XQuAD-R's


def test_cross_over_shared_questions_multi_over_present_languages(tmp_path):
    write_mlqa(tmp_path / "mlqa")
    convert(str(tmp_path / "mlqa"), str(tmp_path / "mlqa-r"), languages=LANGS)
    bench = load_lareqa("mlqa_r", tmp_path / "mlqa-r", LANGS)
    results = Evaluator(ks=(1, 10)).evaluate(Encoder(tiny=TINY), bench)
    cross = results["cross"].pairs
    shared = {(x, y): sum(1 for langs in PARALLEL.values() if x in langs and y in langs) for x in LANGS for y in LANGS}
    for (x, y), n in shared.items():
        if x != y and n:
            assert cross[f"{x}-{y}"].num_queries == n, (x, y)
    # de and hi share no question: that pair is left out, and the result says so
    assert "de-hi" not in cross and results["cross"].skipped["de-hi"].startswith("no query has a relevant candidate")
    assert results["multi"].pairs["en"].num_queries == 6
    assert results["multi"].pairs["hi"].num_queries == 1
    # multi: each query's relevant set is the languages where its question exists; q6 (English only) has
    # one relevant candidate, so mono and multi agree for it.
    assert all(results[s].macro for s in results)


def test_parallel_only_on_mlqa_is_an_error_not_an_empty_benchmark(tmp_path):
    write_mlqa(tmp_path / "mlqa")
    counts = convert(str(tmp_path / "mlqa"), str(tmp_path / "both"), languages=["en", "de"], parallel_only=True)
    assert counts == {"en": (3, 18), "de": (3, 9)}  # q1, q2, q5; every context stays a candidate
    with pytest.raises(DataError, match="no question is present in all of en, de, ar, hi, es"):  # MLQA: at most 4-way
        convert(str(tmp_path / "mlqa"), str(tmp_path / "x"), languages=LANGS, parallel_only=True)


def test_cli_prints_counts_against_lareqas_table(tmp_path):
    write_mlqa(tmp_path / "mlqa")
    proc = run_cli("-m", "hbt.eval.mlqa_r", str(tmp_path / "mlqa"), str(tmp_path / "out"), "--languages", *LANGS)
    assert proc.returncode == 0, proc.stderr
    assert "en: 6 questions (LAReQA: 1148, DIFFERS), 18 candidates" in proc.stdout


def test_empty_language_or_setting_is_an_error(tmp_path):
    write_mlqa(tmp_path / "mlqa")
    convert(str(tmp_path / "mlqa"), str(tmp_path / "mlqa-r"), languages=["en", "de"])
    doc = json.loads((tmp_path / "mlqa-r" / "de.json").read_text())
    for article in doc["data"]:
        for paragraph in article["paragraphs"]:
            paragraph["qas"] = []
    (tmp_path / "mlqa-r" / "de.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"de.json: no questions for language 'de'"):
        load_lareqa("mlqa_r", tmp_path / "mlqa-r", ["en", "de"])
    nothing_shared = RetrievalBenchmark(
        "b", {"x": [("1", "a")], "y": [("2", "b")]}, {"x": ["a"], "y": ["b"]}, {"x": {"1": [0]}, "y": {"2": [0]}}
    )
    with pytest.raises(DataError, match="b: cross: no language pair has a query with a relevant candidate"):
        Evaluator(settings=("cross",)).evaluate(Encoder(tiny=TINY), nothing_shared)


def test_settings_that_do_not_apply_are_an_error_not_an_empty_result(tmp_path):
    from hbt.eval.parallel import load_parallel_files

    for lang in ("xx", "yy"):
        (tmp_path / f"{lang}.txt").write_text("a cat\nthe dog\n")
    bench = load_parallel_files("p", str(tmp_path / "{lang}.txt"), ["xx", "yy"])
    with pytest.raises(DataError, match=r"p: none of evaluator.settings \['mono'\] applies; this benchmark has \['cross', 'multi'\]"):
        Evaluator(settings=("mono",)).evaluate(Encoder(tiny=TINY), bench)
