"""Cross-rank gathering that keeps gradients, so contrastive negatives can span every rank.

Large-batch contrastive training (CLIP, Radford et al. 2021; Nomic Embed, Nussbaum et al. 2024)
gets its negatives from *all* data-parallel ranks without a gradient cache: every rank gathers
the other ranks' embeddings and scores its own queries against the global batch. For the
gradients to be those of the global batch, the gathered copy of rank ``r``'s slice must send the
gradient that *every* rank computed for it back to rank ``r``. Hence the backward here is

    grad(x_r) = sum over ranks s of  d L_s / d gathered[offset_r : offset_r + n_r]

i.e. an all-reduce (SUM) of the incoming gradient followed by taking this rank's slice. Combined
with the usual gradient averaging of DDP/FSDP2, that yields the single-process gradient of the
global batch (see :mod:`lit_nomic.objectives.infonce` for the bookkeeping).

``torch.distributed.nn.functional.all_gather`` does the same but is deprecated, needs equal shapes
on all ranks and relies on all-to-all, which not every backend offers. This module uses only
``all_gather`` and ``all_reduce`` (supported by gloo, NCCL and others) and allows ranks to hold a
different number of rows (the last, smaller batch of an epoch), which it handles by padding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_gather_with_grad", "all_gather_with_sizes", "is_distributed", "rank_and_world_size"]


def is_distributed(group: Any = None) -> bool:
    """True when a process group is initialised and has more than one member."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_and_world_size(group: Any = None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when not distributed, so callers need no branches."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _gather_shapes(x: torch.Tensor, group: Any, world: int) -> list[torch.Size]:
    """Exchange shapes first: mismatched trailing dims would otherwise hang or crash inside the backend."""
    # Encode rank (ndim) in the message so ranks with different ndims fail loudly, not silently.
    max_ndim = 8
    if x.ndim == 0 or x.ndim > max_ndim:
        raise ValueError(
            f"all_gather_with_grad needs a tensor with 1..{max_ndim} dims, got shape {tuple(x.shape)}"
        )
    local = torch.full((max_ndim + 1,), -1, dtype=torch.int64, device=x.device)
    local[0] = x.ndim
    local[1 : 1 + x.ndim] = torch.tensor(x.shape, dtype=torch.int64)
    shapes = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(shapes, local, group=group)
    result = [torch.Size(s[1 : 1 + int(s[0])].tolist()) for s in shapes]
    reference = result[0]
    for rank, shape in enumerate(result):
        if len(shape) != len(reference) or shape[1:] != reference[1:]:
            raise ValueError(
                f"all_gather_with_grad: rank {rank} holds shape {tuple(shape)} but rank 0 holds "
                f"{tuple(reference)}; only the first (batch) dimension may differ across ranks"
            )
    return result


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's rows in rank order. Backward: sum over ranks, keep own rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.group = group
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        x = x.contiguous()
        max_rows = max(sizes)
        if x.shape[0] < max_rows:  # gloo/NCCL all_gather need equal shapes: pad, then trim.
            pad = x.new_zeros((max_rows - x.shape[0], *x.shape[1:]))
            x = torch.cat([x, pad], dim=0)
        parts = [torch.empty_like(x) for _ in sizes]
        dist.all_gather(parts, x, group=group)
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)], dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        # Every rank holds a gradient for the whole gathered tensor; rank r's rows must receive the sum.
        # all_reduce + slice moves world-times more bytes than reduce_scatter, but is supported by every
        # backend and these are [global batch, dim] embedding gradients, tiny next to parameter syncs.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start : ctx.stop], None, None, None


def all_gather_with_sizes(x: torch.Tensor, group: Any = None) -> tuple[torch.Tensor, list[int]]:
    """Gather ``x`` from all ranks along dim 0 (rank order) with gradients; also return each rank's row count.

    The row counts let callers offset labels by the rows of earlier ranks and weight per-rank losses
    when batches are uneven. Identity (and ``[len(x)]``) when not distributed. Integer tensors
    (e.g. document ids) are gathered the same way and simply carry no gradient.
    """
    if not is_distributed(group):
        return x, [int(x.shape[0])]
    rank, world = rank_and_world_size(group)
    sizes = [int(s[0]) for s in _gather_shapes(x, group, world)]
    return _AllGatherWithGrad.apply(x, group, sizes, rank), sizes


def all_gather_with_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Concatenate ``x`` from all ranks in rank order; backward sums incoming gradients over ranks.

    Identity when ``torch.distributed`` is not initialised or has a single rank. Ranks may differ in
    the first dimension only; a mismatch elsewhere raises ``ValueError`` naming the rank.
    """
    return all_gather_with_sizes(x, group)[0]
