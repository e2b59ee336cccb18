"""Build MLQA-R (LAReQA format) from the MLQA release, the way XQuAD-R was built from XQuAD.

    python -m hbt.eval.mlqa_r <MLQA_V1 dir> <out dir> --split test

For each language, ``<split>/<split>-context-<l>-question-<l>.json`` is read; every context is split into
sentences (``split_sentences``), and each paragraph gets LAReQA's ``sentences`` and
``sentence_breaks``. With ``--parallel-only`` (default) only questions present in every language are
kept, so queries are parallel by id, as in XQuAD-R.

The sentence splitter: a sentence ends after ``.``, ``!``, ``?`` (and ``؟`` ``।`` ``…``) followed by
white space, or after the full-width ``。！？`` with or without it; white space between sentences
belongs to no sentence. It is a rule-based splitter, not the one LAReQA used, so candidate counts can
differ from LAReQA's table (for example ar 517 questions / 2,545 candidates); compare before publishing.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from hbt.errors import DataError, HbtError
from hbt.eval.lareqa import MLQA_R_LANGUAGES

SENTENCE_END = re.compile(r"(?:(?<=[.!?؟।…])\s+)|(?<=[。！？])\s*")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the sentences of ``text``, covering every non-space character."""
    spans, start = [], 0
    for match in SENTENCE_END.finditer(text):
        if match.start() > start:
            spans.append((start, match.start()))
        start = match.end()
    if text[start:].strip():
        spans.append((start, len(text.rstrip())))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def convert(mlqa_dir: str, out_dir: str, split: str = "test", languages: list[str] | None = None, parallel_only: bool = True) -> dict[str, tuple[int, int]]:
    languages = list(languages or MLQA_R_LANGUAGES)
    docs = {}
    for lang in languages:
        path = Path(mlqa_dir) / split / f"{split}-context-{lang}-question-{lang}.json"
        if not path.is_file():
            raise DataError(str(path), "file not found (expected the MLQA_V1 layout)")
        try:
            docs[lang] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}", f"invalid JSON: {err.msg}") from None
    ids = {lang: {qa["id"] for a in doc["data"] for p in a["paragraphs"] for qa in p["qas"]} for lang, doc in docs.items()}
    keep = set.intersection(*ids.values()) if parallel_only else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for lang, doc in docs.items():
        questions = candidates = 0
        for article in doc["data"]:
            for paragraph in article["paragraphs"]:
                spans = split_sentences(paragraph["context"])
                paragraph["sentences"] = [paragraph["context"][s:e] for s, e in spans]
                paragraph["sentence_breaks"] = [[s, e] for s, e in spans]
                paragraph["qas"] = [qa for qa in paragraph["qas"] if keep is None or qa["id"] in keep]
                questions += len(paragraph["qas"])
                candidates += len(spans)
        (out / f"{lang}.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        counts[lang] = (questions, candidates)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build MLQA-R (LAReQA format) from MLQA.")
    parser.add_argument("mlqa_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--split", default="test", choices=["dev", "test"])
    parser.add_argument("--languages", nargs="+", default=list(MLQA_R_LANGUAGES))
    parser.add_argument("--all-questions", action="store_true", help="keep questions missing in some languages")
    args = parser.parse_args(argv)
    try:
        counts = convert(args.mlqa_dir, args.out_dir, args.split, args.languages, not args.all_questions)
    except HbtError as err:
        print(str(err), file=sys.stderr)
        return 1
    for lang, (questions, candidates) in counts.items():
        print(f"{lang}: {questions} questions, {candidates} candidates")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
