"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"):
the loss and gradients of a whole batch at the memory of one chunk, as part of the loss computation.

The batch is embedded chunk by chunk without a graph (its rows sorted by length, so each chunk is padded
only to its own longest row); the contrastive loss of the whole batch gives the
gradient with respect to each embedding, which is kept; the loss comes back as a leaf tensor with a
backward hook. When the trainer calls ``backward`` on it (Lightning's own step: its optimizer, clipping,
gradient accumulation and precision plugins, untouched), the hook encodes each chunk again, with a graph
and the RNG state of the first pass (the same dropout masks), and pushes the kept gradients through it,
scaled by the gradient the trainer sent (1 / accumulation, an fp16 loss scale). The idea is the one
sentence-transformers' cached losses use.

DDP's gradient synchronisation is why one detail differs from a plain backward per chunk. DDP prepares
its reducer in the forward and expects each parameter's gradient to arrive exactly once per backward;
a second chunk's backward would hand it a parameter again. So, when more than one process trains, every
chunk but the last puts its gradients into ``.grad`` through ``torch.autograd.grad`` (no hooks fire) and
the last chunk runs a plain backward, which fires DDP's hooks once, with ``.grad`` already holding the
whole batch's sum: DDP averages and overlaps its all-reduce as usual. The price is one transient
gradient-sized buffer per chunk under DDP. (FSDP reduces gradients inside every backward and is refused
with GradCache: :mod:`hbt.plan`.)

:class:`GradCache` takes the encoder and a loss over embeddings; it knows nothing else of the
LightningModule or of Lightning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hbt.distributed import rank_and_world
from hbt.errors import ConfigError

Embeddings = dict[str, torch.Tensor]
LossFn = Callable[[Embeddings], tuple[torch.Tensor, dict]]


class GradCache:
    def __init__(self, chunk_size: int):
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ConfigError("grad_cache.chunk_size", f"must be an integer >= 1 (or null to turn GradCache off), got {chunk_size!r}")
        self.chunk_size = chunk_size

    def __call__(
        self, encoder: nn.Module, inputs: dict[str, dict[str, torch.Tensor]], loss_fn: LossFn
    ) -> tuple[torch.Tensor, dict, Embeddings]:
        """``inputs``: tokenized texts by kind (query, passage, negatives); ``loss_fn``: the loss of their
        embeddings. Returns the loss (its ``backward`` computes the encoder's gradients, chunk by chunk),
        the loss's statistics and the embeddings (without a graph)."""
        orders, chunks = {}, {}
        for kind, batch in inputs.items():
            orders[kind], chunks[kind] = self.chunks(batch)
        rng_states: dict[str, list] = {}
        embeddings: Embeddings = {}
        with torch.no_grad():
            for kind, parts in chunks.items():
                rng_states[kind] = []
                encoded = []
                for chunk in parts:
                    rng_states[kind].append(_rng_state())
                    encoded.append(encoder(chunk))
                # Back in the batch's own row order, which the loss pairs queries and passages by.
                embeddings[kind] = torch.cat(encoded)[torch.argsort(orders[kind])].requires_grad_()
        with torch.enable_grad():
            loss, stats = loss_fn(embeddings)
        detached = {kind: e.detach() for kind, e in embeddings.items()}
        if not torch.is_grad_enabled():
            return loss.detach(), stats, detached
        kinds = list(embeddings)
        # The loss's gradient w.r.t. every embedding, now: its graph may hold collectives (the passages
        # gathered across ranks), which every rank runs here, in step.
        grads = dict(zip(kinds, torch.autograd.grad(loss, [embeddings[k] for k in kinds])))
        grads = {kind: grad[orders[kind]] for kind, grad in grads.items()}  # in the chunks' row order
        out = loss.detach().requires_grad_()
        out.register_hook(lambda scale: self._replay(encoder, chunks, rng_states, grads, scale))
        return out, stats, detached

    def chunks(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """The rows sorted by length, longest first (``order``: the batch's row of each sorted row), and
        cut into chunks of ``chunk_size``, each padded only to its own longest row: little of a chunk is
        padding, whatever the batch's lengths. The loss is over the whole batch, so the order of the
        chunks changes nothing but the padding."""
        order = torch.argsort(inputs["attention_mask"].sum(1), descending=True, stable=True)
        return order, split_inputs({key: value[order] for key, value in inputs.items()}, self.chunk_size)

    def _replay(self, encoder: nn.Module, chunks: dict, rng_states: dict, grads: Embeddings, scale: torch.Tensor) -> None:
        """The backward hook: each chunk encoded again with the first pass's RNG state, and the cached
        gradient (times ``scale``) pushed through it into the parameters' ``.grad``."""
        jobs = [
            (chunk, state, grad * scale)
            for kind in chunks
            for chunk, state, grad in zip(chunks[kind], rng_states[kind], grads[kind].split(self.chunk_size))
        ]
        _, world = rank_and_world()
        params = [p for p in encoder.parameters() if p.requires_grad] if world > 1 else []
        with torch.enable_grad():
            for n, (chunk, state, grad) in enumerate(jobs):
                _set_rng_state(state)
                embedded = encoder(chunk)
                if world == 1 or n == len(jobs) - 1:
                    embedded.backward(grad)
                    continue
                for param, g in zip(params, torch.autograd.grad(embedded, params, grad, allow_unused=True)):
                    if g is None:
                        continue
                    if param.grad is None:
                        param.grad = g
                    else:
                        param.grad += g


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
