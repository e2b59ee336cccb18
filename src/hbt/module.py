"""The LightningModule: shared encoder + InfoNCE, with passages gathered across DDP ranks."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

from hbt.loss import InfoNCELoss
from hbt.models.encoder import Encoder


def warmup_linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1) -> LambdaLR:
    """Linear warmup to the peak learning rate, then linear decay to zero at ``total_steps``."""
    warmup = max(int(math.ceil(total_steps * warmup_ratio)), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(total_steps - warmup, 1))

    return LambdaLR(optimizer, factor)


class RetrieverModule(L.LightningModule):
    def __init__(
        self,
        encoder: Encoder,
        loss: InfoNCELoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., LambdaLR] | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.hbt_config: dict | None = None  # the resolved run config, stored in checkpoints
        self.pairs_seen: Counter[str] = Counter()

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate ``x`` over DDP ranks, keeping gradients to every rank's copy."""
        if self.trainer is None or self.trainer.world_size == 1:
            return x
        return self.all_gather(x, sync_grads=True).flatten(0, 1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        queries = self.encoder(batch["query"])
        passages = self.gather(self.encoder(batch["passage"]))
        if "negatives" in batch:
            passages = torch.cat([passages, self.gather(self.encoder(batch["negatives"]))])
        rank = self.trainer.global_rank if self.trainer is not None else 0
        targets = torch.arange(len(queries), device=queries.device) + rank * len(queries)
        all_queries = self.gather(queries) if self.loss.symmetric else None
        loss, stats = self.loss(queries, passages, targets, all_queries)
        batch_size = len(queries)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=batch_size)
        self.log("train/emb_std", queries.detach().std(0).mean(), batch_size=batch_size)
        self.log("train/mono_share", batch["monolingual"].float().mean(), on_step=True, on_epoch=True, batch_size=batch_size)
        self.pairs_seen.update(batch["pairs"])
        return loss

    def on_train_epoch_end(self) -> None:
        """Per epoch: share of monolingual pairs, distinct language pairs, and each query language's share."""
        total = sum(self.pairs_seen.values())
        if total:
            split = {pair: pair.split("-") for pair in self.pairs_seen}
            mono = sum(n for pair, n in self.pairs_seen.items() if split[pair][0] == split[pair][1])
            by_query_lang: Counter[str] = Counter()
            for pair, n in self.pairs_seen.items():
                by_query_lang[split[pair][0]] += n
            self.log("train/epoch_mono_pair_share", mono / total)
            self.log("train/epoch_language_pairs_seen", float(len(self.pairs_seen)))
            self.log_dict({f"train/query_lang_share/{lang}": n / total for lang, n in sorted(by_query_lang.items())})
        self.pairs_seen.clear()

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.encoder.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        optimizer = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hbt_config"] = self.hbt_config
