"""Encoding at the hardware's speed: batches by token budget over token-sorted texts, bf16 where the
hardware has it, embeddings kept in the configured dtype, and the same results as fp32 one-by-one."""

import random

import pytest
import torch
from conftest import shared_data

from hbt.errors import ConfigError
from hbt.eval.lareqa import load_lareqa
from hbt.eval.retrieval import Evaluator
from hbt.models.encoder import Encoder
from hbt.models.tokenizer import token_batches

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(len(rows) * max(lengths[i] for i in rows) for rows in batches)
    return 1 - sum(lengths) / padded


def xquad_sentences(per_language: int = 40) -> tuple[list[str], list[str]]:
    bench = load_lareqa("xquad_r", shared_data("xquad-r"))
    texts, langs = [], []
    for lang, candidates in sorted(bench.candidates.items()):
        texts += candidates[:per_language]
        langs += [lang] * len(candidates[:per_language])
    return texts, langs


def test_token_batches_keep_to_the_budget_and_cover_every_text_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 120) for _ in range(1000)] + [3000]  # one text over the budget goes alone
    batches = token_batches(lengths, max_rows=64, max_tokens=2048)
    assert sorted(i for rows in batches for i in rows) == list(range(len(lengths)))
    widths = [max(lengths[i] for i in rows) for rows in batches]
    assert widths == sorted(widths, reverse=True)  # longest first
    for rows, width in zip(batches, widths):
        assert len(rows) <= 64 and (len(rows) * width <= 2048 or len(rows) == 1)
    assert batches[0] == [len(lengths) - 1]
    assert max(len(rows) for rows in batches) == 64  # short texts fill the row cap
    assert [len(rows) for rows in token_batches(lengths, max_rows=100)][:-1] == [100] * 10  # no budget: fixed rows
    with pytest.raises(ValueError):
        token_batches(lengths, max_rows=0)


def test_sorting_by_tokens_pads_less_than_sorting_by_characters(me5_dir):
    """Across scripts characters say little about tokens (a Chinese sentence: few characters, many
    tokens); the control, sorted by characters, pads more on the same texts."""
    encoder = Encoder(name_or_path=str(me5_dir), max_passage_length=512)
    texts, _ = xquad_sentences()
    tokens = [len(ids) for ids in encoder.tokenize_compact(texts, "passage")]
    by_tokens = padding_fraction(token_batches(tokens, 32), tokens)
    by_chars = padding_fraction(token_batches([len(t) for t in texts], 32), tokens)
    unsorted = padding_fraction([list(range(i, min(i + 32, len(texts)))) for i in range(0, len(texts), 32)], tokens)
    assert by_tokens < 0.5 * by_chars < unsorted


def test_embeddings_do_not_depend_on_batching_and_come_back_in_input_order():
    torch.manual_seed(0)
    encoder = Encoder(tiny=TINY, max_passage_length=96)
    texts = ["kurz", "ein etwas längerer Satz mit mehr Wörtern darin", "中文句子", "x" * 200, "", "mittel lang hier"]
    one_by_one = torch.cat([encoder.encode([t], "passage", batch_size=1) for t in texts])
    for batch_size, max_tokens in ((256, None), (256, 100), (2, 16384)):
        together = encoder.encode(texts, "passage", batch_size=batch_size, max_tokens=max_tokens)
        torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)
    half = encoder.encode(texts, "passage", dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), one_by_one, atol=2e-3)
    assert encoder.encode([], "passage").shape == (0, 0)


@pytest.mark.slow
def test_bf16_embeddings_equal_fp32_on_real_multilingual_text(me5_dir):
    encoder = Encoder(name_or_path=str(me5_dir), query_prefix="query: ", passage_prefix="passage: ")
    texts, _ = xquad_sentences(per_language=10)
    full = encoder.encode(texts, "passage", precision="fp32")
    for precision in ("bf16", "bf16-mixed"):
        low = encoder.encode(texts, "passage", precision=precision)
        cosine = (full * low).sum(1)  # both unit length
        assert float(cosine.min()) >= 0.9999, precision
        assert not torch.equal(full, low), precision  # bf16 did run: not fp32 bit for bit


