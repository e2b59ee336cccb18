"""Every experiment config runs end to end in smoke mode (`debug=smoke`): its sweep (every model, one
ratio), then `python -m hbt.report` tabulates its runs, so none of them can rot.

The commands are the ones docs/research_questions.md gives, unchanged but for `debug=smoke` and the data
roots: the models are the experiments' own hub names, resolved to random-init models of the same
architectures (tests' family_dirs, with mE5's real 250k tokenizer) placed at those paths under the
working directory, with the hub offline; the data are fixtures in the released formats (mMARCO TSVs,
MIRACL topics/qrels/corpus, MTOP TSVs, and the first articles and lines of the real XQuAD-R and Tatoeba).
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_DATA, run_cli

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# Each model config's hub name -> the random-init family that has its architecture.
HUB_NAMES = {
    "google-bert/bert-base-multilingual-cased": "bert",
    "FacebookAI/xlm-roberta-base": "xlmr",
    "FacebookAI/xlm-roberta-large": "xlmr",
    "sentence-transformers/LaBSE": "labse",
    "intfloat/multilingual-e5-small": "me5",
    "intfloat/multilingual-e5-base": "me5",
    "intfloat/multilingual-e5-large": "me5",
    "google/mt5-small": "mt5",
    "google/mt5-base": "mt5",
    "google/mt5-large": "mt5",
    "google/mt5-xl": "mt5",
    "google/mt5-xxl": "mt5",
    "google/flan-ul2": "t5",
    "facebook/mbart-large-50": "mbart50",
}
MMARCO = [
    "english",
    "chinese",
    "french",
    "german",
    "indonesian",
    "italian",
    "portuguese",
    "russian",
    "spanish",
    "arabic",
    "dutch",
    "hindi",
    "japanese",
    "vietnamese",
]
MIRACL = ["ar", "bn", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te", "th", "zh"]


def cut_xquad_r(source: Path, target: Path, articles: int = 4, paragraphs: int = 1) -> None:
    target.mkdir(parents=True)
    for path in source.glob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        data["data"] = [{**a, "paragraphs": a["paragraphs"][:paragraphs]} for a in data["data"][:articles]]
        (target / path.name).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def cut_tatoeba(source: Path, target: Path, lines: int = 8) -> None:
    target.mkdir(parents=True)
    for path in source.glob("tatoeba.*"):
        with open(path, encoding="utf-8") as handle:
            (target / path.name).write_text("".join(next(handle) for _ in range(lines)), encoding="utf-8")


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory, family_dirs, me5_dir):
    from test_loaders import write_mmarco
    from test_metrics_reference import write_miracl
    from test_mtop import LOCALE, ROWS, mtop_row

    from hbt.models.families import build

    for name in ("xquad-r", "tatoeba"):
        if not (SHARED_DATA / name).is_dir():
            pytest.skip(f"shared data {SHARED_DATA / name} not present")
    root = tmp_path_factory.mktemp("smoke")
    dirs = {**family_dirs, "t5": build("t5", root / "families" / "t5", me5_dir)}
    for hub_name, family in HUB_NAMES.items():
        (root / hub_name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(dirs[family], root / hub_name)
    cut_xquad_r(SHARED_DATA / "xquad-r", root / "data" / "xquad-r")  # one data root, as paths.data_dir
    cut_tatoeba(SHARED_DATA / "tatoeba", root / "data" / "tatoeba")
    mmarco = root / "mmarco"
    mmarco.mkdir()
    write_mmarco(mmarco, MMARCO, queries=30, passages=60, triples=120)
    (mmarco / "triples.tsv").rename(mmarco / "triples.train.ids.small.tsv")
    for lang in MMARCO:
        (mmarco / lang / "queries.tsv").rename(mmarco / lang / "queries.train.tsv")
    for lang in MIRACL:
        write_miracl(root / "data" / "miracl", lang)
        topics = root / "data" / "miracl" / f"miracl-v1.0-{lang}" / "topics" / f"topics.miracl-v1.0-{lang}-dev.tsv"
        topics.write_text(topics.read_text().replace("q3\tquestion", "q3\tpython code question"))  # a code-related query
    for lang in ("en", "de", "es", "fr", "hi", "th"):
        (root / "data" / "mtop" / lang).mkdir(parents=True)
        rows = [mtop_row(uid, intent, texts.get(lang, texts["en"]), lang if lang in LOCALE else "en") for uid, intent, texts in ROWS]
        if lang not in LOCALE:  # the fixture's texts cover en/de/fr; es/hi/th reuse English text with their own locale
            rows = [row.replace("en_XX", f"{lang}_XX") for row in rows]
        (root / "data" / "mtop" / lang / "test.txt").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return root


def sweep_of(experiment: str) -> tuple[int, bool]:
    """How many jobs the experiment's smoke sweep has (the product of its parameters' values: smoke mode
    keeps one ratio, and every model), and whether it trains on mMARCO (whose directory the user gives)."""
    from conftest import compose_config

    full = compose_config("train", [f"experiment={experiment}"], Path("/tmp"))
    for value in str((full.hydra.sweeper.params or {}).get("sampler.ratio", "0.5")).split(","):
        assert 0 <= float(value) <= 1, f"{experiment}: sampler.ratio sweep value {value!r}"
    cfg = compose_config("train", [f"experiment={experiment}", "debug=smoke"], Path("/tmp"))
    count = 1
    for values in (cfg.hydra.sweeper.params or {}).values():
        count *= len(str(values).split(","))
    return count, cfg.data.train._target_.endswith("load_mmarco")


# Columns each question needs in its report (beyond MAP).
EXPECTED = {
    "mbert_ratio_sweep": ["xquad_r/mono/f1@10", "xquad_r/cross/precision@1"],
    "multilingual_pool": ["mtop/multi/recall@5", "xquad_r/multi/rank_distance", "tatoeba/multi/recall@5"],
    "miracl_code_queries": ["miracl[code]/mono/ndcg@10", "miracl/mono/recall@100"],
    "tatoeba_vs_mbart50": ["tatoeba_mbart50/xx_en/recall@1"],
    "tatoeba_low_resource": ["tatoeba_low_resource/xx_en/recall@1"],
    "scaling_past_13b": ["miracl/mono/ndcg@10"],
}


@pytest.fixture(scope="module")
def smoke_runs(smoke_root):
    """Every experiment's smoke sweep, two at a time (each process one torch thread: the jobs are mostly
    start-up and Python), so the CI suite stays within its budget; each test below checks one of them."""
    from concurrent.futures import ThreadPoolExecutor

    env = {
        "HBT_DATA_DIR": str(smoke_root / "data"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    plans = {experiment: sweep_of(experiment) for experiment in EXPERIMENTS}

    def launch(experiment):
        jobs, on_mmarco = plans[experiment]
        sweep = smoke_root / "runs" / experiment
        proc = run_cli(
            str(ROOT / "train.py"),
            "-m",
            f"experiment={experiment}",
            "debug=smoke",
            f"hydra.sweep.dir={sweep}",
            *([f"data.train.directory={smoke_root / 'mmarco'}"] if on_mmarco else []),
            cwd=smoke_root,
            env=env,
        )
        report = (
            run_cli("-m", "hbt.report", str(sweep), "--out", str(smoke_root / f"report-{experiment}")) if proc.returncode == 0 else None
        )
        # What each job left (results, exported model, per-query values); then the bulky parts go, to keep
        # the temporary disk small (each job's checkpoint and model hold a 250k-row embedding matrix).
        outputs = [
            (p, (p.parent / "model").is_dir(), (p.parent / "per_query.parquet").is_file()) for p in sorted(sweep.rglob("results.json"))
        ]
        for bulky in [*sweep.rglob("checkpoints"), *sweep.rglob("model")]:
            shutil.rmtree(bulky, ignore_errors=True)
        return proc, report, jobs, outputs

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(EXPERIMENTS, pool.map(launch, EXPERIMENTS)))


def check_smoke_run(experiment: str, smoke_root, proc, report, jobs, outputs) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(outputs) == jobs, [str(path) for path, _, _ in outputs]
    for (
        path,
        exported,
        per_query,
    ) in outputs:  # each job trained its own model from the hub name's architecture, exported it, wrote per-query values
        assert exported and per_query, path
    assert report.returncode == 0, report.stderr[-2000:]
    header = (smoke_root / f"report-{experiment}.csv").read_text().splitlines()[0].split(",")
    assert any(column.count("/") == 2 for column in header)  # <dataset>/<setting>/<metric> columns
    for column in EXPECTED.get(experiment, []):
        assert column in header, (column, header)


@pytest.mark.slow
def test_every_experiment_runs_end_to_end_in_smoke_mode(smoke_root, smoke_runs):
    """One test over every experiment (its sweeps are one fixture, run two at a time): as one test it runs
    on one pytest-xdist worker, and each experiment's failure is reported by name."""
    failures = {}
    for experiment in EXPERIMENTS:
        try:
            check_smoke_run(experiment, smoke_root, *smoke_runs[experiment])
        except AssertionError as err:
            failures[experiment] = str(err)[:3000]
    assert not failures, failures
