"""Our metrics agree with trec_eval (pytrec_eval) on the same rankings, ties and graded relevance included."""

import json

import numpy as np
import pytest
import pytrec_eval
import torch

from hbt.eval.metrics import ndcg_at, pool_ranks, ranking_metrics
from hbt.eval.retrieval import Evaluator
from hbt.eval.search import FaissSearcher
from hbt.eval.trec import load_trec
from hbt.models.encoder import Encoder

N_QUERIES, N_DOCS = 40, 150


def docid(position: int) -> str:
    # trec_eval breaks score ties by docid, descending; these ids make that the same as position, ascending.
    return f"d{N_DOCS - position:04d}"


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    scores = torch.tensor(np.round(rng.random((N_QUERIES, N_DOCS)), 1))  # one decimal: many ties
    grades = []
    for _ in range(N_QUERIES):
        judged = rng.choice(N_DOCS, size=int(rng.integers(2, 8)), replace=False)
        row = {int(p): int(rng.integers(0, 4)) for p in judged}
        row[int(judged[0])] = max(row[int(judged[0])], 1)  # at least one relevant
        grades.append(row)
    qrels = {f"q{i}": {docid(p): g for p, g in row.items()} for i, row in enumerate(grades)}
    run = {f"q{i}": {docid(p): float(scores[i, p]) for p in range(N_DOCS)} for i in range(N_QUERIES)}
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"map", "recall.1", "recall.10", "ndcg_cut.10", "P.1", "P.10"}).evaluate(run)
    return scores, grades, reference


def test_ap_and_recall_from_ranks(case):
    scores, grades, reference = case
    relevant = [[p for p, g in row.items() if g > 0] for row in grades]
    width = max(len(r) for r in relevant)
    cols = torch.tensor([r + [0] * (width - len(r)) for r in relevant])
    valid = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in relevant])
    _, ranks = pool_ranks(scores, cols, valid)
    for i in range(N_QUERIES):
        ref = reference[f"q{i}"]
        ours = ranking_metrics(ranks[i : i + 1], valid[i : i + 1], (1, 10), False)
        assert ours["map"] == pytest.approx(ref["map"], abs=1e-6)
        assert ours["recall@1"] == pytest.approx(ref["recall_1"], abs=1e-6)
        assert ours["recall@10"] == pytest.approx(ref["recall_10"], abs=1e-6)
        precision = ranking_metrics(ranks[i : i + 1], valid[i : i + 1], (1, 10), False, at_k=("precision",))
        assert precision["precision@1"] == pytest.approx(ref["P_1"], abs=1e-6)
        assert precision["precision@10"] == pytest.approx(ref["P_10"], abs=1e-6)
    # and averaged over queries at once
    together = ranking_metrics(ranks, valid, (1, 10), False)
    assert together["map"] == pytest.approx(np.mean([r["map"] for r in reference.values()]), abs=1e-6)