def test_bf16_runs_the_backbone_on_bf16_copies_and_leaves_its_weights_alone():
    """bf16 casts the backbone's weights for the call, so its layers see bf16 inputs (under autocast,
    bf16-mixed, they see fp32 and cast inside); the module's own weights, dtype and mode are untouched."""
    torch.manual_seed(0)
    encoder = Encoder(tiny=TINY)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    seen: list[torch.dtype] = []
    dense = next(m for m in encoder.backbone.modules() if isinstance(m, torch.nn.Linear))
    dense.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    texts = ["ein Satz", "une phrase un peu plus longue", "一句话"]
    full = encoder.encode(texts, "passage", precision="fp32")
    low = encoder.encode(texts, "passage", precision="bf16")
    mixed = encoder.encode(texts, "passage", precision="bf16-mixed")
    assert seen == [torch.float32, torch.bfloat16, torch.float32]
    assert low.dtype == mixed.dtype == torch.float32 and not torch.equal(low, full)
    assert float((low * full).sum(1).min()) > 0.999
    assert encoder.training and not encoder.is_sharded()
    after = encoder.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_a_sharded_encoder_encodes_bf16_as_bf16_mixed_and_says_so(monkeypatch):
    """Under FSDP the weights are whole only inside the wrapped forward, so bf16 runs as bf16-mixed, and
    the evaluator's options (what it logs, what keys its embedding cache) name the precision that runs."""
    encoder = Encoder(tiny=TINY)
    assert Evaluator(precision="bf16").encode_options(encoder)["precision"] == "bf16"
    monkeypatch.setattr(encoder, "is_sharded", lambda: True)
    assert encoder.runs_as("bf16") == "bf16-mixed" and encoder.runs_as("fp32") == "fp32"
    assert Evaluator(precision="bf16").encode_options(encoder)["precision"] == "bf16-mixed"
    seen: list[torch.dtype] = []
    dense = next(m for m in encoder.backbone.modules() if isinstance(m, torch.nn.Linear))
    dense.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    encoder.encode(["ein Satz"], "passage", precision="bf16")
    assert seen == [torch.float32]  # autocast: fp32 in, cast inside


def test_evaluator_options_are_checked_before_any_model_loads():
    for kwargs, key in (
        ({"precision": "half"}, "evaluator.precision"),
        ({"embedding_dtype": "bfloat16"}, "evaluator.embedding_dtype"),
        ({"max_tokens": 0}, "evaluator.max_tokens"),
        ({"max_tokens": "many"}, "evaluator.max_tokens"),
        ({"batch_size": 0}, "evaluator.batch_size"),
    ):
        with pytest.raises(ConfigError, match=f"^config error: {key}: "):
            Evaluator(**kwargs)


def test_token_budget_auto_follows_the_device():
    from hbt.models.precision import AUTO_MAX_TOKENS, token_budget

    assert token_budget("auto", "cpu") == AUTO_MAX_TOKENS["cpu"] < token_budget("auto", "cuda") == AUTO_MAX_TOKENS["cuda"]
    assert token_budget(512, "cuda") == 512 and token_budget(None, "cpu") is None
    assert Evaluator().encode_options(Encoder(tiny=TINY))["max_tokens"] == AUTO_MAX_TOKENS["cpu"]


def test_float16_embeddings_score_like_float32_and_are_cached_as_float16(tmp_path):
    from hbt.eval.toy import toy_benchmark

    torch.manual_seed(0)
    encoder = Encoder(tiny=TINY)
    bench = toy_benchmark("test", ["en", "de", "fr"])
    full = Evaluator(precision="fp32").evaluate(encoder, bench)
    half = Evaluator(precision="fp32", embedding_dtype="float16", cache_dir=str(tmp_path)).evaluate(encoder, bench, "fp")
    for setting in full:
        for metric, value in full[setting].macro.items():
            assert half[setting].macro[metric] == pytest.approx(value, abs=0.02, rel=0.01), (setting, metric)
    cached = [torch.load(path) for path in tmp_path.glob("*.pt")]
    assert cached and all(t.dtype == torch.float16 for t in cached)


