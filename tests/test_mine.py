"""Hard-negative mining: the filters hold on the built-in data and on XQuAD-R, runs resume, the output trains."""

import json

import pytest
import torch
from conftest import FAST, run_cli

from hbt.data.schema import languages_of
from hbt.data.store import ItemStore
from hbt.data.toy import toy_items
from hbt.errors import ConfigError, OutputError
from hbt.mine import Miner, normalize
from hbt.models.encoder import Encoder

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def toy():
    items = toy_items("train", ["en", "de", "ru"])
    torch.manual_seed(0)
    return ItemStore.from_items(items, languages_of(items)), Encoder(tiny=TINY)


def mined(store, encoder, tmp_path, lang="de", **options):
    # fp32: the margin test below recomputes scores with encoder.encode in fp32
    miner = Miner(progress=False, **{"depth": 10, "num_negatives": 3, "margin": None, "precision": "fp32", **options})
    return miner.mine_language(encoder, store, lang, tmp_path / f"work-{len(list(tmp_path.iterdir()))}")


@pytest.mark.parametrize("pool", ["same", "all"])
def test_negatives_are_never_the_item_its_translations_or_equal_text(toy, tmp_path, pool):
    store, encoder = toy
    negatives, counts = mined(store, encoder, tmp_path, pool=pool)
    german = {normalize(t) for t in store.table["p.de"] if t}
    assert counts["queries"] == len(negatives) == sum(1 for t in store.table["q.de"] if t)
    for item, texts in negatives.items():
        own = {normalize(t) for t in store.item(item).passages.values()}
        assert texts and len(texts) == len(set(texts)) <= 3
        assert not own & {normalize(t) for t in texts}, item
        if pool == "same":
            assert {normalize(t) for t in texts} <= german  # X-X use: negatives in the passage language
    assert counts["own"] > 0  # the own passage is the nearest candidate often enough to be counted
    assert counts["window"] == counts["skip_top"] + counts["margin"] + counts["kept"] + counts["unused"]


def test_skip_top_shifts_the_window_and_margin_bounds_every_score(toy, tmp_path):
    store, encoder = toy
    plain, _ = mined(store, encoder, tmp_path)
    skipped, counts = mined(store, encoder, tmp_path, skip_top=2)
    assert counts["skip_top"] == 2 * counts["queries"]
    assert all(skipped[i][0] == plain[i][2] for i in plain if len(plain[i]) == 3 and skipped[i])
    margin, counts = mined(store, encoder, tmp_path, margin=0.9)
    assert counts["margin"] > 0
    for item, texts in list(margin.items())[:40]:
        row = store.item(item)
        q = encoder.encode([row.questions["de"]], "query", "de")[0]
        p = encoder.encode([row.passages["de"], *texts], "passage", "de")
        positive, scores = float(q @ p[0]), (p[1:] @ q).tolist()
        assert all(s <= 0.9 * positive + 2e-3 for s in scores), (item, positive, scores)  # fp16 shards


def test_bad_settings_are_one_line(toy, tmp_path):
    with pytest.raises(ConfigError, match="mine.pool"):
        Miner(pool="other")
    with pytest.raises(ConfigError, match="mine.margin"):
        Miner(margin=0)
    with pytest.raises(ConfigError, match="mine.depth"):
        Miner(depth=0)


