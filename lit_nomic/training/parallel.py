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
def grad_norm(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of DTensor (sharded) and plain (replicated) gradients together, on the device.

    torchtitan's recipe: per group of DTensor gradients with the same mesh and placements, the sum
    of squares of the *local* shards (one fused ``_foreach_norm``), all-reduced once over each mesh
    dimension the group is sharded on (replicated dimensions hold copies and are not summed); plain
    gradients are identical on every rank and added locally. Nothing is copied to the host and no
    full tensor is gathered. A 0-d float32 tensor on the gradients' device (zero without gradients).
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    groups: dict[tuple[Any, ...], list[torch.Tensor]] = {}
    plain: list[torch.Tensor] = []
    meshes: dict[tuple[Any, ...], tuple[Any, Any]] = {}
    for g in grads:
        if isinstance(g, DTensor):
            key = (id(g.device_mesh), tuple(g.placements))
            groups.setdefault(key, []).append(g.to_local())
            meshes[key] = (g.device_mesh, g.placements)
        else:
            plain.append(g)
    device = (next(iter(groups.values()))[0] if groups else plain[0]).device
    total = torch.zeros((), dtype=torch.float32, device=device)
    for key, local in groups.items():
        squares = _sum_of_squares(local, device)
        mesh, placements = meshes[key]
        for dim, placement in enumerate(placements):
            if placement.is_shard():
                dist.all_reduce(squares, op=dist.ReduceOp.SUM, group=mesh.get_group(dim))
            elif placement.is_partial():
                raise ValueError(
                    f"grad_norm: a gradient with a Partial placement {placements} is not reduced yet"
                )
        total += squares
    if plain:
        total += _sum_of_squares(plain, device)
    return total.sqrt()


def _sum_of_squares(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)  # fp32 accumulation for bf16 grads
    return torch.stack([n.to(device) for n in norms]).square().sum()


@torch.no_grad()
def clip_grads_with_norm(params: Iterable[nn.Parameter], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale every gradient by ``min(1, max_norm / (total_norm + 1e-6))`` on the device (no host sync);
    DTensor gradients are scaled through their local shards."""
    from torch.distributed.tensor import DTensor

    if max_norm == float("inf"):
        return
    grads = [
        p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params if p.grad is not None
    ]
    if not grads:
        return
    coef = (float(max_norm) / (total_norm.float() + 1e-6)).clamp(max=1.0)
    by_device: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault((g.device, g.dtype), []).append(g)
    for (dev, _), group in by_device.items():
        torch._foreach_mul_(group, coef.to(dev))


@torch.no_grad()
def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip by the global L2 norm of DTensor (sharded) and plain (replicated) gradients together.

    ``torch.nn.utils.clip_grad_norm_`` refuses to stack norms of DTensors and plain tensors; here the
    norm is :func:`grad_norm` (one all-reduce, no host copies) and the scaling happens on the device.
    Returns the norm before clipping (a 0-d device tensor).
    """
    params = list(params)
    total = grad_norm(params)
    clip_grads_with_norm(params, max_norm, total)
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
