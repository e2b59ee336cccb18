"""The DataModule: cached tokens give the same batches as tokenizing on the fly; hard negatives line up."""
from functools import partial

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
        ParallelItem(str(i), {"en": f"q{i}", "de": f"f{i}"}, {"en": f"p{i}", "de": f"a{i}"}, {"en": (f"neg-en-{i}",), "de": (f"neg-de-{i}",)})
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
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, use_distributed_sampler=False,
                        limit_val_batches=0, callbacks=[record], default_root_dir=tmp_path, enable_model_summary=False)
    trainer.fit(RetrieverModule(encoder, InfoNCELoss(), optimizer=torch.optim.AdamW), datamodule=dm)
    assert [len(record.pairs[e]) for e in range(3)] == [len(items) // 64] * 3
    assert record.pairs[0] != record.pairs[1] != record.pairs[2]
