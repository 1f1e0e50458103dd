"""all_gather_with_grad outside a process group: identity, gradients untouched (2-rank checks: test_objectives_distributed)."""

from __future__ import annotations

import torch

from lit_nomic.objectives import all_gather_with_grad, all_gather_with_sizes, rank_and_world_size


def test_identity_without_process_group() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    gathered, sizes = all_gather_with_sizes(x)
    assert gathered is x and sizes == [3]
    assert rank_and_world_size() == (0, 1)
    (all_gather_with_grad(x) * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3, 4), 2.0))


def test_integer_tensors_pass_through() -> None:
    ids = torch.tensor([3, 1, 3])
    assert torch.equal(all_gather_with_grad(ids), ids)
