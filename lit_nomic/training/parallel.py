"""FSDP2 sharding applied from outside the model (torchtitan's separation of model and parallelism).

Each transformer block becomes one FSDP2 unit (its parameters are all-gathered just before it runs and
freed after), then the root module takes the rest (embeddings, final norm). The same code runs on
CPU/gloo in CI and on multi-node GPUs; only the mesh differs.

The root must be a module whose ``forward`` the training step actually calls (FSDP2 unshards the
root's own parameters in a forward pre-hook): the LightningModule itself does not qualify, because
Lightning calls ``training_step``, never its ``forward``. FSDP2 cannot shard 0-d parameters (the
learned log temperature), so those stay replicated and :func:`all_reduce_gradients` averages their
gradients over the data-parallel group, as DDP would; :func:`clip_grad_norm` then clips the mix of
sharded and replicated gradients by one global norm.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def apply_fsdp2(
    root: nn.Module,
    blocks: Iterable[nn.Module],
    mesh: Any,
    param_dtype: torch.dtype = torch.float32,
    reduce_dtype: torch.dtype = torch.float32,
    reshard_after_forward: bool = True,
) -> None:
    """Shard ``blocks`` one by one, then ``root``, with a mixed-precision policy.

    ``param_dtype=bfloat16`` with ``reduce_dtype=float32`` is the GPU recipe: compute in bf16, reduce
    gradients in fp32 so that small per-rank contributions survive the sum.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(root, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def all_reduce_gradients(params: Iterable[nn.Parameter], group: Any = None) -> None:
    """Average the gradients of replicated (unsharded) parameters over ``group`` (SUM / size: gloo has no AVG)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size(group)
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)
            p.grad.div_(world)


@torch.no_grad()
def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip by the global L2 norm of DTensor (sharded) and plain (replicated) gradients together.

    ``torch.nn.utils.clip_grad_norm_`` refuses to stack norms of DTensors and plain tensors; here each
    sharded norm is reduced to a full (replicated) value first. Returns the norm before clipping.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    squares = []
    for g in grads:
        norm = torch.linalg.vector_norm(g, 2, dtype=torch.float32)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        squares.append(norm.square().to("cpu"))
    total = torch.stack(squares).sum().sqrt()
    coef = float(max_norm) / (float(total) + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU (a collective under FSDP2: call it on every rank).

    Under FSDP2 only rank 0 receives the tensors (the others get an empty dict); unsharded modules
    return their own tensors, detached and on CPU.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if is_sharded(module):
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(module, options=options)
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}
