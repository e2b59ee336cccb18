"""What each dataset :mod:`hbt.fetch` knows is: where it is published, its languages, the files to get and
where each goes under the data directory, what to do by hand without network, and the unpacking or
conversion some need (MLQA -> MLQA-R, the MTOP archive)."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hbt.errors import HbtError

XQUAD_R = "https://raw.githubusercontent.com/google-research-datasets/lareqa/master/xquad-r/{lang}.json"
XQUAD_R_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")
TATOEBA = "https://raw.githubusercontent.com/facebookresearch/LASER/main/data/tatoeba/v1/tatoeba.{lang}-eng.{side}"
TATOEBA_LANGUAGES = tuple(
    "afr amh ang ara arq arz ast awa aze bel ben ber bos bre bul cat cbk ceb ces cha cmn cor csb cym dan deu dsb "
    "dtp ell epo est eus fao fin fra fry gla gle glg gsw heb hin hrv hsb hun hye ido ile ina ind isl ita jav jpn "
    "kab kat kaz khm kor kur kzj lat lfn lit lvs mal mar max mhr mkd mon nds nld nno nob nov oci orv pam pes pms "
    "pol por ron rus slk slv spa sqi srp swe swg swh tam tat tel tgl tha tuk tur tzl uig ukr urd uzb vie war wuu "
    "xho yid yue zsm".split()
)
MLQA = "https://dl.fbaipublicfiles.com/MLQA/MLQA_V1.zip"
MLQA_LANGUAGES = ("ar", "de", "en", "es", "hi", "vi", "zh")
MTOP = "https://dl.fbaipublicfiles.com/mtop/mtop.zip"
MTOP_LANGUAGES = ("de", "en", "es", "fr", "hi", "th")
MMARCO_REPO = "unicamp-dl/mmarco"
MMARCO_LANGUAGES = (
    "english chinese french german indonesian italian portuguese russian spanish arabic dutch hindi japanese vietnamese".split()
)
MIRACL_REPO, MIRACL_CORPUS_REPO = "miracl/miracl", "miracl/miracl-corpus"
MIRACL_LANGUAGES = ("ar", "bn", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te", "th", "zh")


class FetchError(HbtError):
    def __init__(self, dataset: str, problem: str):
        super().__init__(f"fetch error: {dataset}: {problem}")


@dataclass
class Remote:
    """One file to fetch: from a URL, or a file of a Hugging Face dataset repository."""

    target: str  # relative to the dataset's directory
    url: str | None = None
    repo: str | None = None
    path: str | None = None
    size: int | None = None
    sha256: str | None = None  # published by the Hub for LFS files
    git_sha1: str | None = None  # the git blob id the Hub publishes for other files

    @property
    def source(self) -> str:
        return self.url or f"hf://datasets/{self.repo}/{self.path}"


@dataclass
class Plan:
    dataset: str
    directory: str  # under the data directory
    files: list[Remote]
    manual: str  # what to do by hand without network
    finish: Callable[[Path, Path], None] | None = None  # (staging dir, dataset dir): unpack / convert
    notes: list[str] = field(default_factory=list)


# -- what each dataset is -------------------------------------------------------------------------------------
def plan_for(dataset: str, languages: list[str], split: str = "dev", corpus: bool = True) -> Plan:
    builders = {"xquad-r": _xquad_r, "tatoeba": _tatoeba, "mlqa-r": _mlqa_r, "mtop": _mtop, "mmarco": _mmarco, "miracl": _miracl}
    if dataset not in builders:
        raise FetchError(dataset, f"unknown dataset; one of {', '.join(builders)}")
    return builders[dataset](languages, split, corpus)


def _languages(dataset: str, given: list[str], known: tuple[str, ...]) -> list[str]:
    unknown = [lang for lang in given if lang not in known]
    if unknown:
        raise FetchError(dataset, f"no language {unknown[0]!r}; it has {', '.join(known)}")
    return list(given or known)


def _xquad_r(languages, split, corpus) -> Plan:
    langs = _languages("xquad-r", languages, XQUAD_R_LANGUAGES)
    return Plan(
        "xquad-r",
        "xquad-r",
        [Remote(f"{lang}.json", url=XQUAD_R.format(lang=lang)) for lang in langs],
        "download xquad-r/<lang>.json from github.com/google-research-datasets/lareqa into <data dir>/xquad-r/",
    )


def _tatoeba(languages, split, corpus) -> Plan:
    langs = _languages("tatoeba", languages, TATOEBA_LANGUAGES)
    files = [Remote(f"tatoeba.{lang}-eng.{side}", url=TATOEBA.format(lang=lang, side=side)) for lang in langs for side in (lang, "eng")]
    return Plan(
        "tatoeba",
        "tatoeba",
        files,
        "download data/tatoeba/v1/tatoeba.<xxx>-eng.{<xxx>,eng} from github.com/facebookresearch/LASER into <data dir>/tatoeba/",
    )


def _mlqa_r(languages, split, corpus) -> Plan:
    langs = _languages("mlqa-r", languages, MLQA_LANGUAGES)

    def finish(staging: Path, directory: Path) -> None:
        from hbt.eval.mlqa_r import convert

        unpacked = _unzip(staging / "MLQA_V1.zip", staging / "unpacked")
        found = next(iter(unpacked.rglob(f"{split}/{split}-context-en-question-en.json")), None)
        if found is None:
            raise FetchError("mlqa-r", f"MLQA_V1.zip holds no {split}/{split}-context-en-question-en.json")
        counts = convert(str(found.parent.parent), str(directory), split, langs)
        for lang, (questions, candidates) in counts.items():
            print(f"mlqa-r {lang}: {questions} questions, {candidates} candidates")

    return Plan(
        "mlqa-r",
        "mlqa-r",
        [Remote("MLQA_V1.zip", url=MLQA)],
        f"download {MLQA}, unzip it and run `python -m hbt.eval.mlqa_r <MLQA_V1 dir> <data dir>/mlqa-r`",
        finish,
        ["the archive is staged and converted to MLQA-R (LAReQA format); hbt keeps the converted files only"],
    )


def _mtop(languages, split, corpus) -> Plan:
    langs = _languages("mtop", languages, MTOP_LANGUAGES)

    def finish(staging: Path, directory: Path) -> None:
        unpacked = _unzip(staging / "mtop.zip", staging / "unpacked")
        for lang in langs:
            found = sorted(unpacked.rglob(f"{lang}/*.txt"))
            if not found:
                raise FetchError("mtop", f"mtop.zip holds no {lang}/*.txt")
            (directory / lang).mkdir(parents=True, exist_ok=True)
            for path in found:
                os.replace(path, directory / lang / path.name)

    return Plan(
        "mtop", "mtop", [Remote("mtop.zip", url=MTOP)], f"download {MTOP} and unzip it into <data dir>/mtop/ (<lang>/test.txt)", finish
    )


def _mmarco(languages, split, corpus) -> Plan:
    langs = _languages("mmarco", languages, MMARCO_LANGUAGES)
    files = [Remote("triples.train.ids.small.tsv", repo=MMARCO_REPO, path="data/triples.train.ids.small.tsv")]
    for lang in langs:
        files.append(Remote(f"{lang}/queries.train.tsv", repo=MMARCO_REPO, path=f"data/google/queries/train/{lang}_queries.train.tsv"))
        files.append(Remote(f"{lang}/collection.tsv", repo=MMARCO_REPO, path=f"data/google/collections/{lang}_collection.tsv"))
    return Plan(
        "mmarco",
        "mmarco",
        files,
        "download data/triples.train.ids.small.tsv and data/google/{queries/train/<lang>_queries.train.tsv,collections/<lang>_collection.tsv} "
        "from huggingface.co/datasets/unicamp-dl/mmarco into <data dir>/mmarco/ as <lang>/queries.train.tsv, <lang>/collection.tsv",
        notes=["train with data=mmarco data.train.directory=<data dir>/mmarco"],
    )


def _miracl(languages, split, corpus) -> Plan:
    langs = _languages("miracl", languages, MIRACL_LANGUAGES)
    files = []
    for lang in langs:
        base = f"miracl-v1.0-{lang}"
        files.append(Remote(f"{base}/topics/topics.{base}-{split}.tsv", repo=MIRACL_REPO, path=f"{base}/topics/topics.{base}-{split}.tsv"))
        files.append(Remote(f"{base}/qrels/qrels.{base}-{split}.tsv", repo=MIRACL_REPO, path=f"{base}/qrels/qrels.{base}-{split}.tsv"))
        if corpus:
            files.append(
                Remote(f"miracl-corpus-v1.0-{lang}/", repo=MIRACL_CORPUS_REPO, path=f"miracl-corpus-v1.0-{lang}")
            )  # a folder: listed
    return Plan(
        "miracl",
        "miracl",
        files,
        "download miracl-v1.0-<lang>/{topics,qrels}/ from huggingface.co/datasets/miracl/miracl and miracl-corpus-v1.0-<lang>/ "
        "from huggingface.co/datasets/miracl/miracl-corpus into <data dir>/miracl/",
    )


def _unzip(archive: Path, into: Path) -> Path:
    shutil.rmtree(into, ignore_errors=True)
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(into)
    return into
