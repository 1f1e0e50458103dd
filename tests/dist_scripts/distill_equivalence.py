"""Two gloo processes must reproduce the single-process distillation loss and gradients of the global batch.

The plan, the toy batch and the module are ``distill_common``'s. Here the two processes run as DDP
does: each backpropagates its share of the batch (3/3, then 4/2 rows; cosine, then mse embedding
matching) and loss and gradients are averaged over ranks. Rank 0 prints one line:

    OK cases=<n> max_loss_diff=<x> max_grad_diff=<y>
    FAIL <case>: ...

Run directly (``python distill_equivalence.py``) or from ``tests/test_distill.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import distill_common as common
import torch.distributed as dist

from lit_nomic.training.module import ContrastiveModule

CASES = [("even", "cosine"), ("uneven", "mse")]


def average_gradients(module: ContrastiveModule) -> None:
    """What DDP does after backward: every gradient becomes the mean over ranks."""
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def reference() -> dict[str, common.Result]:
    return {f"{s}-{m}": common.step(common.build(m), common.pairs()) for s, m in CASES}


def worker(
    rank: int, world: int, expected: dict[str, common.Result], folder: Path
) -> tuple[list[str], common.Tally]:
    tally = common.Tally()
    for split, metric in CASES:
        result = common.step(common.build(metric), common.share(split, rank), sync=average_gradients)
        tally.compare(f"{split}-{metric}", result, expected[f"{split}-{metric}"])
    return tally.failures + tally.gradient_failures(), tally


if __name__ == "__main__":
    sys.exit(common.run(reference, worker, len(CASES)))
