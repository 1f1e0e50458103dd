"""Two gloo processes must reproduce the single-process distillation loss and gradients of the global batch.

The launching process builds the distillation module (tiny dense student, a wider tiny MoE teacher,
so the learned projection is exercised) from a fixed seed and computes the loss and the student's
gradients on one global batch of 6 pairs with hard negatives and a duplicated positive. Then two
gloo processes build the same module, each takes its share of the batch (3/3, then 4/2 rows),
computes ``ContrastiveModule.compute_losses`` (InfoNCE + embedding matching + in-batch score KL,
gathered across ranks), backpropagates and averages loss and gradients over ranks as DDP does.
Rank 0 prints one line:

    OK cases=<n> max_loss_diff=<x> max_grad_diff=<y>
    FAIL <case>: ...

Run directly (``python distill_equivalence.py``) or from ``tests/test_distill.py``.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

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
TOLERANCE = 1e-5


def pairs() -> list[TrainingPair]:
    """6 rows; rows 1 and 4 share their positive (a false negative across ranks)."""
    rows = [TrainingPair(f"what about {t}", f"a study of {t}", (f"{t} unrelated note",)) for t in TOPICS]
    rows.insert(4, TrainingPair("tell me about enzymes", rows[1].document, ("a note on enzymes",)))
    return rows


def collate(rows: list[TrainingPair]) -> dict:
    spec = SourceSpec(name="toy", path="-", query_prefix="", document_prefix="", num_negatives=1)
    return PairCollator(TOKENIZER)(rows, spec, 0)


def build(metric: str) -> ContrastiveModule:
    torch.manual_seed(0)
    spec = lambda preset, **o: ModelSpec(  # noqa: E731
        preset=preset, tokenizer=TOKENIZER, overrides={"vocab_size": 30522, "aux_loss_coef": 0.0, **o}
    )
    return ContrastiveModule(
        model=spec("tiny-dense"),
        loss=LossConfig(temperature=0.05, mask_false_negatives=True),
        optim=OptimConfig(total_steps=1),
        distill=DistillConfig(
            teacher=spec("tiny-moe", hidden_size=96), embedding_metric=metric, score_weight=0.5
        ),
    )


def step(module: ContrastiveModule, rows: list[TrainingPair]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module.compute_losses(collate(rows)).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads


CASES = [("even", "cosine"), ("uneven", "mse")]


def reference(path: Path) -> None:
    torch.save({f"{s}-{m}": step(build(m), pairs()) for s, m in CASES}, path)


def worker(rank: int, world: int, port: int, path: Path) -> None:
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
    failures = []
    for split, metric in CASES:
        sizes = SPLITS[split]
        start = sum(sizes[:rank])
        loss, grads = step(build(metric), pairs()[start : start + sizes[rank]])
        dist.all_reduce(loss)
        loss /= world
        ref_loss, ref_grads = expected[f"{split}-{metric}"]
        diff = (loss - ref_loss).abs().item()
        worst_loss = max(worst_loss, diff)
        if set(grads) != set(ref_grads):
            failures.append(f"{split}-{metric}: gradient names differ")
            continue
        for name, grad in grads.items():
            dist.all_reduce(grad)
            grad /= world
            worst_grad = max(worst_grad, (grad - ref_grads[name]).abs().max().item())
        if diff > TOLERANCE:
            failures.append(f"{split}-{metric}: loss {loss.item()} vs single-process {ref_loss.item()}")
    if rank == 0:
        for failure in failures:
            print(f"FAIL {failure}", flush=True)
        if worst_grad > TOLERANCE:
            print(f"FAIL gradients differ by {worst_grad}", flush=True)
        if not failures and worst_grad <= TOLERANCE:
            print(
                f"OK cases={len(CASES)} max_loss_diff={worst_loss:.3e} max_grad_diff={worst_grad:.3e}",
                flush=True,
            )
    dist.barrier()
    dist.destroy_process_group()
    if failures or worst_grad > TOLERANCE:
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
        mp.spawn(worker, args=(2, port, path), nprocs=2, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
