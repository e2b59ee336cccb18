"""The LightningDataModule that yields hybrid batches of tokenized (query, passage) pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from hbt.data.schema import ParallelItem, TextTokenizer, languages_of
from hbt.data.store import ItemStore
from hbt.errors import ConfigError, DataError
from hbt.sampling import HybridBatchSampler, PairRef


class PairDataset(Dataset):
    """Indexed by :class:`PairRef`: the texts of one pair in the languages the sampler chose."""

    def __init__(self, store: ItemStore, num_hard_negatives: int = 0):
        self.store = store
        self.num_hard_negatives = num_hard_negatives

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, ref: PairRef) -> dict:
        return self.__getitems__([ref])[0]

    def __getitems__(self, refs: list[PairRef]) -> list[dict]:
        """A whole batch, from the cells its pairs use (:meth:`ItemStore.cells`), not whole rows."""
        rows = [ref.item for ref in refs]
        query_langs, passage_langs = [ref.query_lang for ref in refs], [ref.passage_lang for ref in refs]
        queries, passages = self.store.cells("q", rows, query_langs), self.store.cells("p", rows, passage_langs)
        examples = [
            {"query": query, "passage": passage, "query_lang": ref.query_lang, "passage_lang": ref.passage_lang}
            for ref, query, passage in zip(refs, queries, passages)
        ]
        if self.num_hard_negatives:
            for ref, example, negatives in zip(refs, examples, self.store.cells("n", rows, passage_langs)):
                negatives = negatives if negatives is not None else []
                if len(negatives) < self.num_hard_negatives:
                    raise DataError(
                        f"item {self.store.rows([ref.item])['id'][0]}",
                        f"{len(negatives)} hard negatives in {ref.passage_lang!r}, data.num_hard_negatives={self.num_hard_negatives}",
                    )
                example["negatives"] = list(negatives[: self.num_hard_negatives])
        return examples


class PairCollator:
    """Tokenizes (or, from the token cache, only pads) a batch; hard negatives are flattened
    query-major ([B * k] rows)."""

    def __init__(self, text_tokenizer: TextTokenizer):
        self.text_tokenizer = text_tokenizer

    def inputs(self, values: list, kind: str, langs: list[str]) -> dict[str, torch.Tensor]:
        if values and isinstance(values[0], str):
            return self.text_tokenizer(values, kind, langs)
        return self.text_tokenizer.pad(values)

    def __call__(self, examples: list[dict]) -> dict:
        batch = {
            "query": self.inputs([e["query"] for e in examples], "query", [e["query_lang"] for e in examples]),
            "passage": self.inputs([e["passage"] for e in examples], "passage", [e["passage_lang"] for e in examples]),
            "monolingual": torch.tensor([e["query_lang"] == e["passage_lang"] for e in examples]),
            "pairs": [f"{e['query_lang']}-{e['passage_lang']}" for e in examples],
        }
        if "negatives" in examples[0]:
            batch["negatives"] = self.inputs(
                [n for e in examples for n in e["negatives"]], "passage", [e["passage_lang"] for e in examples for _ in e["negatives"]]
            )
        return batch


class ParallelDataModule(L.LightningDataModule):
    """Training pairs from any item source, drawn by the hybrid sampler.

    ``train`` is a callable returning the training items, as an :class:`ItemStore` or a list of
    :class:`ParallelItem` (a ``_partial_`` loader from ``conf/data``);
    ``sampler`` is a ``_partial_`` :class:`HybridBatchSampler` completed here with the items, the batch
    size and the trainer's rank and world size. With ``cache_tokens`` every text is tokenized once,
    into a file next to the item table, instead of at every step (``tokenize_workers`` processes; null:
    every core for large data). ``validation`` maps names to benchmark factories for the held-out split
    of the same data, which the retrieval callback evaluates during training.

    Under DDP, :meth:`prepare_data` (one process per node) builds the item table and the token cache;
    every rank's :meth:`setup` and loader then memory-map those files instead of building their own.
    """

    def __init__(
        self,
        train: Callable[[], ItemStore | Sequence[ParallelItem]],
        sampler: Callable[..., HybridBatchSampler],
        validation: dict[str, Callable] | None = None,
        batch_size: int = 32,
        num_hard_negatives: int = 0,
        num_workers: int = 0,
        cache_tokens: bool = True,
        tokenize_workers: int | None = None,
    ):
        super().__init__()
        if num_hard_negatives < 0:
            raise ConfigError("data.num_hard_negatives", f"must be >= 0, got {num_hard_negatives}")
        if tokenize_workers is not None and tokenize_workers < 1:
            raise ConfigError("data.tokenize_workers", f"must be >= 1 or null, got {tokenize_workers}")
        self.train_source = train
        self.validation = dict(validation or {})
        self.sampler_factory = sampler
        self.batch_size = batch_size
        self.num_hard_negatives = num_hard_negatives
        self.num_workers = num_workers
        self.cache_tokens = cache_tokens
        self.tokenize_workers = tokenize_workers
        self.store: ItemStore | None = None
        self.token_store: ItemStore | None = None
        self.text_tokenizer: TextTokenizer | None = None
        self.batch_sampler: HybridBatchSampler | None = None
        self._pending_state: dict | None = None

    def attach_tokenizer(self, text_tokenizer: TextTokenizer) -> None:
        self.text_tokenizer = text_tokenizer

    def _load_store(self) -> None:
        if self.store is None:
            items = self.train_source()
            store = items if isinstance(items, ItemStore) else ItemStore.from_items(items, languages_of(items))
            self.store = store.persisted()

    def _load_tokens(self) -> ItemStore:
        if self.text_tokenizer is None:
            raise RuntimeError("attach_tokenizer() must be called before training")
        if self.token_store is None:
            self.text_tokenizer.check_languages(self.store.languages)
            self.token_store = self.store.tokenized(self.text_tokenizer, self.tokenize_workers)
        return self.token_store

    def prepare_data(self) -> None:
        """Lightning calls this on one process per node before any rank's ``setup``: it builds the files
        (item table, token cache) that all ranks then memory-map."""
        self._load_store()
        if self.cache_tokens:
            self._load_tokens()

    def setup(self, stage: str | None = None) -> None:
        self._load_store()
        if self.batch_sampler is None:
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            self.batch_sampler = self.sampler_factory(
                item_languages=self.store.item_languages(), batch_size=self.batch_size, rank=rank, world_size=world
            )
            if self._pending_state is not None:
                self.batch_sampler.load_state_dict(self._pending_state)

    def train_dataloader(self) -> DataLoader:
        if self.text_tokenizer is None:
            raise RuntimeError("attach_tokenizer() must be called before training")
        self.setup()
        self.text_tokenizer.check_languages(self.store.languages)
        store = self._load_tokens() if self.cache_tokens else self.store
        return DataLoader(
            PairDataset(store, self.num_hard_negatives),
            batch_sampler=self.batch_sampler,
            collate_fn=PairCollator(self.text_tokenizer),
            num_workers=self.num_workers,
            # A private generator: creating the loader must not draw from the global RNG, or a resumed
            # run's dropout masks would drift from the uninterrupted run's.
            generator=torch.Generator().manual_seed(self.batch_sampler.seed),
        )

    def state_dict(self) -> dict:
        """The sampler's position as the number of batches *trained on* in this epoch (the loader may
        have drawn more ahead of time), so a resumed run continues with the next unseen batch."""
        if self.batch_sampler is None:
            return {}
        state = self.batch_sampler.state_dict()
        if self.trainer is not None:
            state["epoch"] = self.trainer.current_epoch
            state["step"] = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"sampler": state}

    def load_state_dict(self, state: dict) -> None:
        if "sampler" in state:
            self._pending_state = state["sampler"]
            if self.batch_sampler is not None:
                self.batch_sampler.load_state_dict(state["sampler"])
