"""The DataModule: cached tokens give the same batches as tokenizing on the fly; hard negatives line up."""

from functools import partial

import numpy as np
import pytest
import torch

from hbt.data.datamodule import ParallelDataModule
from hbt.data.schema import ParallelItem
from hbt.data.toy import toy_items
from hbt.models.encoder import Encoder
from hbt.sampling import HybridBatchSampler

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}


def batches(items, cache_tokens: bool, num_hard_negatives: int = 0):
    dm = ParallelDataModule(
        train=lambda: items,
        sampler=partial(HybridBatchSampler, ratio=0.5, seed=3),
        batch_size=8,
        num_hard_negatives=num_hard_negatives,
        cache_tokens=cache_tokens,
    )
    dm.attach_tokenizer(Encoder(tiny=TINY).text_tokenizer)
    return list(dm.train_dataloader())


def test_token_cache_gives_identical_batches():
    items = toy_items("validation", ["en", "ru", "zh"])
    cached, fresh = batches(items, True), batches(items, False)
    assert len(cached) == len(fresh) == len(items) // 8
    for a, b in zip(cached, fresh):
        assert a["pairs"] == b["pairs"]
        for key in ("query", "passage"):
            assert torch.equal(a[key]["input_ids"], b[key]["input_ids"])
            assert torch.equal(a[key]["attention_mask"], b[key]["attention_mask"])


def test_hard_negatives_follow_the_passage_language():
    items = [
        ParallelItem(
            str(i), {"en": f"q{i}", "de": f"f{i}"}, {"en": f"p{i}", "de": f"a{i}"}, {"en": (f"neg-en-{i}",), "de": (f"neg-de-{i}",)}
        )
        for i in range(32)
    ]
    for cache in (True, False):
        for batch in batches(items, cache, num_hard_negatives=1):
            assert batch["negatives"]["input_ids"].shape[0] == 8
            tok = Encoder(tiny=TINY).tokenizer
            texts = tok.batch_decode(batch["negatives"]["input_ids"], skip_special_tokens=True)
            langs = [pair.split("-")[1] for pair in batch["pairs"]]
            assert all(text.startswith(f"neg-{lang}-") for text, lang in zip(texts, langs))


@pytest.mark.slow
def test_every_epoch_gets_its_own_batches_through_lightning(tmp_path):
    """Lightning sets the epoch on ``batch_sampler.sampler``: epochs must differ and be full length."""
    import lightning as L

    from hbt.loss import InfoNCELoss
    from hbt.module import RetrieverModule

    class Record(L.Callback):
        def __init__(self):
            self.pairs = {}

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.pairs.setdefault(trainer.current_epoch, []).append(tuple(batch["pairs"]))

    items = toy_items("train", ["en", "ru", "zh"])
    dm = ParallelDataModule(train=lambda: items, sampler=partial(HybridBatchSampler, ratio=0.5, seed=3), batch_size=64)
    encoder = Encoder(tiny=TINY)
    dm.attach_tokenizer(encoder.text_tokenizer)
    record = Record()
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        callbacks=[record],
        default_root_dir=tmp_path,
        enable_model_summary=False,
    )
    trainer.fit(RetrieverModule(encoder, InfoNCELoss(), optimizer=torch.optim.AdamW), datamodule=dm)
    assert [len(record.pairs[e]) for e in range(3)] == [len(items) // 64] * 3
    assert record.pairs[0] != record.pairs[1] != record.pairs[2]


def write_items(path, n: int, languages=("en", "de", "fr")) -> None:
    import json
    import random

    rng = random.Random(0)
    words = "river stone light market winter garden letter island museum engine".split()
    with path.open("w") as f:
        for i in range(n):
            text = lambda lang, kind: f"{kind} {lang} {i} " + " ".join(rng.choices(words, k=rng.randint(2, 20)))
            f.write(
                json.dumps(
                    {"id": str(i), "questions": {l: text(l, "q") for l in languages}, "passages": {l: text(l, "p") for l in languages}}
                )
                + "\n"
            )


@pytest.mark.slow
def test_ddp_builds_the_token_cache_once_and_ranks_train_on_slices_of_the_global_batch(tmp_path, family_dirs):
    """Under trainer=ddp_cpu one process builds the item table and the token cache (the other rank
    memory-maps them), and each rank's batches are its slice of what one process with the whole global
    batch trains on. A real architecture with mE5's 250k-piece tokenizer: the cache key must hash that
    tokenizer identically in both processes."""
    from conftest import FAST, ROOT, run_cli

    data = tmp_path / "items.jsonl"
    write_items(data, 600)
    common = [
        *FAST,
        "data=jsonl",
        f"data.train.path={data}",
        "trainer.max_steps=5",
        "callbacks.retrieval_eval.at_epoch_end=false",
        "model=xlmr_base",
        f"model.name_or_path={family_dirs['xlmr']}",
        "eval.toy.languages=[en,de]",
        "+callbacks.record._target_=batch_recorder.RecordBatches",
    ]
    runs = {}
    for name, overrides in (("ddp", ["trainer=ddp_cpu", "data.batch_size=8"]), ("single", ["trainer=cpu", "data.batch_size=16"])):
        env = {"HF_DATASETS_CACHE": str(tmp_path / f"cache-{name}"), "PYTHONPATH": str(ROOT / "tests")}
        proc = run_cli(
            "train.py", *common, *overrides, f"+callbacks.record.out={tmp_path / name}", f"hydra.run.dir={tmp_path / name}", env=env
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = proc.stdout + proc.stderr
    assert runs["ddp"].count("token cache: building") == 1, runs["ddp"][-3000:]
    assert runs["ddp"].count("token cache: reusing") == 1  # the other rank
    assert runs["ddp"].count("Generating train split: 0 examples") == 1  # the item table, once
    single = torch.load(tmp_path / "single" / "rank0.pt")
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 5
    for step, whole in enumerate(single):
        for r, batches in enumerate(ranks):
            for key in ("query", "passage", "pairs"):
                assert batches[step][key] == whole[key][r * 8 : (r + 1) * 8], (step, r, key)


def test_token_cache_built_by_several_processes_equals_one_process(tmp_path, monkeypatch):
    from hbt.data.loaders import load_jsonl

    write_items(tmp_path / "items.jsonl", 300)
    tok = Encoder(tiny=TINY).text_tokenizer
    built = {}
    for workers in (1, 2):  # each in its own cache, so both are built
        monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / f"cache{workers}"))
        built[workers] = load_jsonl(str(tmp_path / "items.jsonl")).tokenized(tok, workers=workers).table
    assert len(built[1].cache_files) == 1 and len(built[2].cache_files) == 2  # one file per process
    assert built[1][:] == built[2][:]


