"""A test-only callback: each rank writes the token ids of every training batch it trains on."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


def unpadded(inputs: dict) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]


class RecordBatches(L.Callback):
    def __init__(self, out: str):
        self.out = Path(out)
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append({"query": unpadded(batch["query"]), "passage": unpadded(batch["passage"]), "pairs": list(batch["pairs"])})

    def on_train_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(self.batches, self.out / f"rank{trainer.global_rank}.pt")
