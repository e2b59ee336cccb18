"""The loss is the same optimisation on 1 process, on 2 gloo ranks, and with GradCache (tolerance 1e-5)."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hbt.data.datamodule import PairCollator
from hbt.data.toy import toy_items
from hbt.grad_cache import GradCache
from hbt.loss import InfoNCELoss
from hbt.models.encoder import Encoder
from hbt.module import RetrieverModule

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
BATCH = 8


def make_module(chunk_size=None, symmetric=False, seed=0) -> RetrieverModule:
    torch.manual_seed(seed)
    encoder = Encoder(tiny=TINY)
    encoder.backbone.config.hidden_dropout_prob = 0.0
    for module in encoder.modules():  # dropout off: chunked and whole-batch passes must match exactly
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    grad_cache = GradCache(chunk_size) if chunk_size else None
    return RetrieverModule(encoder, InfoNCELoss(0.05, symmetric=symmetric), optimizer=torch.optim.AdamW, grad_cache=grad_cache)


def pair_examples(passage_lang: str, negative_lang: str) -> list[dict]:
    """BATCH pairs: English queries, passages in passage_lang, one hard negative in negative_lang each."""
    items = toy_items("validation", sorted({"en", passage_lang, negative_lang}))[:BATCH]
    return [
        {
            "query": it.questions["en"],
            "passage": it.passages[passage_lang],
            "query_lang": "en",
            "passage_lang": passage_lang,
            "negatives": [items[(i + 3) % BATCH].passages[negative_lang]],
        }
        for i, it in enumerate(items)
    ]


def make_batch(with_negatives=False):
    examples = pair_examples("zh", "ru")
    if not with_negatives:
        for e in examples:
            del e["negatives"]
    return PairCollator(make_module().encoder.text_tokenizer)(examples)


def slice_batch(batch, start, stop):
    out = {k: {n: t[start:stop] for n, t in v.items()} for k, v in batch.items() if isinstance(v, dict)}
    out["monolingual"], out["pairs"] = batch["monolingual"][start:stop], batch["pairs"][start:stop]
    return out


def loss_and_grads(module, batch):
    module.encoder.zero_grad()
    if module.grad_cache is not None:
        loss, _, _ = module.batch_loss(batch)
        loss.backward()
    else:
        negatives = module.encoder(batch["negatives"]) if "negatives" in batch else None
        loss, _ = module.contrastive_loss(module.encoder(batch["query"]), module.encoder(batch["passage"]), negatives)
        loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in module.encoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("negatives", [False, True])
def test_grad_cache_matches_the_whole_batch(symmetric, negatives):
    batch = make_batch(negatives)
    ref_loss, ref_grads = loss_and_grads(make_module(symmetric=symmetric), batch)
    loss, grads = loss_and_grads(make_module(chunk_size=3, symmetric=symmetric), batch)
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4)


class _TrainingStep(torch.nn.Module):
    """The training step as a module's forward, for DDP to wrap (as Lightning wraps the LightningModule)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, batch):
        return self.module.training_step(batch, 0)


