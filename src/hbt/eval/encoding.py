"""Encoding for evaluation: texts to embeddings with the evaluator's settings, sharded across ranks, with
its two caches.

- Token ids (:class:`TokenIds`): the training callback evaluates the same texts every few steps; the
  weights change, the token ids do not. They are kept across runs while the tokenizer's fingerprint is
  the same, up to :data:`TOKEN_CACHE_TOKENS` tokens.
- Embeddings on disk (``evaluator.cache_dir``): keyed by the encoder's weights and settings
  (:func:`encoder_fingerprint`), the precision, the dtype and the texts (:func:`texts_digest`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from hbt.distributed import rank_and_world
from hbt.eval.benchmark import RetrievalBenchmark
from hbt.models.encoder import Encoder
from hbt.models.precision import EMBEDDING_DTYPES, encoding
from hbt.progress import progress as show_progress

# Token ids kept across runs (:class:`TokenIds`), at most this many tokens in all (int32: 128 MiB).
TOKEN_CACHE_TOKENS = 1 << 25


class TokenIds:
    """Token ids of texts encoded before (:meth:`Encoder.tokenize_compact`), kept while the tokenizer's
    fingerprint is the same, up to :data:`TOKEN_CACHE_TOKENS` tokens in all. Used only between
    :meth:`open` (which checks the fingerprint) and :meth:`close`; elsewhere the encoder tokenizes. On a
    GPU, tokenizing is a large part of a small model's evaluation (docs/benchmarks.md)."""

    def __init__(self):
        self.kept: dict[bytes, list] = {}
        self.count = 0
        self.tokenizer_key: str | None = None
        self.active = False

    def open(self, encoder: Encoder) -> None:
        key = encoder.text_tokenizer.fingerprint()  # what decides the token ids (~50 ms for mE5's)
        if key != self.tokenizer_key:
            self.kept, self.count, self.tokenizer_key = {}, 0, key
        self.active = True

    def close(self) -> None:
        self.active = False

    def get(self, encoder: Encoder, texts: list[str], kind: str, lang: str) -> list | None:
        if not self.active:
            return None
        key = texts_digest(f"{kind}|{lang}|{len(texts)}", texts).digest()
        ids = self.kept.get(key)
        if ids is None:
            ids = encoder.tokenize_compact(texts, kind, lang)
            count = sum(len(row) for row in ids)
            if self.count + count <= TOKEN_CACHE_TOKENS:
                self.kept[key] = ids
                self.count += count
        return ids


