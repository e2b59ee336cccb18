"""Top-k inner-product search, for corpora too large for a full score matrix (MIRACL).

:class:`FaissSearcher` (``evaluator/searcher=faiss``, the default): ``flat`` is exact; ``ivf`` and
``hnsw`` are approximate. On a host with faiss-gpu and a GPU, flat and IVF indexes move to the GPUs
(HNSW stays on the CPU, as faiss has no GPU HNSW). Queries are searched in batches so memory stays
bounded. :class:`TorchSearcher` (``evaluator/searcher=torch``): exact search in torch, on the GPU
without the faiss-gpu wheel.
"""

from __future__ import annotations

import numpy as np

from hbt.errors import ConfigError
from hbt.eval.metrics import merge_by_position, top_by_position

INDEXES = ("flat", "ivf", "hnsw")


class FaissSearcher:
    def __init__(
        self,
        index: str = "flat",
        nlist: int = 1024,
        nprobe: int = 32,
        hnsw_m: int = 32,
        ef_search: int = 128,
        use_gpu: bool | None = None,
        query_batch: int = 4096,
    ):
        if index not in INDEXES:
            raise ConfigError("evaluator.searcher.index", f"unknown index {index!r}; expected one of {', '.join(INDEXES)}")
        self.index_type = index
        self.nlist, self.nprobe, self.hnsw_m, self.ef_search = nlist, nprobe, hnsw_m, ef_search
        self.use_gpu = use_gpu
        self.query_batch = query_batch
        self.shard_dtype = np.float32  # what faiss searches in

    def build(self, corpus: np.ndarray):
        return self.build_incremental([corpus], len(corpus))

    def build_incremental(self, chunks, total: int):
        """One index over ``chunks`` (float32 arrays, ``total`` rows in all), added one at a time: IVF
        is trained on a sample of the first chunk, so no more than one chunk is in memory beside the
        index."""
        try:
            import faiss
        except ImportError:
            raise ConfigError(
                "evaluator.searcher", "faiss is not installed: pip install -e '.[cpu]' (faiss-cpu) or '.[gpu]' (faiss-gpu)"
            ) from None

        index = None
        for corpus in chunks:
            corpus = np.ascontiguousarray(corpus, dtype=np.float32)
            if index is None:
                index = self._new_index(faiss, corpus, total)
            index.add(corpus)
        return index

    def _new_index(self, faiss, first: np.ndarray, total: int):
        dim = first.shape[1]
        if self.index_type == "flat":
            index = faiss.IndexFlatIP(dim)
        elif self.index_type == "ivf":
            nlist = max(1, min(self.nlist, total // 39, len(first) // 39))  # faiss wants >= 39 training points per list
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            sample = first[rng.choice(len(first), min(len(first), 256 * nlist), replace=False)]
            index.train(sample)
            index.nprobe = min(self.nprobe, nlist)
        else:
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.ef_search
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if self.use_gpu and gpus == 0:
            raise ConfigError("evaluator.searcher.use_gpu", "true, but faiss sees no GPU (faiss-cpu installed? pip install -e '.[gpu]')")
        use_gpu = self.use_gpu if self.use_gpu is not None else gpus > 0
        if use_gpu and self.index_type != "hnsw":
            index = faiss.index_cpu_to_all_gpus(index)
        return index

    def search(self, queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and corpus positions of the top ``k`` per query (positions -1 where fewer exist)."""
        return self.search_index(self.build(corpus), queries, min(k, len(corpus)))

    def search_index(self, index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, ids = [], []
        for start in range(0, len(queries), self.query_batch):
            s, i = index.search(queries[start : start + self.query_batch], k)
            scores.append(s)
            ids.append(i)
        return np.concatenate(scores), np.concatenate(ids)


class TorchSearcher:
    """Exact top-k inner-product search in torch, on the GPU where there is one, without faiss: what
    ``flat`` computes (every score, blockwise), for hosts without the faiss-gpu wheel.

    Each block of ``doc_block`` documents is moved to ``device`` once and scored against queries in
    batches of ``query_batch``; the running top-k keeps ties by the lower corpus position, as the shard
    merge does (:class:`hbt.eval.sharded.TopK`). ``precision``: ``float32`` (the default: the scores
    faiss flat computes, so the same top-k), or ``float16`` / ``bfloat16`` matmuls against the fp16
    shards as they are stored (faster on GPUs; scores rounded, so near-ties may order differently).
    ``device``: auto (cuda when torch sees a GPU, else cpu), cpu, cuda or cuda:N. It is flat search only:
    ``index`` is accepted for configs written for faiss, and must be ``flat``.
    """

    PRECISIONS = ("float32", "float16", "bfloat16")

    def __init__(
        self, device: str = "auto", precision: str = "float32", query_batch: int = 1024, doc_block: int = 65536, index: str = "flat"
    ):
        import torch

        if index != "flat":
            raise ConfigError(
                "evaluator.searcher.index",
                f"the torch searcher is exact (flat) only, got {index!r}; use the faiss searcher for ivf or hnsw",
            )
        if precision not in self.PRECISIONS:
            raise ConfigError("evaluator.searcher.precision", f"expected one of {', '.join(self.PRECISIONS)}, got {precision!r}")
        for key, value in (("query_batch", query_batch), ("doc_block", doc_block)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"evaluator.searcher.{key}", f"must be an integer >= 1, got {value!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as err:
            raise ConfigError("evaluator.searcher.device", f"not a torch device: {device!r} ({err})") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("evaluator.searcher.device", f"{device}, but torch sees no GPU")
        self.index_type = "flat"
        self.dtype = getattr(torch, precision)
        self.query_batch, self.doc_block = query_batch, doc_block
        # The dtype shards are handed over in (hbt.eval.sharded.Shard.load): as stored for low precision.
        self.shard_dtype = np.float32 if precision == "float32" else np.float16

    def search(self, queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and corpus positions of the top ``k`` per query, best first, ties by lower position
        (positions -1 and scores -inf where the corpus has fewer than ``k``)."""
        import torch

        k = min(k, len(corpus))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        if k == 0 or len(queries) == 0:
            return scores, ids
        q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        best_s = torch.full((len(queries), 0), -torch.inf, device=self.device)
        best_p = torch.zeros((len(queries), 0), dtype=torch.long, device=self.device)
        for start in range(0, len(corpus), self.doc_block):
            block = torch.from_numpy(np.ascontiguousarray(corpus[start : start + self.doc_block])).to(self.device, self.dtype)
            parts_s, parts_p = [], []
            for q in range(0, len(queries), self.query_batch):
                batch = q_all[q : q + self.query_batch].to(self.device, self.dtype)
                block_scores = (batch @ block.T).float()
                local = top_by_position(block_scores, k)
                parts_s.append(block_scores.gather(1, local))
                parts_p.append(local + start)
            best_s, best_p = merge_by_position(torch.cat([best_s, torch.cat(parts_s)], 1), torch.cat([best_p, torch.cat(parts_p)], 1), k)
        scores[:, : best_s.shape[1]] = best_s.cpu().numpy()
        ids[:, : best_p.shape[1]] = best_p.cpu().numpy()
        return scores, ids
