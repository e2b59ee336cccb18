"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"):
the loss and gradients of a whole batch at the memory of one chunk.

The batch is embedded chunk by chunk without a graph; the contrastive loss of the whole batch gives the
gradient with respect to each embedding; each chunk is then encoded again, with a graph, and that gradient
pushed through it. Configured as ``grad_cache.chunk_size`` (null: off). It steps the optimizer itself
(Lightning's manual optimization), so it also owns gradient clipping: ``trainer.gradient_clip_val`` is
handed to it and taken off the Trainer, which refuses clipping under manual optimization.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from hbt.distributed import average_gradients
from hbt.errors import ConfigError

if TYPE_CHECKING:
    from hbt.module import RetrieverModule


class GradCache:
    def __init__(self, chunk_size: int, gradient_clip_val: float | None = None):
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ConfigError("grad_cache.chunk_size", f"must be an integer >= 1 (or null to turn GradCache off), got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.gradient_clip_val = gradient_clip_val

    @classmethod
    def from_config(cls, cfg: DictConfig) -> GradCache | None:
        """The run's GradCache (None when ``grad_cache.chunk_size`` is null), with the trainer's clipping."""
        chunk = (cfg.get("grad_cache") or {}).get("chunk_size")
        if chunk is None:
            return None
        return cls(chunk, cfg.trainer.get("gradient_clip_val"))

    def backward(self, module: RetrieverModule, batch: dict) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Embed without a graph, take the loss's gradient w.r.t. the embeddings, then re-encode chunk by
        chunk with a graph and push those gradients through, accumulating parameter gradients. RNG states
        are replayed so dropout masks match the first pass. DDP's own gradient sync is held off (the
        caller averages gradients once). Returns the loss, its statistics and the query embeddings."""
        encoder = module.encoder
        kinds = ["query", "passage"] + (["negatives"] if "negatives" in batch else [])
        chunks = {kind: split_inputs(batch[kind], self.chunk_size) for kind in kinds}
        rng_states, embeddings = {}, {}
        with torch.no_grad():
            for kind in kinds:
                rng_states[kind], parts = [], []
                for chunk in chunks[kind]:
                    rng_states[kind].append(_rng_state())
                    parts.append(encoder(chunk))
                embeddings[kind] = torch.cat(parts).requires_grad_()
        loss, stats = module.contrastive_loss(
            embeddings["query"], embeddings["passage"], embeddings.get("negatives"), module.batch_keys(batch)
        )
        loss.backward()
        strategy = module._trainer.strategy if module._trainer is not None else None
        with strategy.block_backward_sync() if hasattr(strategy, "block_backward_sync") else nullcontext():
            for kind in kinds:
                grads = embeddings[kind].grad.split(self.chunk_size)
                for chunk, state, grad in zip(chunks[kind], rng_states[kind], grads):
                    _set_rng_state(state)
                    encoder(chunk).backward(grad)
        return loss.detach(), stats, embeddings["query"].detach()

    def step(self, module: RetrieverModule, batch: dict) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """One optimizer step (manual optimization): gradients of the whole batch, averaged across ranks
        once, clipped, applied; the learning-rate schedule advanced."""
        optimizer = module.optimizers()
        optimizer.zero_grad()
        loss, stats, queries = self.backward(module, batch)
        module.check_gradients_once()
        average_gradients(module.encoder.parameters())
        if self.gradient_clip_val:
            module.configure_gradient_clipping(optimizer, self.gradient_clip_val, "norm")
        optimizer.step()
        scheduler = module.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return loss, stats, queries


def split_inputs(inputs: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """Chunks of ``size`` rows, each cut to its own longest row (right padding: what is cut is padding)."""
    keys = list(inputs)
    chunks = [dict(zip(keys, parts)) for parts in zip(*(inputs[k].split(size) for k in keys))]
    for chunk in chunks:
        width = int(chunk["attention_mask"].sum(1).max()) if chunk["attention_mask"].numel() else 0
        for key in keys:
            chunk[key] = chunk[key][:, : max(width, 1)]
    return chunks


def _rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])
