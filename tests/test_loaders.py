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
    store = load_hf(
        str(tmp_path / "ds"),
        columns={"id": "qid", "questions": "question_{lang}", "passages": "context_{lang}", "hard_negatives": "neg_{lang}"},
        languages=["de", "en"],
    )
    assert as_tuples(store) == [("a", {"de": "wer?", "en": "who?"}, {"de": "ihn.", "en": "him."}, {})]


def test_translated_files_joined_by_id(tmp_path):
    write_jsonl(
        tmp_path / "en.jsonl", [{"id": "a", "question": "who?", "passage": "him."}, {"id": "b", "question": "where?", "passage": "here."}]
    )
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
        {
            "id": str(i),
            "questions": {"en": f"question {i}?", "de": f"Frage {i}?"},
            "passages": {"en": f"answer {i}.", "de": f"Antwort {i}."},
        }
        for i in range(40)
    ]
    good = write_jsonl(tmp_path / "train.jsonl", records)
    proc = run_cli(
        "train.py", "data=jsonl", f"data.train.path={good}", *FAST, "data.batch_size=8", "eval=[]", f"hydra.run.dir={tmp_path / 'ok'}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "ok" / "results.json").read_text()) == {}

    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"id": "x", "questions": {"en": "q"}, "passages": {"en": ""}}\n', encoding="utf-8")
    proc = run_cli("train.py", "data=jsonl", f"data.train.path={bad}", *FAST, f"hydra.run.dir={tmp_path / 'bad'}")
    assert proc.returncode == 1
    assert last_line(proc.stderr) == f"data error: {bad}:41: empty passage text for language 'en'"
    assert not (tmp_path / "bad" / "results.json").exists()


def test_a_duplicate_id_in_a_language_file_names_its_line(tmp_path):
    (tmp_path / "en.jsonl").write_text('{"id": "a", "question": "q", "passage": "p"}\n{"id": "a", "question": "q2", "passage": "p2"}\n')
    (tmp_path / "de.jsonl").write_text('{"id": "a", "question": "f", "passage": "t"}\n')
    with pytest.raises(DataError, match=r"en.jsonl:2: duplicate id 'a'"):
        load_translated(str(tmp_path / "{lang}.jsonl"), ["en", "de"])


def write_mmarco(root, languages, queries=40, passages=120, triples=300, seed=0):
    """A random mMARCO-layout directory where some languages lack some queries and passages."""
    import random

    rng = random.Random(seed)
    lines = [f"q{rng.randrange(queries)}\tp{rng.randrange(passages)}\tp{rng.randrange(passages)}" for _ in range(triples)]
    (root / "triples.tsv").write_text("\n".join(lines) + "\n")
    for lang in languages:
        (root / lang).mkdir()
        qs = [f"q{i}\t{lang} question {i}" for i in range(queries) if rng.random() < 0.9]
        ps = [f"p{i}\t{lang} passage {i}" for i in range(passages) if rng.random() < 0.9]
        rng.shuffle(ps)  # collections need not share an order
        (root / lang / "queries.tsv").write_text("\n".join(qs) + "\n")
        (root / lang / "collection.tsv").write_text("\n".join(ps) + "\n")


def reference_mmarco(root, languages, max_items, negatives_per_item):
    """The join written the obvious way, everything in dicts: what the streamed loader must equal."""
    triples = {}
    for line in (root / "triples.tsv").read_text().splitlines():
        qid, pos, neg = line.split("\t")
        if max_items and len(triples) >= max_items and (qid, pos) not in triples:
            break
        negs = triples.setdefault((qid, pos), [])
        if len(negs) < negatives_per_item:
            negs.append(neg)
    read = lambda path: dict(line.split("\t") for line in path.read_text().splitlines())
    q = {lang: read(root / lang / "queries.tsv") for lang in languages}
    p = {lang: read(root / lang / "collection.tsv") for lang in languages}
    items = []
    for (qid, pos), negs in triples.items():
        langs = [lang for lang in languages if qid in q[lang] and pos in p[lang]]
        items.append(
            (
                f"{qid}-{pos}",
                {l: q[l][qid] for l in langs},
                {l: p[l][pos] for l in langs},
                {l: tuple(p[l][n] for n in negs if n in p[l]) for l in langs},
            )
        )
    return items


@pytest.mark.parametrize("max_items,negatives", [(None, 1), (50, 3)])
def test_streamed_mmarco_join_equals_the_in_memory_join(tmp_path, monkeypatch, max_items, negatives):
    monkeypatch.setattr("hbt.data.joins.JOIN_CHUNK", 7)  # many chunk boundaries
    languages = ["english", "german", "french"]
    write_mmarco(tmp_path, languages)
    store = load_mmarco(
        str(tmp_path), languages, triples="triples.tsv", queries="{lang}/queries.tsv", max_items=max_items, negatives_per_item=negatives
    )
    expected = reference_mmarco(tmp_path, languages, max_items, negatives)
    got = [store.item(i) for i in range(len(store))]
    assert [(i.id, i.questions, i.passages, {l: n for l, n in i.hard_negatives.items()}) for i in got] == [
        (id_, qs, ps, {l: n for l, n in ns.items() if n}) for id_, qs, ps, ns in expected
    ]
    assert len(got) == (max_items or len(got)) and any(len(i.languages) < 3 for i in got)


def test_a_duplicate_query_id_in_mmarco_names_its_line(tmp_path):
    write_mmarco(tmp_path, ["english"], queries=5, passages=5, triples=20)
    path = tmp_path / "english" / "queries.tsv"
    first = path.read_text().splitlines()[0]
    path.write_text(path.read_text() + first + "\n")
    lineno = len(path.read_text().splitlines())
    with pytest.raises(DataError, match=rf"queries.tsv:{lineno}: duplicate id '{first.split(chr(9))[0]}'"):
        load_mmarco(str(tmp_path), ["english"], triples="triples.tsv", queries="{lang}/queries.tsv")
