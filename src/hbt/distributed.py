"""Cross-rank helpers that keep gradients, so N ranks x B pairs optimise like one process with N*B."""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order; gradients flow back to each rank's copy
    (the backward of ``all_gather`` sums each slice's gradient over ranks)."""
    _, world = rank_and_world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))


def average_gradients(parameters) -> None:
    """All-reduce ``.grad`` to the mean over ranks (what DDP does in backward)."""
    _, world = rank_and_world()
    if world == 1:
        return
    for param in parameters:
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(world)


def gather_plain(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order, without gradients (keys, ids)."""
    _, world = rank_and_world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