def test_precision_and_f1_at_k_by_hand_and_against_trec_eval():
    # One query, relevant candidates at ranks 1 and 3: top-1 holds 1 of 2 (P 1, R 1/2, F1 2/3), top-2
    # holds 1 (P 1/2, R 1/2, F1 1/2), top-3 holds 2 (P 2/3, R 1, F1 4/5).
    ranks, valid = torch.tensor([[1, 3]]), torch.tensor([[True, True]])
    m = ranking_metrics(ranks, valid, (1, 2, 3), False, at_k=("recall", "precision", "f1"))
    assert m["precision@1"] == 1 and m["recall@1"] == 0.5 and m["f1@1"] == pytest.approx(2 / 3)
    assert m["precision@2"] == 0.5 and m["f1@2"] == pytest.approx(0.5)
    assert m["precision@3"] == pytest.approx(2 / 3) and m["recall@3"] == 1 and m["f1@3"] == pytest.approx(0.8)
    # trec_eval on random scores without ties: precision as it is, F1 per query from its precision and
    # recall (2PR / (P + R), 0 where both are 0), then averaged over the queries.
    rng = np.random.default_rng(3)
    scores = torch.tensor(rng.random((30, 80)))
    relevant = [list(rng.choice(80, size=int(rng.integers(1, 6)), replace=False)) for _ in range(30)]
    width = max(len(r) for r in relevant)
    cols = torch.tensor([r + [0] * (width - len(r)) for r in relevant])
    valid = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in relevant])
    _, ranks = pool_ranks(scores, cols, valid)
    ours = ranking_metrics(ranks, valid, (1, 5, 10), False, at_k=("recall", "precision", "f1"))
    qrels = {f"q{i}": {f"d{p}": 1 for p in r} for i, r in enumerate(relevant)}
    run = {f"q{i}": {f"d{p}": float(scores[i, p]) for p in range(80)} for i in range(30)}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"P.1,5,10", "recall.1,5,10"}).evaluate(run)
    for k in (1, 5, 10):
        precision = [per_query[q][f"P_{k}"] for q in qrels]
        recall = [per_query[q][f"recall_{k}"] for q in qrels]
        f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
        assert ours[f"precision@{k}"] == pytest.approx(np.mean(precision), abs=1e-6), k
        assert ours[f"f1@{k}"] == pytest.approx(np.mean(f1), abs=1e-6), k
        assert ours[f"recall@{k}"] == pytest.approx(np.mean(recall), abs=1e-6), k


def test_unknown_at_k_metric_is_one_line():
    from hbt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"evaluator.at_k: expected a non-empty subset of \['recall', 'precision', 'f1'\]"):
        Evaluator(at_k=("ndcg",))


def test_graded_ndcg(case):
    scores, grades, reference = case
    for i, row in enumerate(grades):
        ranked = sorted(range(N_DOCS), key=lambda p: (-float(scores[i, p]), p))
        ours = ndcg_at([row.get(p, 0) for p in ranked], list(row.values()), 10)
        assert ours == pytest.approx(reference[f"q{i}"]["ndcg_cut_10"], abs=1e-6)


