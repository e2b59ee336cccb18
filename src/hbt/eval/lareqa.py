"""XQuAD-R / MLQA-R in the LAReQA format (Roy et al. 2020): one SQuAD-style JSON per language whose
paragraphs carry ``sentences`` and ``sentence_breaks``.

Candidates are all sentences of a language, in file order. A question's relevant candidate in a
language is the sentence that contains its answer start there; questions are parallel by id.
"""
from __future__ import annotations

import bisect
import json
from pathlib import Path

from hbt.errors import DataError
from hbt.eval.benchmark import RetrievalBenchmark

XQUAD_R_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")
MLQA_R_LANGUAGES = ("ar", "de", "en", "es", "hi", "vi", "zh")


def load_lareqa(name: str, directory: str | Path, languages: list[str] | None = None) -> RetrievalBenchmark:
    directory = Path(directory)
    if languages is None:
        languages = sorted(p.stem for p in directory.glob("*.json"))
        if not languages:
            raise DataError(str(directory), "no <lang>.json files (LAReQA format) found")
    queries, candidates, relevant = {}, {}, {}
    for lang in languages:
        queries[lang], candidates[lang], relevant[lang] = _read_language(directory / f"{lang}.json")
    return RetrievalBenchmark(name, queries, candidates, relevant)


def _read_language(path: Path):
    if not path.is_file():
        raise DataError(str(path), "file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}", f"invalid JSON: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise DataError(str(path), f"not UTF-8 text: {err.reason}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(str(path), "expected a SQuAD-style object with a 'data' list")
    queries: list[tuple[str, str]] = []
    sentences: list[str] = []
    relevant: dict[str, list[int]] = {}
    for a, article in enumerate(doc["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            where = f"{path} (data[{a}].paragraphs[{p}])"
            missing = [key for key in ("sentences", "sentence_breaks", "qas") if key not in paragraph]
            if missing:
                raise DataError(where, f"missing key {missing[0]!r} (not LAReQA format)")
            breaks = paragraph["sentence_breaks"]
            if len(breaks) != len(paragraph["sentences"]) or not breaks:
                raise DataError(where, f"{len(paragraph['sentences'])} sentences but {len(breaks)} sentence_breaks")
            first = len(sentences)
            sentences.extend(paragraph["sentences"])
            starts = [start for start, _ in breaks]
            for qa in paragraph["qas"]:
                if not qa.get("answers") or not qa.get("question", "").strip():
                    raise DataError(where, f"question {qa.get('id')!r} has no answer or an empty text")
                answer_start = qa["answers"][0]["answer_start"]
                sentence = max(bisect.bisect_right(starts, answer_start) - 1, 0)
                queries.append((qa["id"], qa["question"]))
                relevant[qa["id"]] = [first + sentence]
    return queries, sentences, relevant