def test_length_groups_give_the_same_embeddings_and_gradients_from_narrower_batches():
    from conftest import check_length_groups_match_the_padded_batch, without_dropout

    torch.manual_seed(0)
    encoder = Encoder(tiny=TINY, max_passage_length=96)
    without_dropout(encoder)
    texts = ["kurz", "ein etwas längerer Satz mit mehr Wörtern darin, noch länger", "中文", "mittel lang hier", "x" * 80, "a b"]
    inputs = encoder.text_tokenizer(texts, "passage")
    widths = []
    encoder.backbone.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    check_length_groups_match_the_padded_batch(encoder, inputs, groups=3)
    full = inputs["input_ids"].shape[1]
    assert widths[0] == full and len(widths) == 4 and widths[1] == full and max(widths[2:]) < full  # the short groups are cut


def test_length_cuts_leave_the_fewest_padded_tokens_of_any_cut():
    """Against every way of cutting sorted rows into at most G consecutive groups (brute force), on random
    lengths; equal-sized groups (the cut before) pad more."""
    import itertools

    import numpy as np

    from hbt.models.encoder import length_cuts

    def padded(widths, sizes):
        starts = np.cumsum([0, *sizes[:-1]])
        return sum(size * widths[start] for start, size in zip(starts, sizes))

    rng = np.random.default_rng(0)
    worse = 0
    for _ in range(200):
        n, groups = int(rng.integers(1, 11)), int(rng.integers(1, 5))
        widths = sorted(rng.integers(1, 60, n).tolist(), reverse=True)
        sizes = length_cuts(widths, groups)
        assert sum(sizes) == n and all(size > 0 for size in sizes) and len(sizes) <= groups
        best = min(
            padded(widths, [b - a for a, b in zip((0, *cuts), (*cuts, n))])
            for k in range(min(groups, n))
            for cuts in itertools.combinations(range(1, n), k)
        )
        assert padded(widths, sizes) == best
        # no cut that saves nothing: each group's first row is longer than the previous group's last
        starts = np.cumsum([0, *sizes[:-1]])
        assert all(widths[start] < widths[start - 1] for start in starts[1:])
        equal = [len(part) for part in np.array_split(np.arange(n), min(groups, n))]
        worse += padded(widths, equal) > best
    assert worse > 50


def test_grad_cache_chunks_are_cut_to_their_own_longest_row():
    from hbt.grad_cache import split_inputs

    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 0], [1, 2, 0, 0], [1, 0, 0, 0]])
    chunks = split_inputs({"input_ids": ids, "attention_mask": (ids > 0).long()}, 2)
    assert [c["input_ids"].shape[1] for c in chunks] == [4, 2]
    assert torch.equal(chunks[1]["input_ids"], torch.tensor([[1, 2], [1, 0]]))


def test_grad_cache_chunks_rows_by_length_so_a_chunk_is_padded_only_to_its_own_longest():
    """Rows of mixed lengths: chunks by position would each hold a long row; sorted by length, the
    short rows share chunks of their own width (ties keep the batch's order)."""
    from hbt.grad_cache import GradCache, split_inputs

    lengths = torch.tensor([9, 2, 8, 3, 9, 2, 7, 1])
    mask = (torch.arange(9)[None, :] < lengths[:, None]).long()
    inputs = {"input_ids": mask * torch.arange(1, 9)[:, None], "attention_mask": mask}
    order, chunks = GradCache(2).chunks(inputs)
    assert order.tolist() == [0, 4, 2, 6, 3, 1, 5, 7]
    assert [c["input_ids"].shape[1] for c in chunks] == [9, 8, 3, 2]
    assert torch.equal(torch.cat([c["attention_mask"].sum(1) for c in chunks]), lengths[order])
    padded = sum(c["input_ids"].numel() for c in chunks)
    by_position = sum(c["input_ids"].numel() for c in split_inputs(inputs, 2))
    assert padded == 44 and by_position == 66  # 41 real tokens