def write_miracl(root, lang="sw"):
    """A small benchmark in MIRACL's released layout."""
    topics = root / f"miracl-v1.0-{lang}" / "topics"
    qrels = root / f"miracl-v1.0-{lang}" / "qrels"
    corpus = root / f"miracl-corpus-v1.0-{lang}"
    for d in (topics, qrels, corpus):
        d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    docs = [{"docid": f"{i}#0", "title": f"Title {i}", "text": f"passage number {i} about topic {i % 7}"} for i in range(60)]
    (corpus / "docs-0.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[:30]))
    (corpus / "docs-1.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[30:]))
    (topics / f"topics.miracl-v1.0-{lang}-dev.tsv").write_text("".join(f"q{i}\tquestion about topic {i % 7}\n" for i in range(12)))
    lines = []
    for i in range(12):
        for doc in rng.choice(60, size=4, replace=False):
            lines.append(f"q{i} Q0 {doc}#0 {int(rng.integers(0, 3))}\n")
    lines.append("q0 Q0 0#0 1\n")
    (qrels / f"qrels.miracl-v1.0-{lang}-dev.tsv").write_text("".join(lines))
    return dict(
        topics=str(root / "miracl-v1.0-{lang}/topics/topics.miracl-v1.0-{lang}-{split}.tsv"),
        qrels=str(root / "miracl-v1.0-{lang}/qrels/qrels.miracl-v1.0-{lang}-{split}.tsv"),
        corpus=str(root / "miracl-corpus-v1.0-{lang}/docs-*.jsonl"),
    )


def test_trec_benchmark_end_to_end_agrees_with_pytrec_eval(tmp_path):
    paths = write_miracl(tmp_path)
    full = load_trec("miracl", ["sw"], pooled=False, **paths)
    assert load_trec("miracl", ["sw"], **paths).corpus == "full"  # the default: the corpus as the benchmark defines it
    run = tmp_path / "bm25.sw.txt"
    run.write_text("".join(f"q0 Q0 {d}#0 {r + 1} {10 - r} bm25\n" for r, d in enumerate([50, 51, 52])))
    pooled = load_trec("miracl", ["sw"], pooled=True, runs=[str(run)], pool_depth=2, **paths)
    assert full.corpus == "full" and len(full.languages["sw"].doc_ids) == 60
    judged = {d for docs in full.languages["sw"].qrels.values() for d in docs}
    assert pooled.corpus == "pooled (judged + top-2 of 1 run(s))"
    assert set(pooled.languages["sw"].doc_ids) == judged | {"50#0", "51#0"}
    torch.manual_seed(0)
    encoder = Encoder(tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64})
    evaluator = Evaluator(searcher=FaissSearcher("flat"), precision="fp32")  # the reference below encodes in fp32
    result = evaluator.evaluate(encoder, full)["mono"]
    assert result.corpus == "full" and set(result.pairs) == {"sw-sw"}
    # The reference: pytrec_eval on a run made from the same encoder's exact scores.
    data = full.languages["sw"]
    judged = [(qid, t) for qid, t in data.queries if any(g > 0 for g in data.qrels.get(qid, {}).values())]
    q = encoder.encode([t for _, t in judged], "query")
    d = encoder.encode(data.doc_texts, "passage")
    sims = (q @ d.T).numpy()
    run = {qid: {data.doc_ids[j]: float(sims[i, j]) for j in range(len(data.doc_ids))} for i, (qid, _) in enumerate(judged)}
    qrels = {qid: data.qrels[qid] for qid, _ in judged}
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    assert result.macro["ndcg@10"] == pytest.approx(np.mean([r["ndcg_cut_10"] for r in ref.values()]), abs=1e-5)
    assert result.macro["recall@100"] == pytest.approx(np.mean([r["recall_100"] for r in ref.values()]), abs=1e-6)
    # Its run file (evaluator.run_files): the published ids, read back by trec_eval, give the same values.
    evaluator = Evaluator(searcher=FaissSearcher("flat"), precision="fp32", run_files=True)
    result = evaluator.run(encoder, {"miracl": full}, run_dir=tmp_path / "runs")["miracl"]["mono"]
    run, qrels = read_trec(tmp_path / "runs" / "miracl.sw.run", run=True), read_trec(tmp_path / "runs" / "miracl.sw.qrels", run=False)
    assert set(run) == {qid for qid, _ in judged} and qrels == {qid: data.qrels[qid] for qid in qrels}
    from_file = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    assert result.macro["ndcg@10"] == pytest.approx(np.mean([r["ndcg_cut_10"] for r in from_file.values()]), abs=1e-6)
    assert result.macro["recall@100"] == pytest.approx(np.mean([r["recall_100"] for r in from_file.values()]), abs=1e-6)


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_find_the_exact_neighbours_on_easy_data(index):
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((2000, 16)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[:50] + 0.01 * rng.standard_normal((50, 16)).astype(np.float32)
    _, exact = FaissSearcher("flat").search(queries, corpus, 1)
    _, approx = FaissSearcher(index, nlist=16, nprobe=16).search(queries, corpus, 1)
    assert (exact[:, 0] == np.arange(50)).all()
    assert (approx[:, 0] == exact[:, 0]).mean() >= 0.95


def test_pooled_miracl_without_runs_is_one_line_and_the_table_names_the_corpus(tmp_path):
    from hbt.errors import ConfigError
    from hbt.results import results_table

    paths = write_miracl(tmp_path)
    with pytest.raises(ConfigError, match=r"eval.miracl.runs: pooled=true needs run files"):
        load_trec("miracl", ["sw"], pooled=True, **paths)
    bench = load_trec("miracl", ["sw"], **paths)
    torch.manual_seed(0)
    results = {
        "miracl": Evaluator(searcher=FaissSearcher("flat")).evaluate(
            Encoder(tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}), bench
        )
    }
    assert "miracl [full corpus]" in results_table(results)


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_sharded_search_equals_one_pass_and_ranks_merge_to_the_single_process_result(tmp_path, index):
    """Shards of 7 documents searched one by one, and 3 simulated ranks each searching every third
    document, give the top-k of one pass over the whole corpus (ties broken by corpus position)."""
    from hbt.eval.sharded import TopK, encode_shards, search_shards
    from hbt.eval.trec import Corpus

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 8)).astype(np.float32)
    vectors[50] = vectors[10]  # an exact tie
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors.astype(np.float16).astype(np.float32)  # what the fp16 shards hold
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"docid": f"d{i}", "text": str(i)}) + "\n" for i in range(200)))
    corpus = Corpus([str(tmp_path / "docs.jsonl")])
    encode = lambda texts, positions: vectors[[int(t) for t in texts]]
    queries = vectors[[10, 3, 77]] + 0.05 * rng.standard_normal((3, 8)).astype(np.float32)
    searcher = FaissSearcher(index, nlist=4, nprobe=4)
    whole = search_shards(searcher, queries, encode_shards(corpus.docs(), encode, tmp_path / "one", 1000), 20)
    sharded = search_shards(searcher, queries, encode_shards(corpus.docs(), encode, tmp_path / "many", 7), 20, progress=True)
    merged = TopK(3, 20)
    for rank in range(3):
        merged.merge(search_shards(searcher, queries, encode_shards(corpus.docs(rank, 3), encode, tmp_path / f"r{rank}", 7), 20))
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :20]
    assert whole.ranked_ids() == [[f"d{i}" for i in row] for row in exact]
    assert sharded.ranked_ids() == whole.ranked_ids() and merged.ranked_ids() == whole.ranked_ids()
    assert whole.ranked_ids()[0].index("d10") < whole.ranked_ids()[0].index("d50")  # the tie: lower position first
    assert len(list((tmp_path / "many").glob("shard-*.positions.npy"))) == 29