class TextEncoding:
    """How the evaluator encodes: batches of at most ``batch_size`` texts and ``max_tokens`` tokens,
    ``precision`` (auto: by device), ``compile``, embeddings kept as ``embedding_dtype``, ``progress``,
    and the embedding cache under ``cache_dir`` (None: off). Values are checked by the evaluator."""

    def __init__(self, batch_size, max_tokens, precision, embedding_dtype, compile, progress, cache_dir: Path | None):
        self.batch_size, self.max_tokens, self.precision, self.embedding_dtype = batch_size, max_tokens, precision, embedding_dtype
        self.compile = compile
        self.progress = progress
        self.cache_dir = cache_dir
        self.token_ids = TokenIds()

    def options(self, encoder: Encoder, progress: bool | None = None) -> dict:
        """How :meth:`Encoder.encode` runs: batches, token budget, precision resolved for the encoder's
        device (``auto``: bf16 where the hardware has it; bf16-mixed under FSDP, :meth:`Encoder.runs_as`),
        and the dtype embeddings are kept in."""
        resolved = encoding(self.precision, self.max_tokens, next(encoder.parameters()).device, "evaluator", self.compile)
        return {
            "batch_size": self.batch_size,
            **resolved,
            "precision": encoder.runs_as(resolved["precision"]),
            "dtype": EMBEDDING_DTYPES[self.embedding_dtype],
            "progress": self.progress if progress is None else progress,
        }

    def encode(
        self, encoder: Encoder, texts: list[str], kind: str, lang: str, fingerprint: str = "", progress: bool | str | None = None
    ) -> torch.Tensor:
        """Embeddings of texts of one language (language-coded tokenizers tag them with it), from the
        cache where it has them; ``progress`` overrides ``evaluator.progress`` for this call."""
        if self.cache_dir is None:
            return self._encode_sharded(encoder, texts, kind, lang, progress)
        options = self.options(encoder)
        compiled = "|compiled" if options["compile"] else ""  # other kernels: not bit-equal to eager's
        digest = texts_digest(f"{fingerprint}|{kind}|{lang}|{options['precision']}|{options['dtype']}{compiled}", texts)
        path = self.cache_dir / f"{digest.hexdigest()}.pt"
        if path.exists():
            return torch.load(path)
        embeddings = self._encode_sharded(encoder, texts, kind, lang, progress)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(embeddings, tmp)
        tmp.replace(path)
        return embeddings

    def _encode_sharded(self, encoder: Encoder, texts: list[str], kind: str, lang: str, progress=None) -> torch.Tensor:
        """Under torch.distributed every rank encodes every world-th text and the shards are gathered,
        so N devices encode a benchmark N times faster; a single process encodes everything. Only rank
        zero shows progress."""
        rank, world = rank_and_world()
        shown = (self.progress if progress is None else progress) if rank == 0 else False
        mine = texts if world == 1 else texts[rank::world]
        local = encoder.encode(mine, kind, lang, ids=self.token_ids.get(encoder, mine, kind, lang), **self.options(encoder, shown))
        if world == 1:
            return local
        import torch.distributed as dist

        shards: list = [None] * world
        dist.all_gather_object(shards, local)
        out = torch.empty((len(texts), shards[0].shape[1]) if len(texts) else (0, 0), dtype=shards[0].dtype)
        for r, shard in enumerate(shards):
            out[r::world] = shard
        return out

    def embed(
        self, encoder: Encoder, bench: RetrievalBenchmark, fingerprint: str = ""
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The query embeddings and candidate pools of a benchmark, by language."""
        query_texts = {lang: [t for _, t in qs] for lang, qs in bench.queries.items()}
        # Symmetric parallel text: where the candidates are the queries, encoded the same way, reuse them.
        reused = {lang for lang, texts in bench.candidates.items() if bench.candidate_kind == "query" and texts == query_texts.get(lang)}
        jobs = [("query", lang, texts) for lang, texts in query_texts.items()]
        jobs += [(bench.candidate_kind, lang, texts) for lang, texts in bench.candidates.items() if lang not in reused]
        # One progress display over the whole benchmark (its languages' encodes are seconds to minutes each).
        rank, _ = rank_and_world()
        shown = show_progress(
            jobs,
            sum(len(job[2]) for job in jobs),
            f"encode {bench.name}",
            self.progress if rank == 0 else False,
            weight=lambda job: len(job[2]),
        )
        done = {(kind, lang): self.encode(encoder, texts, kind, lang, fingerprint, progress=False) for kind, lang, texts in shown}
        queries = {lang: done[("query", lang)] for lang in query_texts}
        pools = {lang: queries[lang] if lang in reused else done[(bench.candidate_kind, lang)] for lang in bench.candidates}
        return queries, pools


def texts_digest(header: str, texts: list[str]):
    """A blake2b digest (20 bytes) of ``header`` and the texts, each ended by a NUL byte."""
    digest = hashlib.blake2b(header.encode(), digest_size=20)
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest


def encoder_fingerprint(encoder: Encoder) -> str:
    """A digest of the weights and input settings: cached embeddings are reused only for the same model."""
    digest = hashlib.blake2b(repr((sorted(encoder.settings().items()), len(encoder.tokenizer))).encode(), digest_size=20)
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
