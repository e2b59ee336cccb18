"""Top-k inner-product search with faiss, for corpora too large for a full score matrix (MIRACL).

``flat`` is exact; ``ivf`` and ``hnsw`` are approximate. On a host with faiss-gpu and a GPU, flat and
IVF indexes move to the GPUs (HNSW stays on the CPU, as faiss has no GPU HNSW). Queries are searched
in batches so memory stays bounded.
"""

from __future__ import annotations

import numpy as np

from hbt.errors import ConfigError

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
