"""Every training-data layout loads into the same items; bad data stops with file:line and the problem."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FAST, last_line, run_cli

from hbt.data.loaders import load_hf, load_jsonl, load_mmarco, load_parquet, load_translated
from hbt.errors import DataError

ITEMS = [
    {"id": "a", "questions": {"en": "who?", "de": "wer?"}, "passages": {"en": "him.", "de": "ihn."}, "hard_negatives": {"en": ["her."]}},
    {"id": "b", "questions": {"en": "where?", "zh": "哪里？"}, "passages": {"en": "here.", "zh": "这里。"}, "hard_negatives": {}},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def as_tuples(store):
    return [(it.id, it.questions, it.passages, it.hard_negatives) for it in (store.item(i) for i in range(len(store)))]


EXPECTED = [
    ("a", {"de": "wer?", "en": "who?"}, {"de": "ihn.", "en": "him."}, {"en": ("her.",)}),
    ("b", {"en": "where?", "zh": "哪里？"}, {"en": "here.", "zh": "这里。"}, {}),
]


def test_jsonl_with_missing_languages(tmp_path):
    store = load_jsonl(str(write_jsonl(tmp_path / "d.jsonl", ITEMS)))
    assert store.languages == ["de", "en", "zh"]
    assert as_tuples(store) == EXPECTED
    assert store.item_languages() == [("de", "en"), ("en", "zh")]


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ITEMS), path)
    assert as_tuples(load_parquet(str(path))) == EXPECTED


def test_hf_saved_dataset_with_per_language_columns(tmp_path):
    import datasets

    rows = [{"qid": "a", "question_en": "who?", "question_de": "wer?", "context_en": "him.", "context_de": "ihn."}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    store = load_hf(str(tmp_path / "ds"), columns={"id": "qid", "questions": "question_{lang}", "passages": "context_{lang}", "hard_negatives": "neg_{lang}"}, languages=["de", "en"])
    assert as_tuples(store) == [("a", {"de": "wer?", "en": "who?"}, {"de": "ihn.", "en": "him."}, {})]


def test_translated_files_joined_by_id(tmp_path):
    write_jsonl(tmp_path / "en.jsonl", [{"id": "a", "question": "who?", "passage": "him."}, {"id": "b", "question": "where?", "passage": "here."}])
    write_jsonl(tmp_path / "de.jsonl", [{"id": "a", "question": "wer?", "passage": "ihn."}])
    store = load_translated(str(tmp_path / "{lang}.jsonl"), ["en", "de"])
    assert store.item_languages() == [("de", "en"), ("en",)]


def test_mmarco_layout(tmp_path):
    (tmp_path / "triples.tsv").write_text("q1\tp1\tp2\nq2\tp2\tp1\n")
    for lang, words in (("english", ("who", "him", "her")), ("german", ("wer", "ihn", "sie"))):
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "queries.tsv").write_text(f"q1\t{words[0]}?\nq2\t{words[0]} else?\nq9\tunused\n")
        (tmp_path / lang / "collection.tsv").write_text(f"p1\t{words[1]}.\np2\t{words[2]}.\n")
    store = load_mmarco(str(tmp_path), ["english", "german"], triples="triples.tsv", queries="{lang}/queries.tsv")
    first = store.item(0)
    assert first.id == "q1-p1" and first.questions["german"] == "wer?" and first.hard_negatives["german"] == ("sie.",)
    assert len(store) == 2


@pytest.mark.parametrize(
    "line,problem",
    [
        ('{"id": "x", "questions": {"en": "q"}, "passages": {"en": "p"', "malformed JSON"),
        ('{"questions": {"en": "q"}, "passages": {"en": "p"}}', "missing field 'id'"),
        ('{"id": "x", "questions": {"en": "q"}}', "missing field 'passages'"),
        ('{"id": "x", "questions": {"en": " "}, "passages": {"en": "p"}}', "empty question text for language 'en'"),
        ('{"id": "x", "questions": {"english!": "q"}, "passages": {"english!": "p"}}', "unknown language code 'english!'"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, problem):
    first, second = json.dumps(ITEMS[0]), json.dumps({**ITEMS[0], "id": "c"})
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([first, second, line]) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_jsonl(str(path))
    assert str(err.value).startswith(f"data error: {path}:3: ")
    assert problem in str(err.value)


def test_language_outside_the_configured_list(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ITEMS)
    with pytest.raises(DataError, match=r"d.jsonl:2: unknown language 'zh'"):
        load_jsonl(str(path), languages=["de", "en"])


def test_changed_file_is_read_again(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ITEMS)
    assert len(load_jsonl(str(path))) == 2
    write_jsonl(path, ITEMS[:1])
    assert len(load_jsonl(str(path))) == 1


@pytest.mark.slow
def test_training_on_a_jsonl_file_and_a_bad_one(tmp_path):
    records = [
        {"id": str(i), "questions": {"en": f"question {i}?", "de": f"Frage {i}?"}, "passages": {"en": f"answer {i}.", "de": f"Antwort {i}."}}
        for i in range(40)
    ]
    good = write_jsonl(tmp_path / "train.jsonl", records)
    proc = run_cli("train.py", "data=jsonl", f"data.train.path={good}", *FAST, "data.batch_size=8", "eval=[]", f"hydra.run.dir={tmp_path / 'ok'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "ok" / "results.json").read_text()) == {}

    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"id": "x", "questions": {"en": "q"}, "passages": {"en": ""}}\n', encoding="utf-8")
    proc = run_cli("train.py", "data=jsonl", f"data.train.path={bad}", *FAST, f"hydra.run.dir={tmp_path / 'bad'}")
    assert proc.returncode == 1
    assert last_line(proc.stderr) == f"data error: {bad}:41: empty passage text for language 'en'"
    assert not (tmp_path / "bad" / "results.json").exists()