def test_corpus_shards_are_reused_from_the_cache_and_a_bad_line_names_its_file(tmp_path):
    from hbt.errors import DataError
    from hbt.eval.sharded import encode_shards
    from hbt.eval.trec import Corpus

    (tmp_path / "docs.jsonl").write_text('{"docid": "a", "text": "x"}\n{"docid": "b", "text": "y"}\nnot json\n')
    corpus = Corpus([str(tmp_path / "docs.jsonl")])
    calls = []
    encode = lambda texts, positions: calls.append(texts) or np.ones((len(texts), 4), dtype=np.float32)
    with pytest.raises(DataError, match=r"docs.jsonl:3: expected a JSON object"):
        encode_shards(corpus.docs(), encode, tmp_path / "shards", 1)
    assert not (tmp_path / "shards" / "complete.json").exists()  # an interrupted encoding is not reused
    (tmp_path / "docs.jsonl").write_text('{"docid": "a", "text": "x"}\n{"docid": "b", "text": "y"}\n')
    first = encode_shards(corpus.docs(), encode, tmp_path / "shards", 1)
    again = encode_shards(corpus.docs(), encode, tmp_path / "shards", 1)
    assert [len(s) for s in again] == [1, 1] and again == first and len(calls) == 2 + 2  # none for the reuse


