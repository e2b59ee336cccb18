"""Benchmark loaders on the real shared data, and one-line errors for eval files in the wrong format."""

import json

import pytest
import torch
from conftest import shared_data

from hbt.errors import DataError
from hbt.eval.lareqa import load_lareqa
from hbt.eval.parallel import load_parallel_files, load_tatoeba
from hbt.eval.retrieval import Evaluator
from hbt.models.encoder import Encoder

# LAReQA (Roy et al. 2020), Table 1: XQuAD-R candidates per language; 1,190 questions each.
XQUAD_R_CANDIDATES = {
    "ar": 1222,
    "de": 1276,
    "el": 1234,
    "en": 1180,
    "es": 1215,
    "hi": 1244,
    "ru": 1219,
    "th": 852,
    "tr": 1167,
    "vi": 1209,
    "zh": 1196,
}
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}


def test_xquad_r_matches_lareqa_counts_and_is_parallel():
    bench = load_lareqa("xquad_r", shared_data("xquad-r"))
    assert {lang: len(c) for lang, c in bench.candidates.items()} == XQUAD_R_CANDIDATES
    ids = {lang: [qid for qid, _ in qs] for lang, qs in bench.queries.items()}
    assert all(len(v) == 1190 and set(v) == set(ids["en"]) for v in ids.values())
    # The relevant sentence contains the answer text (spot check in English).
    en = json.loads((shared_data("xquad-r") / "en.json").read_text())
    qa = en["data"][0]["paragraphs"][0]["qas"][0]
    (pos,) = bench.relevant["en"][qa["id"]]
    assert qa["answers"][0]["text"] in bench.candidates["en"][pos]


def test_sentence_splitter_reproduces_lareqa_segmentation_of_xquad_r():
    """MLQA-R is split by our splitter; on XQuAD-R, LAReQA's own segmentation is known, so compare."""
    from hbt.eval.mlqa_r import split_sentences

    for lang in ("ar", "de", "en", "es", "hi", "vi", "zh"):  # MLQA's languages
        doc = json.loads((shared_data("xquad-r") / f"{lang}.json").read_text())
        ours = same = paragraphs = 0
        for article in doc["data"]:
            for p in article["paragraphs"]:
                text = p["context"]
                spans = split_sentences(text, lang)
                ours += len(spans)
                same += [text[s:e].strip() for s, e in spans] == [text[s:e].strip() for s, e in p["sentence_breaks"]]
                paragraphs += 1
        assert abs(ours / XQUAD_R_CANDIDATES[lang] - 1) < 0.03, (lang, ours)
        assert same / paragraphs > 0.7, (lang, same)


def test_tatoeba_each_direction_against_english_with_xx_en_first():
    bench = load_tatoeba(str(shared_data("tatoeba")), ["afr", "jpn"])
    torch.manual_seed(0)
    results = Evaluator(ks=(1, 10)).evaluate(Encoder(tiny=TINY), bench)
    assert list(results) == ["xx_en", "en_xx", "multi", "mono"]  # XTREME's reported direction first
    # The evaluator's mono setting does not exist for parallel sentences: recorded as such, no numbers.
    assert results["mono"].macro == {} and "query itself" in results["mono"].not_applicable
    assert set(results["xx_en"].pairs) == {"afr-eng", "jpn-eng"} and set(results["en_xx"].pairs) == {"eng-afr", "eng-jpn"}
    assert set(results["multi"].pairs) == {"afr", "eng(afr)", "jpn", "eng(jpn)"}
    assert results["xx_en"].pairs["afr-eng"].num_queries == 1000
    # The query's own sentence is no candidate: one relevant (its translation), so no rank distance spread.
    assert results["multi"].macro["rank_distance"] == 0.0


def test_identical_sides_give_perfect_accuracy_and_multi_excludes_the_query_itself(tmp_path):
    for lang in ("xx", "yy", "zz"):
        (tmp_path / f"{lang}.txt").write_text("a cat\nthe dog barks\nrain today\n")
    bench = load_parallel_files("copy", str(tmp_path / "{lang}.txt"), ["xx", "yy", "zz"])
    results = Evaluator(ks=(1, 2)).evaluate(Encoder(tiny=TINY), bench)
    assert results["cross"].macro["recall@1"] == 1.0
    # Multi: the two translations (identical texts) take ranks 1 and 2; the query itself is not ranked.
    multi = results["multi"].macro
    assert {k: multi[k] for k in ("map", "recall@1", "recall@2", "rank_distance")} == {
        "map": 1.0,
        "recall@1": 0.5,
        "recall@2": 1.0,
        "rank_distance": 1.0,
    }
    # 8 candidates ranked (9 less the query), 2 of them in its language, none of its relevant ones there
    assert multi["own_pool_share"] == 0.25 and multi["own_relevant_share"] == 0.0 and multi["own_share@10"] == 0.25


def test_parallel_text_is_encoded_symmetrically_unless_asked(tmp_path):
    for lang in ("xx", "yy"):
        (tmp_path / f"{lang}.txt").write_text("a cat\nthe dog\n")
    encoder = Encoder(tiny=TINY, query_prefix="query: ", passage_prefix="passage: ")
    seen = []
    original = encoder.encode
    encoder.encode = lambda texts, kind, *args, **kw: seen.append(kind) or original(texts, kind, *args, **kw)
    Evaluator().evaluate(encoder, load_parallel_files("p", str(tmp_path / "{lang}.txt"), ["xx", "yy"]))
    assert seen == ["query", "query"]  # both sides as queries, each language encoded once
    seen.clear()
    Evaluator().evaluate(encoder, load_parallel_files("p", str(tmp_path / "{lang}.txt"), ["xx", "yy"], symmetric=False))
    assert seen == ["query", "query", "passage", "passage"]


