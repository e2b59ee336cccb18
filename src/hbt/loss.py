"""InfoNCE over cosine similarity with in-batch (and optional hard) negatives.

Temperature 0.05 by default: inputs are unit vectors, so logits lie in [-1/t, 1/t] = [-20, 20], wide
enough for a sharp softmax without the instability of very small temperatures (mE5 used 0.01 at much
larger batch sizes; mContriever 0.05).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from hbt.errors import ConfigError


class InfoNCELoss(nn.Module):
    """Cross-entropy of each query against its positive among all candidates (GradCache, which computes
    this loss for a batch encoded in chunks, is :mod:`hbt.grad_cache`)."""

    def __init__(self, temperature: float = 0.05, symmetric: bool = False, mask_duplicates: bool = True, margin: float = 0.0):
        super().__init__()
        self.mask_duplicates = mask_duplicates
        if temperature <= 0:
            raise ConfigError("loss.temperature", f"must be > 0, got {temperature}")
        # Cosines lie in [-1, 1]: a margin of 2 or more would rank every positive below every negative.
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < 2:
            raise ConfigError("loss.margin", f"must be in [0, 2) (cosine similarity), got {margin!r}")
        self.temperature = temperature
        self.symmetric = symmetric
        self.margin = float(margin)

    def forward(
        self,
        queries: torch.Tensor,
        passages: torch.Tensor,
        targets: torch.Tensor,
        all_queries: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        back_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``queries`` [B, d] score against ``passages`` [P, d] (positives, in-batch and hard negatives);
        ``targets`` [B] holds each query's positive row. With ``symmetric``, positives also retrieve their
        query among ``all_queries`` (the gathered queries; defaults to ``queries``). ``mask`` [B, P] and
        ``back_mask`` [B, len(all_queries)] mark candidates that are no negatives (duplicates of the
        positive, see ``duplicate_masks``); they are left out of the softmax. With ``margin`` m (LaBSE's
        additive-margin softmax), each positive's cosine enters the softmax as cos - m, in both directions;
        the statistics are those of the plain cosines."""
        logits = queries @ passages.T / self.temperature
        sims = logits.detach() * self.temperature
        if self.margin:
            logits = logits - self._margin_at(logits, targets)
        if mask is not None:
            logits = logits.masked_fill(mask, float("-inf"))
        loss = F.cross_entropy(logits, targets)
        if self.symmetric:
            all_queries = queries if all_queries is None else all_queries
            # Positives come first in ``passages``, row-aligned with ``all_queries``: the target is the same row.
            back = passages[targets] @ all_queries.T / self.temperature
            if self.margin:
                back = back - self._margin_at(back, targets)
            if back_mask is not None:
                back = back.masked_fill(back_mask, float("-inf"))
            loss = (loss + F.cross_entropy(back, targets)) / 2
        with torch.no_grad():
            if self.margin:
                logits = logits + self._margin_at(logits, targets)  # accuracy on the plain cosines
            positive = sims.gather(1, targets[:, None]).squeeze(1)
            negative = torch.ones_like(sims, dtype=torch.bool).scatter_(1, targets[:, None], False)
            if mask is not None:
                negative &= ~mask
            stats = {
                "accuracy": (logits.argmax(-1) == targets).float().mean(),
                "pos_sim": positive.mean(),
                "neg_sim": ((sims * negative).sum(-1) / negative.sum(-1).clamp(min=1)).mean(),
                "masked": mask.sum().float() if mask is not None else torch.zeros((), device=sims.device),
            }
        return loss, stats

    def _margin_at(self, like: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """margin / temperature at each row's target column, zero elsewhere (shaped and typed as ``like``)."""
        at = torch.zeros_like(like)
        return at.scatter_(1, targets[:, None], self.margin / self.temperature)


def row_keys(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One int64 key per tokenized text: equal texts (same tokens) get equal keys. The token ids under the
    attention mask weighted by position (powers of 1,000,003 modulo 2^31 - 1): ids < 2^20 and 512
    positions keep every sum below 2^60, so nothing overflows."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    return (ids * mask * _position_powers(ids.shape[1], ids.device)).sum(1)


@functools.lru_cache(maxsize=64)
def _position_powers(width: int, device: torch.device) -> torch.Tensor:
    """1,000,003^i mod 2^31 - 1 for positions i < width, made once per width and device (a copy to a
    GPU at every step would wait for the work queued before it)."""
    powers, value = [], 1
    for _ in range(width):
        powers.append(value)
        value = value * 1_000_003 % 2_147_483_647
    return torch.tensor(powers, dtype=torch.long, device=device)


def duplicate_masks(
    query_keys: torch.Tensor, positive_keys: torch.Tensor, candidate_keys: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which candidates are no negatives for each local query, and which queries are no negatives for
    each local positive (the symmetric direction).

    ``query_keys`` / ``positive_keys`` [N]: the gathered global batch (row r: item r's query and positive);
    ``candidate_keys`` [P]: the candidates' keys (the N positives, then any hard negatives);
    ``targets`` [B]: each local query's row among the N. For query g, its *related* items are g and
    every item with the same query text (mMARCO keys items by query and positive). A candidate is masked
    when it is the positive of a related item, or its text equals the positive of a related item (a
    duplicate passage in the batch, or a hard negative equal to it); the target itself never is.
    """
    same_query = query_keys[targets][:, None] == query_keys[None, :]  # [B, N]: related items
    # Equal text to a related item's positive: to the query's own positive for every row at once; then,
    # for the rare items related through an equal query text, in blocks of pairs (a few kernels each, a
    # block's comparisons bounded to 2^24 elements) instead of a loop over every related pair.
    mask = candidate_keys[None, :] == positive_keys[targets][:, None]
    mask[:, : len(positive_keys)] |= same_query  # the positive column of a related item, whatever its text
    others = same_query.clone()
    others[torch.arange(len(targets), device=others.device), targets] = False
    rows, items = others.nonzero(as_tuple=True)
    block = max(1, 2**24 // max(1, len(candidate_keys)))
    for start in range(0, len(rows), block):
        equal = candidate_keys[None, :] == positive_keys[items[start : start + block]][:, None]
        hits = torch.zeros(mask.shape, dtype=torch.int32, device=mask.device).index_add_(0, rows[start : start + block], equal.int())
        mask |= hits > 0
    mask[torch.arange(len(targets), device=mask.device), targets] = False
    same_positive = positive_keys[targets][:, None] == positive_keys[None, :]
    back = same_query | same_positive  # queries whose positive is this passage (or that share the query)
    back[torch.arange(len(targets), device=back.device), targets] = False
    return mask, back