def test_query_subsets_are_their_own_rows_from_the_same_embeddings(tmp_path):
    """A subset's metrics equal the full run's per-query metrics averaged over its queries: for MIRACL by
    a regex and an id file, for the built-in LAReQA-style benchmark by an id list (pools unchanged)."""
    from hbt.errors import ConfigError
    from hbt.eval.toy import toy_benchmark

    paths = write_miracl(tmp_path)
    bench = load_trec("miracl", ["sw"], **paths)
    torch.manual_seed(0)
    encoder = Encoder(tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64})
    evaluator = Evaluator(searcher=FaissSearcher("flat"))
    (tmp_path / "ids.txt").write_text("q0\nq3\n")
    results = evaluator.run(encoder, {"miracl": bench}, {"miracl": {"topic3": "re:topic 3$", "listed": str(tmp_path / "ids.txt")}})
    assert set(results) == {"miracl", "miracl[topic3]", "miracl[listed]"}
    full = results["miracl"]["mono"].pairs["sw-sw"]
    sub = results["miracl[topic3]"]["mono"].pairs["sw-sw"]
    judged = [qid for qid, t in bench.languages["sw"].queries if any(g > 0 for g in bench.languages["sw"].qrels[qid].values())]
    topic3 = [qid for qid, t in bench.languages["sw"].queries if t.endswith("topic 3") and qid in judged]
    assert sub.num_queries == len(topic3) < full.num_queries
    # the same numbers as scoring each query alone
    alone = [
        evaluator.run(encoder, {"m": bench}, {"m": {"one": [qid]}})["m[one]"]["mono"].pairs["sw-sw"].metrics["ndcg@10"] for qid in topic3
    ]
    assert sub.metrics["ndcg@10"] == pytest.approx(np.mean(alone), abs=1e-9)
    toy = toy_benchmark("test", ["en", "de", "ru"])
    ids = [qid for qid, _ in toy.queries["en"][:10]]
    out = evaluator.run(encoder, {"toy": toy}, {"toy": {"ten": ids}})
    assert out["toy[ten]"]["mono"].pairs["en-en"].num_queries == 10
    assert out["toy[ten]"]["multi"].pairs["de"].num_queries == 10
    with pytest.raises(ConfigError, match=r"eval.toy.query_ids.none: matches no query"):
        evaluator.run(encoder, {"toy": toy}, {"toy": {"none": "re:^zzz$"}})
    with pytest.raises(ConfigError, match=r"eval.toy.query_ids.bad: 1 ids are not queries of toy"):
        evaluator.run(encoder, {"toy": toy}, {"toy": {"bad": ["no-such-id"]}})


def read_trec(path, run: bool) -> dict[str, dict[str, float | int]]:
    table: dict = {}
    for line in path.read_text().splitlines():
        qid, _, doc, *rest = line.split()
        table.setdefault(qid, {})[doc] = float(rest[1]) if run else int(rest[0])
    return table


def test_run_files_give_hbts_metrics_under_trec_eval(tmp_path):
    """evaluator.run_files=true: each setting's TREC run and qrels, read back by pytrec_eval, give hbt's
    per-pair MAP, R@1 and R@10 (the depth holds every relevant candidate), and its macro values when the
    per-query values are grouped by the pair their query id names."""
    from hbt.eval.toy import toy_benchmark

    torch.manual_seed(0)
    encoder = Encoder(tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64})
    bench = toy_benchmark("test", ["en", "de", "zh"])
    evaluator = Evaluator(precision="fp32", run_files=True, run_depth=400)
    results = evaluator.run(encoder, {"toy": bench}, run_dir=tmp_path / "runs")["toy"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        f"toy.{s}.{kind}" for s in ("cross", "mono", "multi") for kind in ("qrels", "run")
    ]
    for setting in ("mono", "cross", "multi"):
        run = read_trec(tmp_path / "runs" / f"toy.{setting}.run", run=True)
        qrels = read_trec(tmp_path / "runs" / f"toy.{setting}.qrels", run=False)
        assert set(run) == set(qrels) and all(doc.split(":")[0] in bench.languages for ranked in run.values() for doc in ranked)
        measured = pytrec_eval.RelevanceEvaluator(qrels, {"map", "recall.1,10"}).evaluate(run)
        by_pair: dict[str, list] = {}
        for qid, values in measured.items():
            by_pair.setdefault(qid.split(":")[0], []).append(values)
        block = results[setting]
        assert set(by_pair) == set(block.pairs)
        for pair, rows in by_pair.items():
            ours = block.pairs[pair]
            assert ours.num_queries == len(rows)
            for name, trec in (("map", "map"), ("recall@1", "recall_1"), ("recall@10", "recall_10")):
                assert ours.metrics[name] == pytest.approx(np.mean([r[trec] for r in rows]), abs=1e-9), (setting, pair, name)
        macro_map = np.mean([np.mean([r["map"] for r in rows]) for rows in by_pair.values()])
        assert block.macro["map"] == pytest.approx(macro_map, abs=1e-9)
    multi = read_trec(tmp_path / "runs" / "toy.multi.qrels", run=False)
    assert all(len({doc.split(":")[0] for doc in docs}) == len(docs) for docs in multi.values())  # one relevant per language


