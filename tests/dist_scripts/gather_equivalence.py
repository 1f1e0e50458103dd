"""Two gloo processes must reproduce the single-process loss and gradients of the global batch.

Each rank encodes its share of one fixed global batch with the same seeded linear "encoder", computes
the cross-rank InfoNCE, backpropagates, and averages parameter gradients over ranks exactly as DDP
does (all_reduce SUM / world). Every rank also computes the single-process reference on the whole
batch with gathering switched off. Rank 0 prints one line:

    OK cases=<n> max_loss_diff=<x> max_grad_diff=<y> fp32_max_loss_diff=<x32> fp32_max_grad_diff=<y32>
    FAIL <case>: ...

with exit code 0 and 1 respectively; the unprefixed diffs are float64, which must agree to 1e-6.

Run directly (``python gather_equivalence.py``) or from ``tests/test_objectives_distributed.py``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lit_nomic.objectives import InfoNCELoss, MatryoshkaLoss, all_gather_with_grad

IN_FEATURES = 12
EMBED_DIM = 16
NEGATIVES_PER_QUERY = 2
GLOBAL_BATCH = 6
DOC_IDS = [0, 1, 2, 1, 3, 0]  # rows 1/3 and 0/5 share a positive: false negatives across ranks
# Absolute tolerance per dtype. float64 shows the maths is exact (diffs ~1e-15); float32 differs only by
# summation order (gradients are O(10) here, so ~1e-6 is a few ulps).
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-5}


@dataclass(frozen=True)
class Case:
    name: str
    negatives: bool
    symmetric: bool
    doc_ids: bool = False
    learn_temperature: bool = False
    split: tuple[int, int] = (3, 3)  # rows per rank; uneven splits exercise the W·B_r/B_g scaling
    matryoshka: bool = False


CASES = [
    Case("plain", negatives=False, symmetric=False),
    Case("hard_negatives", negatives=True, symmetric=False),
    Case("symmetric", negatives=False, symmetric=True),
    Case("symmetric_hard_negatives", negatives=True, symmetric=True),
    Case("masked_learned_temperature", negatives=True, symmetric=True, doc_ids=True, learn_temperature=True),
    Case("uneven_split", negatives=True, symmetric=True, doc_ids=True, learn_temperature=True, split=(4, 2)),
    Case(
        "matryoshka_uneven",
        negatives=True,
        symmetric=True,
        doc_ids=True,
        learn_temperature=True,
        split=(2, 4),
        matryoshka=True,
    ),
]


def global_inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The one global batch that every process builds identically from a fixed seed."""
    gen = torch.Generator().manual_seed(1234)
    return {
        "query": torch.randn(GLOBAL_BATCH, IN_FEATURES, generator=gen, dtype=dtype),
        "document": torch.randn(GLOBAL_BATCH, IN_FEATURES, generator=gen, dtype=dtype),
        "negatives": torch.randn(GLOBAL_BATCH * NEGATIVES_PER_QUERY, IN_FEATURES, generator=gen, dtype=dtype),
        "doc_ids": torch.tensor(DOC_IDS, dtype=torch.int64),
    }


