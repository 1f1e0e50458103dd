"""Gradient clipping under FSDP2 reduces the norm once, DTensor-aware, with no host copies.

Two gloo processes hold Shard(0) DTensor gradients plus one replicated plain gradient (the learned
temperature); the global norm and the clipped gradients must equal the single-process computation.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lit_nomic.training.parallel import clip_grad_norm, grad_norm


def _full_grads() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(6, 3, generator=g), torch.randn(4, generator=g), torch.randn((), generator=g)]


def _worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        full = _full_grads()
        params = []
        for i, g in enumerate(full):
            if i < 2:  # sharded like fully_shard's parameters
                p = nn.Parameter(distribute_tensor(torch.zeros_like(g), mesh, [Shard(0)]))
                p.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            else:  # 0-d: replicated, a plain tensor on every rank
                p = nn.Parameter(torch.zeros_like(g))
                p.grad = g.clone()
            params.append(p)
        calls = []
        real = dist.all_reduce
        dist.all_reduce = lambda *a, **k: (calls.append(1), real(*a, **k))[1]  # type: ignore[assignment]
        try:
            norm = grad_norm(params)
            total = clip_grad_norm(params, max_norm=1.0)
        finally:
            dist.all_reduce = real  # type: ignore[assignment]
        clipped = [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad for p in params]
        if rank == 0:
            torch.save({"norm": norm, "total": total, "clipped": clipped, "calls": len(calls)}, result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")
def test_fsdp2_clip_grad_norm_matches_one_process() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "result.pt")
        mp.spawn(_worker, args=(2, init_file, result_file), nprocs=2, join=True)
        got = torch.load(result_file)
    full = _full_grads()
    expected = torch.sqrt(sum(g.square().sum() for g in full))
    torch.testing.assert_close(got["norm"], expected)
    torch.testing.assert_close(got["total"], expected)
    assert got["calls"] == 2  # one all-reduce per norm (grad_norm, then clip_grad_norm), none per parameter
    coef = 1.0 / (float(expected) + 1e-6)
    for a, g in zip(got["clipped"], full, strict=True):
        torch.testing.assert_close(a, g * coef)


def test_plain_gradients_without_a_process_group() -> None:
    params = [
        nn.Parameter(torch.zeros(3)),
        nn.Parameter(torch.zeros(2, 2, dtype=torch.bfloat16)),
        nn.Parameter(torch.zeros(1)),
    ]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.full((2, 2), 2.0, dtype=torch.bfloat16)
    norm = clip_grad_norm(params, max_norm=100.0)  # no clipping: gradients untouched
    torch.testing.assert_close(norm, torch.tensor(5.0))
    assert torch.equal(params[0].grad, torch.tensor([3.0, 0.0, 0.0]))
    clip_grad_norm(params, max_norm=1.0)
    torch.testing.assert_close(params[0].grad, torch.tensor([0.6, 0.0, 0.0]), rtol=1e-5, atol=1e-6)
    assert float(grad_norm([nn.Parameter(torch.zeros(1))])) == 0.0
