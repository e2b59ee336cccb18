"""MTOP in its released layout: parallel by id (not by line), translation and intent relevance, bad rows."""

import json

import pytest
import torch

from hbt.errors import ConfigError, DataError
from hbt.eval.mtop import load_mtop
from hbt.eval.retrieval import Evaluator

# (id, intent, {lang: utterance}): a language without an entry lacks that id, as MTOP's splits do.
ROWS = [
    (
        "3232343243",
        "IN:GET_WEATHER",
        {"en": "what is the weather today", "de": "wie ist das wetter heute", "fr": "quel temps fait-il aujourd'hui"},
    ),
    ("3232343244", "IN:GET_WEATHER", {"en": "will it rain tomorrow", "de": "regnet es morgen", "fr": "va-t-il pleuvoir demain"}),
    (
        "3232343245",
        "IN:CREATE_ALARM",
        {"en": "set an alarm for 7 am", "de": "stelle einen wecker auf 7 uhr", "fr": "mets une alarme à 7 heures"},
    ),
    ("3232343246", "IN:CREATE_ALARM", {"en": "wake me up at six", "fr": "réveille-moi à six heures"}),
    ("3232343247", "IN:GET_MESSAGE", {"en": "show my messages", "de": "zeige meine nachrichten"}),
    (
        "3232343248",
        "IN:SEND_MESSAGE",
        {"en": "text mom i am late", "de": "schreib mama dass ich spät bin", "fr": "écris à maman que je suis en retard"},
    ),
]
LOCALE = {"en": "en_XX", "de": "de_DE", "fr": "fr_XX"}


def mtop_row(uid: str, intent: str, text: str, lang: str) -> str:
    tokens = json.dumps({"tokens": text.split(), "tokenSpans": []}, ensure_ascii=False)
    return "\t".join([uid, intent, "", text, intent.split(":")[1].lower(), LOCALE[lang], f"[{intent} {text} ]", tokens])