@pytest.mark.slow
def test_an_interrupted_run_resumes_and_an_existing_output_is_kept(make_cfg, tmp_path, monkeypatch, family_dirs):
    from hbt.mine import mine

    out = tmp_path / "mined.jsonl"
    overrides = [
        "model=xlmr_base",
        f"model.name_or_path={family_dirs['xlmr']}",
        "data.train.languages=[en,de,ru]",
        f"output={out}",
        "mine.progress=false",
        "mine.depth=8",
        "mine.num_negatives=2",
        "mine.margin=null",
    ]  # random-init: every cosine is near 1
    calls = []
    original = Miner.mine_language

    def failing(self, encoder, store, lang, work, keys=None):
        calls.append(lang)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, encoder, store, lang, work, keys)

    monkeypatch.setattr(Miner, "mine_language", failing)
    with pytest.raises(KeyboardInterrupt):
        mine(make_cfg("mine", overrides))
    assert not out.exists() and calls == ["de", "en"]
    summary = mine(make_cfg("mine", overrides))
    assert calls == ["de", "en", "en", "ru"]  # de was not mined again
    assert set(summary) == {"de", "en", "ru"} and all(s["kept"] > 0 for s in summary.values())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(toy_items("train", ["en", "de", "ru"])) and all(set(r["hard_negatives"]) <= {"en", "de", "ru"} for r in rows)
    assert not (tmp_path / "mined.jsonl.work").exists()
    with pytest.raises(OutputError, match="already exists"):
        mine(make_cfg("mine", overrides))


@pytest.mark.slow
def test_mining_xquad_r_training_half_with_me5_then_training_on_it(tmp_path, me5_dir):
    """The CLI on real data: XQuAD-R's training half (answer sentences shared by several questions: the
    pool holds each once and never hands an item its own sentence), then 3 training steps using 2 mined
    negatives per pair."""
    from conftest import shared_data

    shared_data("xquad-r")
    out = tmp_path / "mined.jsonl"
    proc = run_cli(
        "-m",
        "hbt.mine",
        "data=xquad_r_train",
        "data.train.languages=[en,zh]",
        "model=me5_small",
        f"model.name_or_path={me5_dir}",
        f"output={out}",
        "mine.progress=false",
        "mine.num_negatives=4",
        f"hydra.run.dir={tmp_path / 'mine'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "mined.jsonl.summary.json").read_text())
    assert set(summary) == {"en", "zh"} and "language" in proc.stdout and "margin" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        for negatives in row["hard_negatives"].values():
            own = {normalize(t) for t in row["passages"].values()}
            assert not own & {normalize(t) for t in negatives}
    assert sum(len(r["hard_negatives"].get("en", [])) >= 2 for r in rows) > 0.9 * len(rows)
    # Items without 2 negatives in a language cannot train with 2: keep those that have them.
    usable = [r for r in rows if all(len(r["hard_negatives"].get(l, [])) >= 2 for l in r["passages"])]
    (tmp_path / "usable.jsonl").write_text("".join(json.dumps(r) + "\n" for r in usable))
    train = run_cli(
        "train.py",
        *FAST,
        "data=jsonl",
        f"data.train.path={tmp_path / 'usable.jsonl'}",
        "data.num_hard_negatives=2",
        "trainer.max_steps=3",
        "data.batch_size=8",
        "trainer.log_every_n_steps=1",
        "callbacks.retrieval_eval.at_epoch_end=false",
        f"hydra.run.dir={tmp_path / 'train'}",
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "train/masked" in (tmp_path / "train" / "csv" / "metrics.csv").read_text()


def test_mining_shows_progress_per_query_block_in_logs(toy, tmp_path, monkeypatch, caplog):
    """Where output is no terminal: a status line (queries done, rate, ETA) per block once 30 s have
    passed; here every block, with the interval set to 0."""
    import logging

    import hbt.progress

    monkeypatch.setattr(hbt.progress, "INTERVAL", 0.0)
    store, encoder = toy
    miner = Miner(progress="auto", depth=10, num_negatives=3, margin=None, precision="fp32", query_block=64)
    with caplog.at_level(logging.INFO, logger="hbt.progress"):
        _, counts = miner.mine_language(encoder, store, "de", tmp_path / "work")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mine de: ")]
    blocks = -(-counts["queries"] // 64)
    assert len(lines) == blocks > 1
    assert lines[-1].startswith(f"mine de: {counts['queries']}/{counts['queries']} queries (100%)") and "ETA" in lines[-1]