def build(case: Case, dtype: torch.dtype, gather: bool) -> tuple[nn.Module, nn.Module]:
    """Seeded encoder and loss, identical on every rank and for the reference."""
    torch.manual_seed(0)
    encoder = nn.Linear(IN_FEATURES, EMBED_DIM, dtype=dtype)
    loss: nn.Module = InfoNCELoss(
        temperature=0.05,
        learn_temperature=case.learn_temperature,
        symmetric=case.symmetric,
        gather_across_ranks=gather,
    ).to(dtype)
    if case.matryoshka:
        loss = MatryoshkaLoss(loss, dims=[EMBED_DIM, EMBED_DIM // 2], weights=[1.0, 0.5])
    return encoder, loss


def loss_and_grads(
    case: Case, dtype: torch.dtype, gather: bool, rows: slice
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and parameter gradients of the batch rows ``rows`` (all rows for the reference)."""
    data = global_inputs(dtype)
    encoder, loss_fn = build(case, dtype, gather)
    neg_rows = slice(rows.start * NEGATIVES_PER_QUERY, rows.stop * NEGATIVES_PER_QUERY)
    out = loss_fn(
        encoder(data["query"][rows]),
        encoder(data["document"][rows]),
        encoder(data["negatives"][neg_rows]) if case.negatives else None,
        data["doc_ids"][rows] if case.doc_ids else None,
    )
    out.loss.backward()
    params = list(encoder.parameters()) + list(loss_fn.parameters())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    return out.loss.detach(), grads


def check_gather(rank: int, world: int) -> float:
    """all_gather_with_grad on uneven rows: forward concatenates, backward sums each rank's slice; bad shapes raise."""
    sizes = [3, 1]
    start = sum(sizes[:rank])
    x = torch.arange(sizes[rank] * 2, dtype=torch.float64).reshape(-1, 2).add(10 * rank).requires_grad_()
    gathered = all_gather_with_grad(x)
    expected = torch.cat(
        [torch.arange(n * 2, dtype=torch.float64).reshape(-1, 2) + 10 * r for r, n in enumerate(sizes)]
    )
    weights = [
        torch.arange(sum(sizes) * 2, dtype=torch.float64).reshape(-1, 2) * (r + 1) for r in range(world)
    ]
    (gathered * weights[rank]).sum().backward()
    expected_grad = sum(w[start : start + sizes[rank]] for w in weights)
    diff = max((gathered - expected).abs().max().item(), (x.grad - expected_grad).abs().max().item())
    try:  # trailing dims must agree; both ranks see the shapes and must raise, not hang
        all_gather_with_grad(torch.zeros(2, 3 + rank))
    except ValueError as err:
        if "rank 1 holds shape (2, 4)" not in str(err):
            raise
    else:
        raise AssertionError("all_gather_with_grad accepted mismatched trailing dims")
    return diff


def worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    failures: list[str] = []
    loss_diff = {dtype: 0.0 for dtype in TOLERANCE}
    grad_diff = {dtype: 0.0 for dtype in TOLERANCE}
    try:
        gather_diff = check_gather(rank, world)
        if gather_diff > TOLERANCE[torch.float64]:
            failures.append(f"all_gather_with_grad: max diff {gather_diff:.3e}")
        for dtype, tol in TOLERANCE.items():
            for case in CASES:
                start = sum(case.split[:rank])
                loss, grads = loss_and_grads(
                    case, dtype, gather=True, rows=slice(start, start + case.split[rank])
                )
                dist.all_reduce(loss)  # loss as logged: mean over ranks
                loss /= world
                for g in grads:  # what DDP / FSDP2 do to gradients
                    dist.all_reduce(g)
                    g /= world
                ref_loss, ref_grads = loss_and_grads(case, dtype, gather=False, rows=slice(0, GLOBAL_BATCH))
                case_loss = (loss - ref_loss).abs().item()
                case_grad = max((g - r).abs().max().item() for g, r in zip(grads, ref_grads, strict=True))
                loss_diff[dtype] = max(loss_diff[dtype], case_loss)
                grad_diff[dtype] = max(grad_diff[dtype], case_grad)
                if case_loss > tol or case_grad > tol:
                    failures.append(
                        f"{case.name}[{dtype}] loss diff {case_loss:.3e} grad diff {case_grad:.3e}"
                    )
        if rank == 0:
            if failures:
                print("FAIL " + "; ".join(failures), flush=True)
            else:
                f64, f32 = torch.float64, torch.float32
                print(
                    f"OK cases={len(TOLERANCE) * len(CASES)} max_loss_diff={loss_diff[f64]:.3e} "
                    f"max_grad_diff={grad_diff[f64]:.3e} fp32_max_loss_diff={loss_diff[f32]:.3e} "
                    f"fp32_max_grad_diff={grad_diff[f32]:.3e}",
                    flush=True,
                )
    finally:
        dist.destroy_process_group()  # gloo processes that skip this intermittently abort (exit 134)
    if failures:
        raise SystemExit(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    if args.world_size != 2:
        parser.error("the fixed splits in CASES describe exactly 2 ranks")
    try:
        mp.spawn(worker, args=(args.world_size, args.port or free_port()), nprocs=args.world_size, join=True)
    except mp.ProcessExitedException as err:
        print(f"worker failed: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