def test_run_depth_is_checked():
    from hbt.errors import ConfigError

    with pytest.raises(ConfigError, match="evaluator.run_depth: must be an integer >= 1, got 0"):
        Evaluator(run_depth=0)


def torchmetrics_values(scores: torch.Tensor, relevant: torch.Tensor) -> dict[str, torch.Tensor]:
    """torchmetrics' retrieval metrics per query, grouped with ``indexes`` as its users call them."""
    from torchmetrics.retrieval import RetrievalMAP, RetrievalPrecision, RetrievalRecall

    indexes = torch.arange(len(scores))[:, None].expand_as(scores).reshape(-1)
    flat = scores.reshape(-1), relevant.reshape(-1)
    keep = lambda values, dim=None: values  # noqa: E731 - per-query values
    return {
        "map": RetrievalMAP(aggregation=keep)(*flat, indexes=indexes),
        "recall@10": RetrievalRecall(top_k=10, aggregation=keep)(*flat, indexes=indexes),
        "precision@10": RetrievalPrecision(top_k=10, aggregation=keep)(*flat, indexes=indexes),
    }


def test_torchmetrics_agrees_where_its_definitions_are_hbts_and_differs_where_they_are_not():
    """Why hbt keeps its own ranking metrics (eval/metrics.py, docs/evaluation.md): on untied scores whose
    relevant candidates all score above 0, torchmetrics' MAP, recall@10 and precision@10 equal hbt's (and
    trec_eval's); torchmetrics counts a relevant candidate scoring <= 0 as not relevant, so where a
    cosine is negative its AP is not trec_eval's, while hbt's is."""
    from hbt.eval.metrics import per_query_metrics

    generator = torch.Generator().manual_seed(3)
    scores = torch.rand(30, 200, generator=generator, dtype=torch.float64) + 0.01  # untied, all > 0
    cols = torch.stack([torch.randperm(200, generator=generator)[:4] for _ in range(30)])
    relevant = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, cols, True)
    valid = torch.ones_like(cols, dtype=torch.bool)

    def ours(scores):
        return per_query_metrics(pool_ranks(scores, cols, valid)[1], valid, (10,), False, ("recall", "precision"))[1]

    theirs = torchmetrics_values(scores, relevant)
    for name in ("map", "recall@10", "precision@10"):
        assert torch.allclose(ours(scores)[name], theirs[name].double(), atol=1e-6), name
    shifted = scores - 0.5  # some relevant candidates now score below 0; the ranking is the same
    qrels = {f"q{i}": {f"d{int(c):03d}": 1 for c in cols[i]} for i in range(30)}
    run = {f"q{i}": {f"d{j:03d}": float(shifted[i, j]) for j in range(200)} for i in range(30)}
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"map"}).evaluate(run)
    reference = torch.tensor([trec[f"q{i}"]["map"] for i in range(30)], dtype=torch.float64)
    assert torch.allclose(ours(shifted)["map"], reference, atol=1e-9)
    negative = (shifted.gather(1, cols) <= 0).any(1)
    assert negative.any()
    assert not torch.allclose(torchmetrics_values(shifted, relevant)["map"].double()[negative], reference[negative], atol=1e-3)
