"""Shared pieces of the 2-process distillation equivalence scripts (``distill_equivalence.py``, DDP-style,
and ``distill_fsdp2.py``, FSDP2 with a sharded teacher).

Both follow one plan: the launching process builds the distillation module (tiny dense student, a
wider tiny MoE teacher, so the learned projection is exercised) from a fixed seed and computes the
loss and the student's gradients on one global batch of 6 pairs with hard negatives and a duplicated
positive (:func:`reference`). Then two gloo processes build the same module, each takes its share of
the batch (3/3, then 4/2 rows: :func:`share`), computes ``ContrastiveModule.compute_losses``
(InfoNCE + embedding matching + in-batch score KL, gathered across ranks), backpropagates and
compares the global-batch loss and gradients with the single-process values (:class:`Tally`).
Rank 0 prints the failures, or ``OK cases=<n> max_loss_diff=<x> max_grad_diff=<y>``.

The scripts run as ``python <script>``, so this folder is on ``sys.path`` there and in the spawned
processes; kept importable without side effects.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
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
TOLERANCE = 1e-5
WORLD = 2

Result = tuple[torch.Tensor, dict[str, torch.Tensor]]  # loss and the student's gradients, by name


def pairs() -> list[TrainingPair]:
    """6 rows; rows 1 and 4 share their positive (a false negative across ranks)."""
    rows = [TrainingPair(f"what about {t}", f"a study of {t}", (f"{t} unrelated note",)) for t in TOPICS]
    rows.insert(4, TrainingPair("tell me about enzymes", rows[1].document, ("a note on enzymes",)))
    return rows


def share(split: str, rank: int) -> list[TrainingPair]:
    """The rows of the global batch that ``rank`` takes under ``SPLITS[split]``."""
    sizes = SPLITS[split]
    start = sum(sizes[:rank])
    return pairs()[start : start + sizes[rank]]


def collate(rows: list[TrainingPair]) -> dict:
    spec = SourceSpec(name="toy", path="-", query_prefix="", document_prefix="", num_negatives=1)
    return PairCollator(TOKENIZER)(rows, spec, 0)


def build(metric: str, **distill: Any) -> ContrastiveModule:
    """The seeded module; ``distill`` adds ``DistillConfig`` fields (teacher sharding, cache)."""
    torch.manual_seed(0)
    spec = lambda preset, **o: ModelSpec(  # noqa: E731
        preset=preset, tokenizer=TOKENIZER, overrides={"vocab_size": 30522, "aux_loss_coef": 0.0, **o}
    )
    return ContrastiveModule(
        model=spec("tiny-dense"),
        loss=LossConfig(temperature=0.05, mask_false_negatives=True),
        optim=OptimConfig(total_steps=1),
        distill=DistillConfig(
            teacher=spec("tiny-moe", hidden_size=96), embedding_metric=metric, score_weight=0.5, **distill
        ),
    )


def step(
    module: ContrastiveModule,
    rows: list[TrainingPair],
    sync: Callable[[ContrastiveModule], None] | None = None,
) -> Result:
    """Loss and gradients; in a process group the global-batch values: ``sync`` reduces the gradients
    after backward, the loss is the mean over ranks, and FSDP2's sharded gradients come back whole."""
    from torch.distributed.tensor import DTensor

    module.zero_grad(set_to_none=True)
    loss = module.compute_losses(collate(rows)).loss
    loss.backward()
    loss = loss.detach()
    if dist.is_initialized():
        if sync is not None:
            sync(module)
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
    grads = {}
    for name, p in module.named_parameters():
        if p.grad is not None:
            grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            grads[name] = grad.detach().clone()
    return loss, grads


@dataclass
class Tally:
    """The worst loss and gradient differences from the single-process values, and what failed."""

    loss: float = 0.0
    grad: float = 0.0
    failures: list[str] = field(default_factory=list)

    def compare(self, case: str, got: Result, want: Result) -> bool:
        """Record one case; False when the gradients could not be compared (their names differ)."""
        (loss, grads), (ref_loss, ref_grads) = got, want
        diff = (loss - ref_loss).abs().item()
        self.loss = max(self.loss, diff)
        if diff > TOLERANCE:
            self.failures.append(f"{case}: loss {loss.item()} vs single-process {ref_loss.item()}")
        if set(grads) != set(ref_grads):
            self.failures.append(f"{case}: gradient names differ")
            return False
        for name, grad in grads.items():
            self.grad = max(self.grad, (grad - ref_grads[name]).abs().max().item())
        return True

    def gradient_failures(self) -> list[str]:
        return [f"gradients differ by {self.grad}"] if self.grad > TOLERANCE else []


# A worker runs the checks on one rank of the process group: (rank, world, the reference results,
# a scratch folder shared by the ranks) -> (the failures rank 0 prints, its tally).
Worker = Callable[[int, int, dict[str, Result], Path], tuple[list[str], Tally]]


def _process(rank: int, world: int, port: int, folder: Path, worker: Worker, cases: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )
    failures, tally = worker(rank, world, torch.load(folder / "reference.pt"), folder)
    if rank == 0:
        for failure in failures:
            print(f"FAIL {failure}", flush=True)
        if not failures:
            print(
                f"OK cases={cases} max_loss_diff={tally.loss:.3e} max_grad_diff={tally.grad:.3e}",
                flush=True,
            )
    dist.barrier()
    dist.destroy_process_group()
    if failures:
        sys.exit(1)


def run(reference: Callable[[], dict[str, Result]], worker: Worker, cases: int) -> int:
    """Compute the single-process reference here, then run ``worker`` on 2 spawned gloo processes."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.save(reference(), folder / "reference.pt")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_process, args=(WORLD, port, folder, worker, cases), nprocs=WORLD, join=True)
    return 0
