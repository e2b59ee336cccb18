"""The LightningModule: shared encoder + InfoNCE, with passages gathered across DDP ranks. Lightning owns
the optimizer step, clipping, accumulation and precision; GradCache, when on, is part of the loss
computation (:mod:`hbt.grad_cache`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch.optim.lr_scheduler import LambdaLR

from hbt.checkpointing import add_run_state, restore_rng
from hbt.compat import attached_trainer
from hbt.distributed import gather_plain, gather_with_grad, rank_and_world
from hbt.errors import ConfigError, TrainingDiverged
from hbt.grad_cache import GradCache
from hbt.loss import InfoNCELoss, duplicate_masks, row_keys
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
        grad_cache: GradCache | None = None,
        run_config: dict | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.grad_cache = grad_cache
        self.run_config = run_config  # the resolved run config, stored in checkpoints (hbt.checkpointing)
        self.pairs_seen: Counter[str] = Counter()
        self._unused_checked = False

    def contrastive_loss(self, queries: torch.Tensor, passages: torch.Tensor, negatives: torch.Tensor | None, keys: dict | None = None):
        """InfoNCE of local query embeddings against the passages (and hard negatives) of all ranks.
        With ``keys`` (``batch_keys``), duplicates of a query's positive are no negatives for it."""
        rank, _ = rank_and_world()
        candidates = gather_with_grad(passages)
        if negatives is not None:
            candidates = torch.cat([candidates, gather_with_grad(negatives)])
        targets = torch.arange(len(queries), device=queries.device) + rank * len(queries)
        all_queries = gather_with_grad(queries) if self.loss.symmetric else None
        masks = {}
        if keys is not None:
            query_keys, positive_keys = gather_plain(keys["query"]), gather_plain(keys["passage"])
            candidate_keys = torch.cat([positive_keys, gather_plain(keys["negatives"])]) if "negatives" in keys else positive_keys
            masks["mask"], back = duplicate_masks(query_keys, positive_keys, candidate_keys, targets)
            masks["back_mask"] = back if self.loss.symmetric else None
        return self.loss(queries, candidates, targets, all_queries, **masks)

    def batch_keys(self, batch: dict) -> dict | None:
        """Token-level keys of the batch's texts, for the duplicate masking (None when it is off)."""
        if not self.loss.mask_duplicates:
            return None
        return {kind: row_keys(batch[kind]) for kind in ("query", "passage", "negatives") if kind in batch}

    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """The loss of a batch (its ``backward`` gives the encoder's gradients, through GradCache's chunks
        when it is on), the loss's statistics and the query embeddings."""
        keys = self.batch_keys(batch)

        def loss_of(embeddings: dict[str, torch.Tensor]):
            return self.contrastive_loss(embeddings["query"], embeddings["passage"], embeddings.get("negatives"), keys)

        if self.grad_cache is not None:
            inputs = {kind: batch[kind] for kind in ("query", "passage", "negatives") if kind in batch}
            loss, stats, embeddings = self.grad_cache(self.encoder, inputs, loss_of)
            return loss, stats, embeddings["query"]
        queries = self.encoder(batch["query"])
        negatives = self.encoder(batch["negatives"]) if "negatives" in batch else None
        loss, stats = loss_of({"query": queries, "passage": self.encoder(batch["passage"]), "negatives": negatives})
        return loss, stats, queries

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, stats, queries = self.batch_loss(batch)
        if not torch.isfinite(loss):
            # Stop before the optimizer applies it; checkpoints written so far are left as they are.
            raise TrainingDiverged(self.trainer.global_step if attached_trainer(self) is not None else batch_idx, float(loss))
        self.log_step(batch, loss, stats, queries)
        return loss

    def on_after_backward(self) -> None:
        if not self._unused_checked:
            self.check_all_parameters_used()

    def check_all_parameters_used(self) -> None:
        """After the first backward: a trainable parameter without a gradient is one the embedding never
        uses. DDP without ``find_unused_parameters`` would fail on it at the next step with an internal
        message; here it is one line naming the parameters."""
        self._unused_checked = True
        if self._fsdp_root() is not None:
            # FSDP shards the gradients (a parameter outside this rank's shard has none here) and has no
            # trouble with unused parameters: there is nothing to check.
            return
        unused = [name for name, p in self.encoder.named_parameters() if p.requires_grad and p.grad is None]
        if unused:
            shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
            raise ConfigError(
                "model.name_or_path",
                f"{len(unused)} trainable parameters get no gradient from the embedding ({shown}); "
                "DDP needs every trainable parameter used: pick a pooling that uses them or freeze them",
            )

    def log_step(self, batch: dict, loss: torch.Tensor, stats: dict, queries: torch.Tensor) -> None:
        """The loss every step (progress bar); the other statistics only on the steps the loggers write,
        since Lightning's ``self.log`` costs about half a millisecond a call and would otherwise be
        paid on every step for values that are never written."""
        batch_size = len(queries)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        self.pairs_seen.update(batch["pairs"])
        if not self._writes_logs():
            return
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=batch_size)
        self.log("train/emb_std", queries.detach().std(0).mean(), batch_size=batch_size)
        self.log("train/mono_share", batch["monolingual"].float().mean(), batch_size=batch_size, sync_dist=True)

    def _writes_logs(self) -> bool:
        """Whether the loggers write this step's on-step metrics (Lightning's ``log_every_n_steps`` rule)."""
        if attached_trainer(self) is None:
            return True
        every = self.trainer.log_every_n_steps
        return bool(every) and ((self.trainer.global_step + 1) % every == 0 or self.trainer.should_stop)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Under FSDP, norm clipping goes through FSDP's own ``clip_grad_norm_`` (the norm over every
        rank's shard); Lightning's FSDP precision plugin refuses norm clipping outright. Under bf16-mixed
        nothing is scaled, so a fused optimizer's gradients are clipped as they are; Lightning's mixed
        plugin refuses fused optimizers for fp16's sake and is bypassed."""
        sharded = self._fsdp_root()
        if sharded is not None and gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm":
            sharded.clip_grad_norm_(gradient_clip_val)
            return
        plugin = self.trainer.precision_plugin if attached_trainer(self) is not None else None
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, GradClipAlgorithmType(gradient_clip_algorithm or "norm"))
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _fsdp_root(self):
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = self.trainer.strategy.model if attached_trainer(self) is not None else None
        return model if isinstance(model, FullyShardedDataParallel) else None

    def on_train_epoch_end(self) -> None:
        """Per epoch: share of monolingual pairs, distinct language pairs, and each query language's share."""
        total = sum(self.pairs_seen.values())
        if total:
            split = {pair: pair.split("-") for pair in self.pairs_seen}
            mono = sum(n for pair, n in self.pairs_seen.items() if split[pair][0] == split[pair][1])
            by_query_lang: Counter[str] = Counter()
            for pair, n in self.pairs_seen.items():
                by_query_lang[split[pair][0]] += n
            # Ranks draw the same batch types and languages, so the rank mean is the global share.
            self.log("train/epoch_mono_pair_share", mono / total, sync_dist=True)
            self.log("train/epoch_language_pairs_seen", float(len(self.pairs_seen)), sync_dist=True)
            # Key sets can differ across ranks (X-Y languages are drawn per example): rank zero's view only,
            # written to the loggers directly (an unsynced epoch-level self.log warns once per key under DDP).
            shares = {f"train/query_lang_share/{lang}": n / total for lang, n in sorted(by_query_lang.items())}
            if self.trainer.is_global_zero:
                for logger in self.loggers:
                    logger.log_metrics(shares, step=self.trainer.global_step)
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
        add_run_state(checkpoint, self.run_config)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_rng(checkpoint)
