"""Under FSDP2 the teacher is sharded like the student, and the distillation step equals one process's.

The plan, the toy batch and the module are ``distill_common``'s. Here each of the two gloo processes
shards the module as ``ModelParallelStrategy`` does (a 1-D ``data_parallel`` CPU mesh handed to
``ContrastiveModule.configure_model``: student *and* teacher under ``fully_shard``) before its step;
FSDP2 reduce-scatters the student's gradients, the replicated projection is all-reduced by
``on_before_optimizer_step``, and the mean loss over ranks and the full gradients are compared with
the single-process values. One case keeps ``teacher_sharding: replicate``.

Each rank must hold only its own shard of every teacher weight after a step (the root included:
the teacher reshards after each forward), and the teacher must stay out of the student's state dict.

Last, the teacher-embedding cache under the sharded teacher: a first step fills a shared folder, a
second identical step runs no teacher forward on either rank and gives bit-identical losses and
gradients, and a step where only rank 1 sees new texts runs the teacher on *both* ranks (its forward
is a collective) instead of hanging.

Rank 0 prints one line per check, ``OK`` last:

    SHARDS teacher_params=<n> local=<rank 0 elements> full=<all elements>
    CACHE forwards=<first>,<second>,<mixed>
    OK cases=<n> max_loss_diff=<x> max_grad_diff=<y>
    FAIL <what>: ...

Run directly (``python distill_fsdp2.py``) or from ``tests/test_distill.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import distill_common as common
import torch
import torch.distributed as dist

from lit_nomic.data.records import TrainingPair
from lit_nomic.training.module import ContrastiveModule

CASES = [("even", "cosine", "auto"), ("uneven", "mse", "auto"), ("even", "cosine", "replicate")]


def shard(module: ContrastiveModule) -> None:
    """What Lightning's ModelParallelStrategy does before the first step: a mesh, then configure_model."""
    from torch.distributed.device_mesh import init_device_mesh

    module._device_mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("data_parallel",))
    module.configure_model()


def step(module: ContrastiveModule, rows: list[TrainingPair]) -> common.Result:
    """Under FSDP2 the global-batch values; the replicated projection is all-reduced as Lightning would."""
    return common.step(module, rows, sync=lambda m: m.on_before_optimizer_step(None))  # type: ignore[arg-type]


def reference() -> dict[str, common.Result]:
    return {metric: step(common.build(metric), common.pairs()) for _, metric, _ in CASES}


def expected_rows(length: int, rank: int, world: int) -> int:
    """Rows of a dim-0 length that FSDP2 (torch.chunk semantics) gives ``rank``."""
    chunks = torch.arange(length).chunk(world)
    return len(chunks[rank]) if rank < len(chunks) else 0


def check_shards(module: ContrastiveModule, rank: int, world: int) -> tuple[list[str], int, int]:
    """Failures, this rank's teacher elements and the teacher's full element count."""
    from torch.distributed.tensor import DTensor

    failures = []
    local = full = 0
    teacher = module.distiller.teacher  # type: ignore[union-attr]
    for name, p in teacher.named_parameters():
        if not isinstance(p, DTensor):
            failures.append(f"teacher {name} is not sharded after a step ({type(p).__name__})")
            continue
        shard = p.to_local()
        rows = expected_rows(p.shape[0], rank, world)
        if shard.shape[0] != rows or shard.shape[1:] != p.shape[1:]:
            failures.append(f"teacher {name}: local {tuple(shard.shape)} for full {tuple(p.shape)}")
        if p.requires_grad or p.grad is not None:
            failures.append(f"teacher {name} is trainable or has a gradient")
        local += shard.numel()
        full += p.numel()
    if teacher.training:
        failures.append("the teacher left eval mode")
    if any("teacher" in key for key in module.state_dict()):
        failures.append("teacher weights in the student's state dict")
    return failures, local, full


def count_forwards(module: ContrastiveModule) -> list[int]:
    """Count teacher forwards through a forward hook (FSDP2 keeps its own hooks)."""
    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1

    module.distiller.teacher.register_forward_hook(hook)  # type: ignore[union-attr]
    return calls


def cache_check(rank: int, world: int, folder: str) -> list[str]:
    """First pass fills the cache, a second identical pass runs no teacher, a one-rank miss runs both."""
    failures = []
    module = common.build("cosine", teacher_cache=folder)
    shard(module)
    calls = count_forwards(module)
    rows = common.share("even", rank)
    first = step(module, rows)
    after_first = calls[0]
    second = step(module, rows)
    after_second = calls[0] - after_first
    if not torch.equal(first[0], second[0]):
        failures.append(f"cached pass loss {second[0].item()!r} != first pass {first[0].item()!r}")
    if any(not torch.equal(first[1][n], g) for n, g in second[1].items()) or set(first[1]) != set(second[1]):
        failures.append("cached pass gradients differ from the first pass")
    # Only rank 1 sees new texts; rank 0 is fully cached but must join the collective forward.
    mixed = (
        rows
        if rank == 0
        else [TrainingPair(f"new {r.query}", f"new {r.document}", r.negatives) for r in rows]
    )
    before = calls[0]
    step(module, mixed)
    after_mixed = calls[0] - before
    counts = torch.tensor([after_first, after_second, after_mixed])
    gathered = [torch.zeros_like(counts) for _ in range(world)]
    dist.all_gather(gathered, counts)
    if rank == 0:
        print(f"CACHE forwards={','.join(str(int(c)) for c in gathered[0])}", flush=True)
        for r, (a, b, c) in enumerate(t.tolist() for t in gathered):
            if (
                a != 3 or b != 0 or c != 2
            ):  # 3 groups, then none, then queries and documents (negatives cached)
                failures.append(f"rank {r}: teacher forwards {a},{b},{c}, expected 3,0,2")
    return failures


def worker(
    rank: int, world: int, expected: dict[str, common.Result], folder: Path
) -> tuple[list[str], common.Tally]:
    tally = common.Tally()
    for split, metric, sharding in CASES:
        case = f"{split}-{metric}-{sharding}"
        module = common.build(metric, teacher_sharding=sharding)
        shard(module)
        if not tally.compare(case, step(module, common.share(split, rank)), expected[metric]):
            continue
        if sharding == "auto":
            bad, local, full = check_shards(module, rank, world)
            tally.failures += [f"{case}: {b}" for b in bad]
            if rank == 0 and split == "even":
                count = sum(1 for _ in module.distiller.teacher.parameters())  # type: ignore[union-attr]
                print(f"SHARDS teacher_params={count} local={local} full={full}", flush=True)
        else:
            from lit_nomic.training.parallel import is_sharded

            if is_sharded(module.distiller.teacher):  # type: ignore[union-attr]
                tally.failures.append(f"{case}: teacher_sharding=replicate sharded the teacher")
    failures = tally.failures + cache_check(rank, world, str(folder / "cache")) + tally.gradient_failures()
    # Every rank reports its own failures through rank 0.
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, failures)
    return [f"rank {r}: {f}" for r, fs in enumerate(gathered) for f in fs], tally


if __name__ == "__main__":
    sys.exit(common.run(reference, worker, len(CASES)))
