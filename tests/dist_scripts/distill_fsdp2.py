"""Under FSDP2 the teacher is sharded like the student, and the distillation step equals one process's.

The launching process builds the distillation module (tiny dense student, a wider tiny MoE teacher,
so the learned projection is exercised) from a fixed seed and computes the loss and the student's
gradients on one global batch of 6 pairs with hard negatives and a duplicated positive. Then two
gloo processes build the same module, shard it as ``ModelParallelStrategy`` does (a 1-D
``data_parallel`` CPU mesh handed to ``ContrastiveModule.configure_model``: student *and* teacher
under ``fully_shard``), each takes its share of the batch (3/3, then 4/2 rows), computes
``compute_losses``, backpropagates (FSDP2 reduce-scatters the student's gradients; the replicated
projection is all-reduced by ``on_before_optimizer_step``) and compares the mean loss over ranks and
the full gradients with the single-process values. One case keeps ``teacher_sharding: replicate``.

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

import os
import socket
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_nomic.data.collate import PairCollator
from lit_nomic.data.mixture import SourceSpec
from lit_nomic.data.records import TrainingPair
from lit_nomic.model.build import ModelSpec
from lit_nomic.training.distill import DistillConfig
from lit_nomic.training.module import ContrastiveModule, LossConfig
from lit_nomic.training.optim import OptimConfig

TOKENIZER = "all-minilm-l6-v2"
TOPICS = [
    "protein enzyme fold",
    "ocean coral reef",
    "volcano lava ash",
    "piano song rhythm",
    "river flood bridge",
]
SPLITS = {"even": (3, 3), "uneven": (4, 2)}
CASES = [("even", "cosine", "auto"), ("uneven", "mse", "auto"), ("even", "cosine", "replicate")]
TOLERANCE = 1e-5


def pairs() -> list[TrainingPair]:
    """6 rows; rows 1 and 4 share their positive (a false negative across ranks)."""
    rows = [TrainingPair(f"what about {t}", f"a study of {t}", (f"{t} unrelated note",)) for t in TOPICS]
    rows.insert(4, TrainingPair("tell me about enzymes", rows[1].document, ("a note on enzymes",)))
    return rows


def collate(rows: list[TrainingPair]) -> dict:
    spec = SourceSpec(name="toy", path="-", query_prefix="", document_prefix="", num_negatives=1)
    return PairCollator(TOKENIZER)(rows, spec, 0)


def build(metric: str, sharding: str = "auto", cache: str | None = None) -> ContrastiveModule:
    torch.manual_seed(0)
    spec = lambda preset, **o: ModelSpec(  # noqa: E731
        preset=preset, tokenizer=TOKENIZER, overrides={"vocab_size": 30522, "aux_loss_coef": 0.0, **o}
    )
    return ContrastiveModule(
        model=spec("tiny-dense"),
        loss=LossConfig(temperature=0.05, mask_false_negatives=True),
        optim=OptimConfig(total_steps=1),
        distill=DistillConfig(
            teacher=spec("tiny-moe", hidden_size=96),
            embedding_metric=metric,
            score_weight=0.5,
            teacher_sharding=sharding,  # type: ignore[arg-type]
            teacher_cache=cache,
        ),
    )


def shard(module: ContrastiveModule) -> None:
    """What Lightning's ModelParallelStrategy does before the first step: a mesh, then configure_model."""
    from torch.distributed.device_mesh import init_device_mesh

    module._device_mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("data_parallel",))
    module.configure_model()


def step(module: ContrastiveModule, rows: list[TrainingPair]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and gradients; under FSDP2 the global-batch values (mean loss over ranks, full gradients)."""
    from torch.distributed.tensor import DTensor

    module.zero_grad(set_to_none=True)
    loss = module.compute_losses(collate(rows)).loss
    loss.backward()
    loss = loss.detach()
    if dist.is_initialized():
        module.on_before_optimizer_step(None)  # type: ignore[arg-type]  # the replicated projection
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
    grads = {}
    for name, p in module.named_parameters():
        if p.grad is not None:
            grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            grads[name] = grad.detach().clone()
    return loss, grads


def reference(path: Path) -> None:
    torch.save({metric: step(build(metric), pairs()) for _, metric, _ in CASES}, path)


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
    module = build("cosine", cache=folder)
    shard(module)
    calls = count_forwards(module)
    rows = pairs()[3 * rank : 3 * rank + 3]
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


def worker(rank: int, world: int, port: int, path: Path, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )
    expected = torch.load(path)
    worst_loss = worst_grad = 0.0
    failures: list[str] = []
    for split, metric, sharding in CASES:
        case = f"{split}-{metric}-{sharding}"
        module = build(metric, sharding)
        shard(module)
        sizes = SPLITS[split]
        start = sum(sizes[:rank])
        loss, grads = step(module, pairs()[start : start + sizes[rank]])
        ref_loss, ref_grads = expected[metric]
        diff = (loss - ref_loss).abs().item()
        worst_loss = max(worst_loss, diff)
        if diff > TOLERANCE:
            failures.append(f"{case}: loss {loss.item()} vs single-process {ref_loss.item()}")
        if set(grads) != set(ref_grads):
            failures.append(f"{case}: gradient names differ")
            continue
        for name, grad in grads.items():
            worst_grad = max(worst_grad, (grad - ref_grads[name]).abs().max().item())
        if sharding == "auto":
            bad, local, full = check_shards(module, rank, world)
            failures += [f"{case}: {b}" for b in bad]
            if rank == 0 and split == "even":
                count = sum(1 for _ in module.distiller.teacher.parameters())  # type: ignore[union-attr]
                print(f"SHARDS teacher_params={count} local={local} full={full}", flush=True)
        else:
            from lit_nomic.training.parallel import is_sharded

            if is_sharded(module.distiller.teacher):  # type: ignore[union-attr]
                failures.append(f"{case}: teacher_sharding=replicate sharded the teacher")
    failures += cache_check(rank, world, folder)
    if worst_grad > TOLERANCE:
        failures.append(f"gradients differ by {worst_grad}")
    # Every rank reports its own failures through rank 0.
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, failures)
    everything = [f"rank {r}: {f}" for r, fs in enumerate(gathered) for f in fs]
    if rank == 0:
        for failure in everything:
            print(f"FAIL {failure}", flush=True)
        if not everything:
            print(
                f"OK cases={len(CASES)} max_loss_diff={worst_loss:.3e} max_grad_diff={worst_grad:.3e}",
                flush=True,
            )
    dist.barrier()
    dist.destroy_process_group()
    if everything:
        sys.exit(1)


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reference.pt"
        reference(path)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(worker, args=(2, port, path, str(Path(tmp) / "cache")), nprocs=2, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
