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
    (the backward sums each slice's gradient over ranks). Every rank passes the same shape."""
    _, world = rank_and_world()
    if world == 1:
        return x
    return _GatherWithGrad.apply(x)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather with a backward: torch's own (``torch.distributed.nn.functional.all_gather``) is
    deprecated for a private module's, so this one uses the public collectives. The backward all-reduces
    the whole gathered gradient and keeps this rank's slice: for the embeddings of a batch (kilobytes to
    a few megabytes) the extra traffic over a reduce-scatter is negligible, and gloo has no reduce-scatter."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = rank_and_world()
        ctx.rows = (rank * x.shape[0], (rank + 1) * x.shape[0])
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, stop = ctx.rows
        return grad[start:stop]


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
