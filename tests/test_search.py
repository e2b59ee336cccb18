"""Exact top-k search in torch (evaluator/searcher=torch): the top-k faiss flat finds, ties by the lower
corpus position across blocks, through the shards and the evaluator as MIRACL runs them; bad settings
are one line."""

import numpy as np
import pytest
import torch
from test_metrics_reference import write_miracl

from hbt.errors import ConfigError
from hbt.eval.search import FaissSearcher, TorchSearcher


def unit_rows(rng, n: int, dim: int = 32) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_torch_search_finds_what_faiss_flat_finds_over_many_blocks_and_query_batches():
    rng = np.random.default_rng(0)
    queries, corpus = unit_rows(rng, 50), unit_rows(rng, 1000)
    want_scores, want_ids = FaissSearcher("flat").search(queries, corpus, 10)
    got_scores, got_ids = TorchSearcher(device="cpu", query_batch=16, doc_block=128).search(queries, corpus, 10)
    assert np.array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)


def test_ties_go_to_the_lower_corpus_position_inside_and_across_blocks():
    # Small integer coordinates: every dot product is exact, so duplicated documents tie exactly.
    rng = np.random.default_rng(1)
    distinct = rng.integers(-2, 3, size=(30, 8)).astype(np.float32)
    corpus = np.concatenate([distinct, distinct, distinct])  # document i at positions i, i + 30, i + 60
    queries = rng.integers(-2, 3, size=(20, 8)).astype(np.float32)
    exact = queries.astype(np.float64) @ corpus.T.astype(np.float64)
    positions = np.arange(len(corpus))
    want = np.stack([np.lexsort((positions, -row))[:7] for row in exact])  # score descending, then position
    for block in (25, 64, 1000):  # copies in other blocks, in the same block, one block
        _, got = TorchSearcher(device="cpu", doc_block=block, query_batch=7).search(queries, corpus, 7)
        assert np.array_equal(got, want), block


def test_a_corpus_smaller_than_k_gives_every_document_once():
    rng = np.random.default_rng(2)
    scores, ids = TorchSearcher(device="cpu").search(unit_rows(rng, 4), unit_rows(rng, 3), 10)
    assert ids.shape == (4, 3) and all(sorted(row) == [0, 1, 2] for row in ids.tolist())
    assert (np.diff(scores, axis=1) <= 0).all()


def test_low_precision_matmuls_search_the_fp16_shards_as_stored():
    rng = np.random.default_rng(3)
    queries, corpus = unit_rows(rng, 40), unit_rows(rng, 500)
    _, exact = TorchSearcher(device="cpu").search(queries, corpus, 5)
    searcher = TorchSearcher(device="cpu", precision="bfloat16")
    assert searcher.shard_dtype == np.float16 and searcher.dtype == torch.bfloat16
    _, low = searcher.search(queries, corpus.astype(np.float16), 5)
    assert (low[:, 0] == exact[:, 0]).mean() >= 0.9  # rounded scores: near-ties may swap, the best rarely


def test_miracl_with_the_torch_searcher_equals_faiss_flat(tmp_path):
    from hbt.eval.retrieval import Evaluator
    from hbt.eval.trec import load_trec
    from hbt.models.encoder import Encoder

    bench = load_trec("miracl", ["sw"], **write_miracl(tmp_path))
    torch.manual_seed(0)
    encoder = Encoder(tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64})
    results = {}
    for name, searcher in (("faiss", FaissSearcher("flat")), ("torch", TorchSearcher(device="cpu", doc_block=16))):
        evaluator = Evaluator(searcher=searcher, precision="fp32", shard_size=25)  # 60 documents: 3 shards, 4 blocks each
        results[name] = (evaluator.evaluate(encoder, bench)["mono"].macro, evaluator)
    assert results["torch"][0] == results["faiss"][0]


@pytest.mark.parametrize(
    "options, key",
    [
        ({"index": "ivf"}, "evaluator.searcher.index: the torch searcher is exact"),
        ({"precision": "half"}, "evaluator.searcher.precision: expected one of float32, float16, bfloat16"),
        ({"doc_block": 0}, "evaluator.searcher.doc_block: must be an integer >= 1"),
        ({"device": "tpu:0"}, "evaluator.searcher.device: not a torch device"),
    ],
)
def test_bad_torch_searcher_settings_name_the_key(options, key):
    with pytest.raises(ConfigError, match=f"^config error: {key}"):
        TorchSearcher(**options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_asking_for_a_gpu_without_one_is_one_line():
    with pytest.raises(ConfigError, match="^config error: evaluator.searcher.device: cuda, but torch sees no GPU"):
        TorchSearcher(device="cuda")


def test_the_searcher_group_selects_either_searcher(make_cfg):
    from hydra.utils import instantiate

    assert isinstance(instantiate(make_cfg("evaluate", []).evaluator.searcher), FaissSearcher)
    searcher = instantiate(make_cfg("evaluate", ["evaluator/searcher=torch"]).evaluator.searcher)
    assert isinstance(searcher, TorchSearcher) and searcher.index_type == "flat"
    # An experiment written for faiss's flat index composes with the torch searcher.
    cfg = make_cfg("train", ["experiment=mt5_scaling_miracl", "evaluator/searcher=torch"])
    assert isinstance(instantiate(cfg.evaluator.searcher), TorchSearcher)
