"""XQuAD-R / MLQA-R in the LAReQA format (Roy et al. 2020): one SQuAD-style JSON per language whose
paragraphs carry ``sentences`` and ``sentence_breaks``.

Candidates are all sentences of a language, in file order. A question's relevant candidate in a
language is the sentence that contains its answer start there; questions are parallel by id.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import numpy as np

from hbt.data.schema import ParallelItem
from hbt.errors import ConfigError, DataError
from hbt.eval.benchmark import RetrievalBenchmark

XQUAD_R_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")
MLQA_R_LANGUAGES = ("ar", "de", "en", "es", "hi", "vi", "zh")


ARTICLE_PARTS = ("all", "train", "heldout")


def article_indices(n_articles: int, part: str, train_fraction: float = 0.5, split_seed: int = 0) -> list[int]:
    """A fixed split of the articles: a seeded permutation, the first ``train_fraction`` for training.

    Splitting by article keeps every question, its translations and all sentences of its paragraph on
    one side, so nothing from a held-out article is seen in training.
    """
    if part not in ARTICLE_PARTS:
        raise ConfigError("eval.articles", f"unknown part {part!r}; expected one of {', '.join(ARTICLE_PARTS)}")
    if part == "all":
        return list(range(n_articles))
    order = np.random.default_rng(split_seed).permutation(n_articles)
    cut = int(round(n_articles * train_fraction))
    return sorted(int(i) for i in (order[:cut] if part == "train" else order[cut:]))


def load_lareqa(
    name: str,
    directory: str | Path,
    languages: list[str] | None = None,
    articles: str = "all",
    train_fraction: float = 0.5,
    split_seed: int = 0,
) -> RetrievalBenchmark:
    """The benchmark over all articles, or over one side of the article split."""
    parsed = _read_all(directory, languages, aligned_articles=articles != "all")
    queries, candidates, relevant = {}, {}, {}
    for lang, arts in parsed.items():
        keep = article_indices(len(arts), articles, train_fraction, split_seed)
        queries[lang], candidates[lang], relevant[lang] = [], [], {}
        for a in keep:
            offset = len(candidates[lang])
            candidates[lang].extend(arts[a]["sentences"])
            queries[lang].extend(arts[a]["queries"])
            relevant[lang].update({qid: [offset + s] for qid, s in arts[a]["answer_sentence"].items()})
    for lang in queries:
        if not queries[lang] or not candidates[lang]:
            raise DataError(
                str(Path(directory) / f"{lang}.json"),
                f"no {'questions' if not queries[lang] else 'sentences'} for language {lang!r}"
                + (f" in the {articles} articles" if articles != "all" else ""),
            )
    suffix = "" if articles == "all" else f"-{articles}"
    return RetrievalBenchmark(f"{name}{suffix}", queries, candidates, relevant)


def lareqa_items(
    directory: str | Path, languages: list[str] | None = None, articles: str = "train", train_fraction: float = 0.5, split_seed: int = 0
) -> list[ParallelItem]:
    """Training pairs from one side of the article split: each question with its answer sentence, in
    every language (questions are parallel by id)."""
    parsed = _read_all(directory, languages, aligned_articles=True)
    first = next(iter(parsed.values()))
    items: dict[str, dict] = {}
    for lang, arts in parsed.items():
        for a in article_indices(len(first), articles, train_fraction, split_seed):
            sentences = arts[a]["sentences"]
            for qid, question in arts[a]["queries"]:
                entry = items.setdefault(qid, {"questions": {}, "passages": {}})
                entry["questions"][lang] = question
                entry["passages"][lang] = sentences[arts[a]["answer_sentence"][qid]]
    return [ParallelItem(qid, e["questions"], e["passages"]) for qid, e in items.items()]


def _read_all(directory: str | Path, languages: list[str] | None, aligned_articles: bool = False) -> dict[str, list[dict]]:
    """Every language's articles. Only the article split (an XQuAD-R feature, where every language holds
    the same articles in the same order) needs them aligned; MLQA-R's languages hold different ones."""
    directory = Path(directory)
    if languages is None:
        languages = sorted(p.stem for p in directory.glob("*.json"))
        if not languages:
            raise DataError(str(directory), "no <lang>.json files (LAReQA format) found")
    parsed = {lang: _read_language(directory / f"{lang}.json") for lang in languages}
    counts = {lang: len(arts) for lang, arts in parsed.items()}
    if aligned_articles and len(set(counts.values())) > 1:
        raise DataError(
            str(directory), f"languages have different numbers of articles: {counts} (an article split needs XQuAD-R's aligned articles)"
        )
    return parsed


def _read_language(path: Path) -> list[dict]:
    """Per article: its sentences, its questions and, per question, the index of its answer sentence."""
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
    articles = []
    for a, article in enumerate(doc["data"]):
        sentences: list[str] = []
        queries: list[tuple[str, str]] = []
        answer_sentence: dict[str, int] = {}
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
                queries.append((qa["id"], qa["question"]))
                answer_sentence[qa["id"]] = first + max(bisect.bisect_right(starts, answer_start) - 1, 0)
        articles.append({"sentences": sentences, "queries": queries, "answer_sentence": answer_sentence})
    return articles