def test_in_memory_items_are_saved_once_and_memory_mapped(tmp_path, monkeypatch):
    from hbt.data.schema import languages_of
    from hbt.data.store import ItemStore

    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))
    items = toy_items("validation", ["en", "ru"])
    store = ItemStore.from_items(items, languages_of(items))
    assert not store.on_disk
    saved = store.persisted()
    assert saved.on_disk and saved.table[:] == store.table[:]
    assert ItemStore.from_items(items, languages_of(items)).persisted().table.cache_files == saved.table.cache_files
    assert len(list((tmp_path / "cache" / "hbt").iterdir())) == 1
    other = toy_items("validation", ["en", "de"])
    assert ItemStore.from_items(other, languages_of(other)).persisted().table[:]["p.de"][:3] == [i.passages["de"] for i in other[:3]]
    assert len(list((tmp_path / "cache" / "hbt").iterdir())) == 2  # other content, other file


def test_cells_equal_whole_row_reads_across_chunks_views_nulls_and_negatives(tmp_path, monkeypatch):
    """The batch path reads single cells from the Arrow chunks' buffers; the definition is the whole rows
    as Python values (``ItemStore.rows``). Checked on tables of several chunks, on selected and shuffled
    views of them (datasets' indices mapping), with missing languages and uneven hard negatives, for the
    texts and for the token cache, and after pickling (what a DataLoader worker gets)."""
    import pickle
    import random

    import datasets

    from hbt.data.store import ItemStore

    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))
    langs = ["de", "en", "ru"]
    rng = random.Random(0)

    def item(i: int) -> ParallelItem:
        present = [lang for lang in langs if lang == "en" or rng.random() < 0.7]
        negatives = {lang: tuple(f"neg {lang} {i} {k}" for k in range(rng.randrange(3))) for lang in present}
        return ParallelItem(
            str(i), {lang: f"q {lang} {i}" * (1 + i % 4) for lang in present}, {lang: f"p {lang} {i}" for lang in present}, negatives
        )

    parts = [ItemStore.from_items([item(i) for i in range(start, start + 40)], langs).table for start in (0, 40, 80)]
    texts = ItemStore(datasets.concatenate_datasets(parts), langs)
    tokenizer = Encoder(tiny=TINY).text_tokenizer
    tokens = ItemStore(datasets.concatenate_datasets([ItemStore(part, langs).tokenized(tokenizer).table for part in parts]), langs)
    for store in (texts, tokens):
        assert store.table.data.table.column("q.en").num_chunks > 1, "the test needs rows in several chunks"
        views = [store, ItemStore(store.table.select(range(119, -1, -2)), langs), ItemStore(store.table.shuffle(seed=1), langs)]
        views.append(pickle.loads(pickle.dumps(views[-1])))
        for view in views:
            rows = rng.sample(range(len(view)), 30) + [0, len(view) - 1, 0]
            picks = [rng.choice(langs) for _ in rows]
            whole = view.rows(rows)
            for kind in ("q", "p", "n"):
                got = view.cells(kind, rows, picks)
                want = [whole[f"{kind}.{lang}"][i] for i, lang in enumerate(picks)]
                # the draw covers missing cells (texts) or rows without negatives, and present ones
                assert any(not w for w in want) and any(w for w in want)
                assert [plain(g) for g in got] == want
        assert views[0]._views and not pickle.loads(pickle.dumps(views[0]))._views  # workers get no copies of views


def plain(value):
    """numpy arrays (token ids) as lists, at any depth, to compare with the rows' Python values."""
    if isinstance(value, (list, np.ndarray)):
        return [plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value