def write_mtop(root, rows=ROWS, split="test"):
    for lang in LOCALE:
        (root / lang).mkdir(parents=True, exist_ok=True)
        # Each language's file in its own order (MTOP is parallel by id, not by line).
        lines = [mtop_row(uid, intent, texts[lang], lang) for uid, intent, texts in rows if lang in texts]
        if lang == "fr":
            lines.reverse()
        (root / lang / f"{split}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return root


def brute_force(bench, queries, pools, relevance: str) -> dict:
    """Per pair AP and recall@k from a plain sort of every candidate, the query itself removed."""
    langs, out = bench.languages, {"mono": {}, "cross": {}, "multi": {}}
    intent = {uid: label for uid, label, _ in ROWS}
    ids = {lang: [uid for uid, _ in bench.queries[lang]] for lang in langs}

    def relevant(uid, cand_uid):
        return cand_uid == uid if relevance == "translation" else intent[cand_uid] == intent[uid]

    def metrics(q, cands):  # cands: [(score, is_relevant, lang)] in pool order
        ranked = sorted(range(len(cands)), key=lambda c: (-cands[c][0], c))
        ranks = [r + 1 for r, c in enumerate(ranked) if cands[c][1]]
        if not ranks:
            return None
        ap = sum((n + 1) / rank for n, rank in enumerate(ranks)) / len(ranks)
        return {
            "map": ap,
            "recall@1": sum(r <= 1 for r in ranks) / len(ranks),
            "recall@5": sum(r <= 5 for r in ranks) / len(ranks),
            "rank_distance": max(ranks) - min(ranks),
        }

    for x in langs:
        for i, uid in enumerate(ids[x]):
            q = queries[x][i]
            row = []
            for y in langs:
                cands = [(float(q @ pools[y][c]), relevant(uid, cu), y) for c, cu in enumerate(ids[y]) if not (y == x and c == i)]
                setting = "mono" if y == x else "cross"
                found = metrics(q, cands)
                if found:
                    out[setting].setdefault(f"{x}-{y}", []).append(found)
                row += cands
            found = metrics(q, row)
            if found:
                out["multi"].setdefault(x, []).append(found)
    return {s: {key: {m: sum(v[m] for v in vals) / len(vals) for m in vals[0]} for key, vals in pairs.items()} for s, pairs in out.items()}


@pytest.mark.parametrize("relevance", ["translation", "intent"])
def test_mtop_metrics_equal_a_plain_sort_of_every_candidate(tmp_path, relevance):
    bench = load_mtop(str(write_mtop(tmp_path)), ["en", "de", "fr"], relevance=relevance)
    assert [len(bench.queries[lang]) for lang in ("en", "de", "fr")] == [6, 5, 5]
    torch.manual_seed(0)
    queries = {lang: torch.nn.functional.normalize(torch.randn(len(bench.queries[lang]), 8), dim=1) for lang in bench.languages}
    results = Evaluator(ks=(1, 5), settings=("mono", "cross", "multi")).score(bench, queries, queries)
    expected = brute_force(bench, queries, queries, relevance)
    if relevance == "translation":
        assert "query itself" in results["mono"].not_applicable and not expected["mono"]
    for setting in ("mono", "cross", "multi"):
        got = results[setting].pairs
        assert set(got) == set(expected[setting])
        for key, values in expected[setting].items():
            for metric, value in values.items():
                if metric == "rank_distance" and setting != "multi":
                    continue
                assert got[key].metrics[metric] == pytest.approx(value), (setting, key, metric)
    # Parallel by id: "de" lacks 3232343246, so en-de scores 5 of the 6 English queries and says so.
    if relevance == "translation":
        assert results["cross"].pairs["en-de"].num_queries == 5
        assert results["cross"].pairs["de-fr"].num_queries == 4  # the de ids with a French translation


def test_translations_found_first_score_perfectly(tmp_path):
    """Negative control for the id join: embeddings keyed by id rank each translation first; shuffled
    ids (a line-aligned reading of these files) do not."""
    bench = load_mtop(str(write_mtop(tmp_path)), ["en", "de", "fr"])
    vectors = torch.nn.functional.normalize(torch.randn(len(ROWS), 16, generator=torch.Generator().manual_seed(1)), dim=1)
    index = {uid: n for n, (uid, _, _) in enumerate(ROWS)}
    by_id = {lang: vectors[[index[uid] for uid, _ in bench.queries[lang]]] for lang in bench.languages}
    results = Evaluator(ks=(1, 5)).score(bench, by_id, by_id)
    assert results["cross"].macro["map"] == 1.0 and results["multi"].macro["map"] == 1.0
    by_line = {lang: vectors[: len(bench.queries[lang])] for lang in bench.languages}
    assert Evaluator(ks=(1, 5)).score(bench, by_line, by_line)["cross"].macro["map"] < 0.9


@pytest.mark.parametrize(
    "line,problem",
    [
        ("3232343299\tIN:GET_WEATHER\t\tweather", "got 4 field"),
        ("3232343299\tIN:GET_WEATHER\t\t \tweather\ten_XX\t\t{}", "empty utterance"),
        ("3232343243\tIN:GET_WEATHER\t\tagain\tweather\ten_XX\t\t{}", "duplicate id '3232343243' \\(first at line 1\\)"),
        ("3232343299\tIN:GET_WEATHER\t\tweather\tweather\tde_DE\t\t{}", "locale 'de_DE' in the 'en' file"),
        ("3232343299\tGET_WEATHER\t\tweather\tweather\ten_XX\t\t{}", "not an MTOP intent"),
    ],
)
def test_a_bad_mtop_row_names_its_file_and_line(tmp_path, line, problem):
    write_mtop(tmp_path)
    path = tmp_path / "en" / "test.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(lines[:3] + [line] + lines[3:]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=problem) as err:
        load_mtop(str(tmp_path), ["en", "de"])
    assert f"{path}:4:" in str(err.value)


def test_mtop_configuration_errors(tmp_path):
    write_mtop(tmp_path)
    with pytest.raises(ConfigError, match="eval.mtop.relevance"):
        load_mtop(str(tmp_path), ["en", "de"], relevance="slots")
    with pytest.raises(DataError, match="file not found"):
        load_mtop(str(tmp_path), ["en", "th"])
