"""Build MLQA-R (LAReQA format) from the MLQA release, the way XQuAD-R was built from XQuAD.

    python -m hbt.eval.mlqa_r <MLQA_V1 dir> <out dir>            # dev, as LAReQA built it

For each language, ``<split>/<split>-context-<l>-question-<l>.json`` is read; every context is split into
sentences (``split_sentences``), and each paragraph gets LAReQA's ``sentences`` and
``sentence_breaks``. As in LAReQA, every question of each language is kept (MLQA's questions are
parallel across English and up to three other languages, so an intersection over all seven would be
empty); LAReQA's MLQA-R counts (en 1148, ar 517, de 512, es 500, hi 507, vi 511, zh 504) are MLQA's dev
counts, so ``dev`` is the default split. ``--parallel-only`` keeps only questions present in every
language, for a fully parallel subset (it stops with an error when that is empty). MLQA's languages do
not share articles: each file holds only the contexts that have questions in that language, so nothing
here or in evaluation assumes aligned articles.

The sentence splitter (``split_sentences``) is rule-based, in the style of Moses' splitter with
non-breaking prefixes: a sentence ends at ``.`` ``!`` ``?`` ``؟`` ``।`` (plus any closing quotes or
brackets) followed by white space, and after the full-width ``。！？`` with or without it. A period
followed by a lowercase word does not end a sentence; per language (``LANGUAGE_RULES``), neither does
one after initials and dotted abbreviations (``J.``, ``U.S.``, ``z.B.``: en, de, ru), after a one- or
two-digit ordinal (``am 7. Mai``: de, tr) or after a listed abbreviation (``Mio.``, ``Dr.``: en, de,
ru). LAReQA's own splitter was not released; the rules each language gets are those that bring it
closer to LAReQA's segmentation of XQuAD-R, which is in the files. On XQuAD-R it then gives candidate
counts within 1% of LAReQA's for ar, de, en, hi, vi and zh (es +2.6%) and the same segmentation for
74–97% of paragraphs (docs/evaluation.md), so MLQA-R's counts can still differ slightly from LAReQA's
table (for example ar 517 questions / 2,545 candidates); compare before publishing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from hbt.errors import DataError, HbtError
from hbt.eval.lareqa import MLQA_R_LANGUAGES

BOUNDARY = re.compile(r"([.!?؟।]+)([\"'”’»)\]]*)(\s+)|([。！？][\"'”’»）」』]*)(\s*)")
INITIALS = re.compile(r"^(?:[^\W\d_]\.)*[^\W\d_]$")  # J  U.S  z.B  d.h
ORDINAL = re.compile(r"^\d{1,2}$")  # am 7. Mai, 19. yüzyıl
ABBREVIATIONS = {  # a period after these is not read as a sentence end
    "en": {
        "Mr",
        "Mrs",
        "Ms",
        "Dr",
        "Prof",
        "St",
        "Jr",
        "Sr",
        "Vol",
        "No",
        "approx",
        "vs",
        "ca",
        "cf",
        "Gen",
        "Col",
        "Lt",
        "Mt",
        "Inc",
        "Ltd",
        "Co",
        "Corp",
    },
    "de": {"Mio", "Mrd", "Nr", "Dr", "Prof", "St", "ca", "bzw", "vgl", "ggf", "evtl", "Str", "Bd", "Jh", "Jhd", "Abs", "Art", "Tsd"},
    "ru": {"г", "гг", "т", "тыс", "млн", "млрд", "руб", "им", "ул", "д", "ок", "см", "др"},
}
# Which non-breaking rules each language gets: those that bring the splitter closer to LAReQA's own
# segmentation of XQuAD-R for that language (docs/evaluation.md); other languages get the default.
DEFAULT_RULES = ("lowercase",)
LANGUAGE_RULES = {
    "en": ("lowercase", "initials", "abbreviations"),
    "de": ("lowercase", "initials", "ordinals", "abbreviations"),
    "ru": ("lowercase", "initials", "abbreviations"),
    "tr": ("lowercase", "ordinals"),
    "es": (),
}


def split_sentences(text: str, lang: str | None = None) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the sentences of ``text``, covering every non-space character."""
    rules = LANGUAGE_RULES.get(lang or "", DEFAULT_RULES)
    spans, start = [], 0
    for match in BOUNDARY.finditer(text):
        if match.group(1) == "." and not _period_ends_sentence(text, match, lang, rules):
            continue
        end = match.end(2) if match.group(1) is not None else match.end(4)
        if text[start:end].strip():
            spans.append((start, end))
        start = match.end()
    if text[start:].strip():
        spans.append((start, len(text.rstrip())))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def _period_ends_sentence(text: str, match: re.Match, lang: str | None, rules: tuple[str, ...]) -> bool:
    before = text[: match.start(1)]
    word = before.rsplit(None, 1)[-1].lstrip("\"'“‘«([") if before.strip() else ""
    if "lowercase" in rules and text[match.end() : match.end() + 1].islower():
        return False
    if ("initials" in rules and INITIALS.match(word)) or ("ordinals" in rules and ORDINAL.match(word)):
        return False
    return not ("abbreviations" in rules and word in ABBREVIATIONS.get(lang or "", ()))


# LAReQA (Roy et al. 2020), Table 1: MLQA-R questions per language (= MLQA v1 dev).
LAREQA_MLQA_R_QUESTIONS = {"ar": 517, "de": 512, "en": 1148, "es": 500, "hi": 507, "vi": 511, "zh": 504}


def convert(
    mlqa_dir: str, out_dir: str, split: str = "dev", languages: list[str] | None = None, parallel_only: bool = False
) -> dict[str, tuple[int, int]]:
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
    if keep is not None and not keep:
        raise DataError(str(Path(mlqa_dir) / split), f"no question is present in all of {', '.join(languages)}; drop --parallel-only")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for lang, doc in docs.items():
        questions = candidates = 0
        for article in doc["data"]:
            for paragraph in article["paragraphs"]:
                spans = split_sentences(paragraph["context"], lang)
                paragraph["sentences"] = [paragraph["context"][s:e] for s, e in spans]
                paragraph["sentence_breaks"] = [[s, e] for s, e in spans]
                paragraph["qas"] = [qa for qa in paragraph["qas"] if keep is None or qa["id"] in keep]
                questions += len(paragraph["qas"])
                candidates += len(spans)
        if not questions:
            raise DataError(
                str(Path(mlqa_dir) / split / f"{split}-context-{lang}-question-{lang}.json"), f"no questions for language {lang!r}"
            )
        (out / f"{lang}.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        counts[lang] = (questions, candidates)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build MLQA-R (LAReQA format) from MLQA.")
    parser.add_argument("mlqa_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--split", default="dev", choices=["dev", "test"], help="dev: LAReQA's MLQA-R")
    parser.add_argument("--languages", nargs="+", default=list(MLQA_R_LANGUAGES))
    parser.add_argument("--parallel-only", action="store_true", help="keep only questions present in every language")
    args = parser.parse_args(argv)
    try:
        counts = convert(args.mlqa_dir, args.out_dir, args.split, args.languages, args.parallel_only)
    except HbtError as err:
        print(str(err), file=sys.stderr)
        return 1
    compare = args.split == "dev" and not args.parallel_only
    for lang, (questions, candidates) in counts.items():
        reference = LAREQA_MLQA_R_QUESTIONS.get(lang) if compare else None
        note = f" (LAReQA: {reference}{'' if reference == questions else ', DIFFERS'})" if reference is not None else ""
        print(f"{lang}: {questions} questions{note}, {candidates} candidates")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