def _worker(rank, world, port, chunk_size, out_dir, ddp=False, length_groups=1):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        module = make_module(chunk_size=chunk_size)
        module.encoder.length_groups = length_groups  # rows encoded in groups cut by length (model.length_groups)
        batch = make_batch(with_negatives=True)
        per_rank = BATCH // world
        local = slice_batch(batch, rank * per_rank, (rank + 1) * per_rank)
        if ddp:  # DDP's own reducer averages the gradients (GradCache's chunks must hand it each one once)
            wrapped = torch.nn.parallel.DistributedDataParallel(_TrainingStep(module))
            loss_tensor = wrapped(local)
            loss_tensor.backward()
            loss = loss_tensor.item()
        else:
            loss, _ = loss_and_grads(module, local)
            from hbt.distributed import average_gradients

            average_gradients(module.encoder.parameters())  # what DDP does to parameter gradients
        mean_loss = torch.tensor(loss)
        dist.all_reduce(mean_loss)
        grads = {n: p.grad for n, p in module.encoder.named_parameters() if p.grad is not None}
        torch.save({"loss": mean_loss.item() / world, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
        if ddp:
            # Tearing down DDP's reducer and the gloo group at interpreter exit can deadlock (a gloo worker
            # thread waits for the GIL the main thread holds while it joins that thread): both ranks have
            # saved, so they leave without running destructors.
            dist.barrier()
            os._exit(0)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size, ddp, length_groups", [(None, False, 1), (2, False, 1), (2, True, 3)])
def test_two_gloo_ranks_match_one_process_on_the_concatenated_batch(tmp_path, chunk_size, ddp, length_groups):
    """Under DDP's own reducer, GradCache's chunks each cut again into length groups: the padded whole
    batch's loss and gradients (each alone is checked in one process: test_grad_cache_matches_the_whole_batch,
    test_precision.py::test_length_groups_give_the_same_embeddings_and_gradients_from_narrower_batches)."""
    ref_loss, ref_grads = loss_and_grads(make_module(), make_batch(with_negatives=True))
    mp.spawn(_worker, args=(2, free_port(), chunk_size, str(tmp_path), ddp, length_groups), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["loss"] == pytest.approx(ref_loss, abs=1e-5)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(result["grads"][name], grad, atol=1e-5, rtol=1e-4)


def _encode_worker(rank, world, port, out_dir, compile=False):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        from hbt.eval.retrieval import Evaluator
        from hbt.eval.toy import toy_benchmark
        from hbt.models.precision import _COMPILED

        encoder = make_module().encoder
        results = Evaluator(ks=(1, 10), precision="fp32", compile=compile).evaluate(encoder, toy_benchmark("validation", ["en", "zh"]))
        torch.save(results, os.path.join(out_dir, f"eval{rank}.pt"))
        Path(out_dir, f"compiled{rank}").write_text(str(encoder in _COMPILED))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("compile", [False, True])
def test_sharded_evaluation_equals_one_process(tmp_path, compile):
    """In fp32: bf16 rounds differently in other batch compositions (each rank encodes its own shard).
    Compiled (evaluator.compile), each rank encodes its shard with its own compiled copy of the backbone."""
    from hbt.eval.retrieval import Evaluator
    from hbt.eval.toy import toy_benchmark

    expected = Evaluator(ks=(1, 10), precision="fp32").evaluate(make_module().encoder, toy_benchmark("validation", ["en", "zh"]))
    mp.spawn(_encode_worker, args=(2, free_port(), str(tmp_path), compile), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"eval{rank}.pt", weights_only=False)  # typed results (hbt.results)
        assert (tmp_path / f"compiled{rank}").read_text() == str(compile)
        for setting in expected:
            for metric, value in expected[setting].macro.items():
                assert got[setting].macro[metric] == pytest.approx(value, abs=1e-6)


def duplicate_batch(module):
    """8 pairs (English queries, German passages, English hard negatives) where items 0 and 5 share their
    passage text, items 2 and 6 share their query text, and item 7's hard negative is item 1's positive."""
    examples = pair_examples("de", "en")
    examples[5]["passage"] = examples[0]["passage"]
    examples[6]["query"] = examples[2]["query"]
    examples[7]["negatives"] = [examples[1]["passage"]]
    return PairCollator(module.encoder.text_tokenizer)(examples)


def test_duplicate_masks_by_hand():
    from hbt.loss import duplicate_masks

    query_keys = torch.tensor([10, 11, 12, 13, 14, 15, 12, 17])
    positive_keys = torch.tensor([20, 21, 22, 23, 24, 20, 26, 27])
    negative_keys = torch.tensor([30, 31, 32, 26, 34, 20, 36, 21])  # one hard negative per item
    mask, back = duplicate_masks(query_keys, positive_keys, torch.cat([positive_keys, negative_keys]), torch.arange(8))
    expected = torch.zeros(8, 16, dtype=torch.bool)
    expected[0, 5] = expected[5, 0] = True  # the same passage text is no negative for the other
    expected[0, 8 + 5] = expected[5, 8 + 5] = True  # item 5's hard negative is that passage too
    expected[2, 6] = expected[6, 2] = True  # same query: each one's positive is masked for the other
    expected[2, 8 + 3] = True  # item 3's hard negative equals item 6's positive, related to query 2
    expected[6, 8 + 3] = True  # ... and is item 6's own positive text
    expected[1, 8 + 7] = True  # item 7's hard negative equals item 1's positive
    assert torch.equal(mask, expected)
    expected_back = torch.zeros(8, 8, dtype=torch.bool)
    expected_back[0, 5] = expected_back[5, 0] = expected_back[2, 6] = expected_back[6, 2] = True
    assert torch.equal(back, expected_back)


def test_duplicate_masks_match_their_definition_on_random_batches():
    """The vectorized masks against the definition written as plain loops over keys, on random global
    batches (duplicate queries and passages, hard negatives, several ranks, keys near 2^60)."""
    from hbt.loss import duplicate_masks

    generator = torch.Generator().manual_seed(0)

    def draw(high, size):
        return torch.randint(0, high, (size,), generator=generator)

    for _ in range(200):
        world, per_rank, k, texts = (int(draw(hi, 1)) + 1 for hi in (3, 12, 3, 20))
        n, rank = world * per_rank, int(draw(world, 1))
        query_keys, positive_keys = draw(texts, n) * 2**50, draw(texts, n) * 7 + 2**58
        candidate_keys = torch.cat([positive_keys, draw(texts, n * (k - 1)) * 7 + 2**58])
        targets = torch.arange(per_rank) + rank * per_rank
        mask, back = duplicate_masks(query_keys, positive_keys, candidate_keys, targets)
        for b, g in enumerate(targets.tolist()):
            related = [i for i in range(n) if query_keys[i] == query_keys[g]]
            texts_of_related = {int(positive_keys[i]) for i in related}
            expected = [c != g and (c in related or int(candidate_keys[c]) in texts_of_related) for c in range(len(candidate_keys))]
            assert mask[b].tolist() == expected
            expected_back = [i != g and (i in related or positive_keys[i] == positive_keys[g]) for i in range(n)]
            assert back[b].tolist() == expected_back


def test_masking_leaves_duplicates_out_of_the_softmax():
    import torch.nn.functional as F

    module = make_module()
    batch = duplicate_batch(module)
    keys = module.batch_keys(batch)
    q, p, n = (module.encoder(batch[k]) for k in ("query", "passage", "negatives"))
    loss, stats = module.contrastive_loss(q, p, n, keys)
    logits = q @ torch.cat([p, n]).T / 0.05
    masked = torch.zeros_like(logits, dtype=torch.bool)
    masked[0, 5] = masked[5, 0] = masked[2, 6] = masked[6, 2] = masked[1, 15] = True
    expected = F.cross_entropy(logits.masked_fill(masked, float("-inf")), torch.arange(BATCH))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert stats["masked"].item() == 5
    unmasked, _ = module.contrastive_loss(q, p, n, None)  # negative control: the duplicates count as negatives
    assert unmasked.item() == pytest.approx(F.cross_entropy(logits, torch.arange(BATCH)).item(), abs=1e-6)
    assert abs(unmasked.item() - loss.item()) > 1e-3


def _masked_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        module = make_module(symmetric=True)
        batch = duplicate_batch(module)
        per_rank = BATCH // world
        local = slice_batch(batch, rank * per_rank, (rank + 1) * per_rank)
        q, p, n = (module.encoder(local[k]) for k in ("query", "passage", "negatives"))
        loss, stats = module.contrastive_loss(q, p, n, module.batch_keys(local))
        loss.backward()
        from hbt.distributed import average_gradients

        average_gradients(module.encoder.parameters())
        total = torch.tensor([loss.item(), stats["masked"].item()])
        dist.all_reduce(total)
        grads = {name: prm.grad for name, prm in module.encoder.named_parameters() if prm.grad is not None}
        torch.save({"loss": total[0].item() / world, "masked": total[1].item(), "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_masking_under_two_gloo_ranks_matches_one_process(tmp_path):
    """The duplicates sit on different ranks (items 0/5, 2/6, 1/7 cross the 4/4 split): keys are gathered,
    so the masks, loss and gradients equal one process on the whole batch (symmetric loss included)."""
    module = make_module(symmetric=True)
    batch = duplicate_batch(module)
    module.encoder.zero_grad()
    q, p, n = (module.encoder(batch[k]) for k in ("query", "passage", "negatives"))
    ref_loss, ref_stats = module.contrastive_loss(q, p, n, module.batch_keys(batch))
    ref_loss.backward()
    ref_grads = {name: prm.grad.clone() for name, prm in module.encoder.named_parameters() if prm.grad is not None}
    mp.spawn(_masked_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["loss"] == pytest.approx(ref_loss.item(), abs=1e-5)
        assert result["masked"] == ref_stats["masked"].item() == 5
        for name, grad in ref_grads.items():
            torch.testing.assert_close(result["grads"][name], grad, atol=1e-5, rtol=1e-4)


def _trained_weights(chunk_size, batches, accumulate: int, clip: float | None) -> dict[str, torch.Tensor]:
    """The encoder's weights after one optimizer step of Lightning's own loop (SGD, lr 1) over
    ``batches``, accumulated ``accumulate`` at a time and clipped to ``clip``."""
    import lightning as L
    from torch.utils.data import DataLoader

    module = make_module(chunk_size=chunk_size)
    module.optimizer_factory = lambda groups: torch.optim.SGD(groups, lr=1.0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch))
    return {name: p.detach().clone() for name, p in module.encoder.named_parameters()}


@pytest.mark.parametrize("accumulate, clip", [(2, None), (2, 0.05)])
def test_grad_cache_under_lightnings_accumulation_and_clipping_matches_the_whole_batch(accumulate, clip):
    """GradCache is part of the loss: Lightning's step, gradient accumulation (the loss divided by the
    number of batches reaches the cached gradients through the backward hook) and clipping apply to it
    as to the whole batch encoded at once."""
    batch = make_batch(with_negatives=True)
    batches = [slice_batch(batch, 0, BATCH // 2), slice_batch(batch, BATCH // 2, BATCH)]
    want = _trained_weights(None, batches, accumulate, clip)
    got = _trained_weights(2, batches, accumulate, clip)
    start = make_module().encoder.state_dict()
    assert any(not torch.equal(want[name], start[name]) for name in want)  # a step was taken
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)
