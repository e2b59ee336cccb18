"""InfoNCE over cosine similarity with in-batch (and optional hard) negatives.

Temperature 0.05 by default: inputs are unit vectors, so logits lie in [-1/t, 1/t] = [-20, 20], wide
enough for a sharp softmax without the instability of very small temperatures (mE5 used 0.01 at much
larger batch sizes; mContriever 0.05).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hbt.errors import ConfigError


class InfoNCELoss(nn.Module):
    """``chunk_size`` turns on GradCache: the batch is encoded ``chunk_size`` texts at a time, so
    memory stays that of one chunk while the loss and gradients are those of the whole batch."""

    def __init__(self, temperature: float = 0.05, symmetric: bool = False, chunk_size: int | None = None):
        super().__init__()
        if temperature <= 0:
            raise ConfigError("loss.temperature", f"must be > 0, got {temperature}")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError("loss.chunk_size", f"must be >= 1 (or null to turn GradCache off), got {chunk_size}")
        self.temperature = temperature
        self.symmetric = symmetric
        self.chunk_size = chunk_size

    def forward(
        self, queries: torch.Tensor, passages: torch.Tensor, targets: torch.Tensor, all_queries: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``queries`` [B, d] score against ``passages`` [P, d] (positives, in-batch and hard negatives);
        ``targets`` [B] holds each query's positive row. With ``symmetric``, positives also retrieve their
        query among ``all_queries`` (the gathered queries; defaults to ``queries``)."""
        logits = queries @ passages.T / self.temperature
        loss = F.cross_entropy(logits, targets)
        if self.symmetric:
            all_queries = queries if all_queries is None else all_queries
            # Positives come first in ``passages``, row-aligned with ``all_queries``: the target is the same row.
            back = passages[targets] @ all_queries.T / self.temperature
            loss = (loss + F.cross_entropy(back, targets)) / 2
        with torch.no_grad():
            sims = logits * self.temperature
            positive = sims.gather(1, targets[:, None]).squeeze(1)
            stats = {
                "accuracy": (logits.argmax(-1) == targets).float().mean(),
                "pos_sim": positive.mean(),
                "neg_sim": ((sims.sum(-1) - positive) / max(sims.shape[1] - 1, 1)).mean(),
            }
        return loss, stats