@pytest.mark.parametrize(
    "content,problem",
    [
        ('{"data": [', "invalid JSON"),
        ('{"version": 1}', "expected a SQuAD-style object"),
        ('{"data": [{"paragraphs": [{"context": "x", "qas": []}]}]}', "missing key 'sentences'"),
    ],
)
def test_bad_lareqa_files(tmp_path, content, problem):
    (tmp_path / "en.json").write_text(content)
    with pytest.raises(DataError, match=problem) as err:
        load_lareqa("x", tmp_path, ["en"])
    assert str(tmp_path / "en.json") in str(err.value)


def test_misaligned_parallel_files(tmp_path):
    (tmp_path / "xx.txt").write_text("a\nb\n")
    (tmp_path / "yy.txt").write_text("a\n")
    with pytest.raises(DataError, match="not line-aligned"):
        load_parallel_files("p", str(tmp_path / "{lang}.txt"), ["xx", "yy"])
    with pytest.raises(DataError, match="file not found"):
        load_parallel_files("p", str(tmp_path / "{lang}.txt"), ["zz"])


def test_sentence_splitter_and_mlqa_r_conversion(tmp_path):
    from hbt.eval.mlqa_r import convert, split_sentences

    text = "First one. Second?  Third!\u3000日本です。次の文"
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans] == ["First one.", "Second?", "Third!", "日本です。", "次の文"]

    def sentences(text, lang):
        return [text[s:e] for s, e in split_sentences(text, lang)]

    # closing quotes and brackets stay with their sentence
    assert sentences('He said "yes." Then (he left.) Done', "en") == ['He said "yes."', "Then (he left.)", "Done"]
    # initials, dotted and known abbreviations, and a lowercase continuation do not end an English sentence
    assert sentences("John C. Smith met Dr. Watson in the U.S. capital. It was approx. noon. Next", "en") == [
        "John C. Smith met Dr. Watson in the U.S. capital.",
        "It was approx. noon.",
        "Next",
    ]
    # German ordinals and abbreviations
    assert sentences("Am 7. Mai zahlte er 30 Mio. Euro, d.h. viel. Im Jahr 1795. Ende", "de") == [
        "Am 7. Mai zahlte er 30 Mio. Euro, d.h. viel.",
        "Im Jahr 1795.",
        "Ende",
    ]
    # languages without those rules split at every period followed by a capital
    assert sentences("Maria C. Lopez llegó. Fin", "es") == ["Maria C.", "Lopez llegó.", "Fin"]
    for lang, answer in (("en", "Paris"), ("de", "Paris")):
        context = f"A sentence here. The capital is {answer} indeed. Last one."
        doc = {
            "data": [
                {
                    "title": "t",
                    "paragraphs": [
                        {
                            "context": context,
                            "qas": [
                                {"id": "q1", "question": "Capital?", "answers": [{"text": answer, "answer_start": context.index(answer)}]},
                                {"id": f"only-{lang}", "question": "x?", "answers": [{"text": "A", "answer_start": 0}]},
                            ],
                        }
                    ],
                }
            ]
        }
        (tmp_path / "test").mkdir(exist_ok=True)
        (tmp_path / "test" / f"test-context-{lang}-question-{lang}.json").write_text(json.dumps(doc))
    assert convert(str(tmp_path), str(tmp_path / "all"), "test", ["en", "de"]) == {"en": (2, 3), "de": (2, 3)}  # every question
    counts = convert(str(tmp_path), str(tmp_path / "out"), "test", ["en", "de"], parallel_only=True)
    assert counts == {"en": (1, 3), "de": (1, 3)}  # only the question present in both languages
    bench = load_lareqa("mlqa_r", tmp_path / "out", ["en", "de"])
    assert bench.candidates["en"][bench.relevant["en"]["q1"][0]] == "The capital is Paris indeed."


def test_repeated_runs_reuse_the_token_ids_until_the_tokenizer_changes(monkeypatch):
    # The training callback evaluates the same texts after every few steps: the second run tokenizes
    # nothing and scores the same; a changed tokenizer setting (its fingerprint) tokenizes afresh.
    from hbt.eval.toy import toy_benchmark
    from hbt.results import dumps

    encoder = Encoder(tiny=TINY)
    benchmarks = {"toy": toy_benchmark("validation", ["en", "de", "zh"])}
    calls = []
    tokenize = encoder.tokenize_compact
    monkeypatch.setattr(encoder, "tokenize_compact", lambda texts, *a, **k: calls.append(len(texts)) or tokenize(texts, *a, **k))
    evaluator = Evaluator(ks=(1, 10), precision="fp32")
    first = dumps(evaluator.run(encoder, benchmarks))
    tokenized = len(calls)
    assert tokenized >= 3  # queries and candidates of each language
    assert dumps(evaluator.run(encoder, benchmarks)) == first
    assert len(calls) == tokenized
    encoder.text_tokenizer.max_passage_length = 4
    # Outside run(), where no fingerprint is checked, the encoder tokenizes (kept ids would be stale here).
    passages = benchmarks["toy"].candidates["en"]
    outside = evaluator.encode(encoder, passages, "passage", "en")
    assert len(calls) == tokenized + 1
    assert torch.equal(outside, encoder.encode(passages, "passage", "en", batch_size=128, precision="fp32"))
    changed = dumps(evaluator.run(encoder, benchmarks))
    assert len(calls) == 2 * tokenized + 2  # the run, and the reference encode above
    assert changed != first
    assert changed == dumps(Evaluator(ks=(1, 10), precision="fp32").run(encoder, benchmarks))
    with pytest.raises(ValueError, match="1 rows of token ids for 2 texts"):
        encoder.encode(["a", "b"], "query", ids=encoder.tokenize_compact(["a"], "query"))
