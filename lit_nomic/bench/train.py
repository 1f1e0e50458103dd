"""Training-step throughput and model-FLOPs utilisation (MFU), with and without activation checkpointing.

One step = encode a batch of queries and a batch of documents, InfoNCE over in-batch negatives
plus the MoE load-balancing loss, backward, AdamW step: the inner loop of contrastive training.
Inputs are random token ids with no padding, so the token count per step is exact and the FLOP
count below is the work actually done.

MFU = model FLOP/s / peak FLOP/s. Model FLOPs come from
:func:`~lit_nomic.model.params.count_parameters` (``flops_per_token_train`` = 3 x forward, at the
query and document lengths); recomputation under checkpointing is *not* counted, which is the
point of MFU (checkpointing trades memory for FLOPs and its MFU drops accordingly). The peak is
measured in the same run, a large matmul in the training dtype (fp32 on CPU, bf16 on GPU), because
datasheet peaks say little about a shared 2-core VM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lit_nomic.bench.moe import DTYPES
from lit_nomic.bench.timing import Row, Stat, device_sync, time_interleaved

__all__ = [
    "TrainShape",
    "default_train_shapes",
    "measure_matmul_peak",
    "quick_train_shapes",
    "run_train_benchmark",
]


@dataclass(frozen=True)
class TrainShape:
    """A preset and a batch shape: ``batch`` (query, document) pairs of fixed lengths."""

    preset: str
    batch: int
    query_len: int
    doc_len: int
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"TrainShape.dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        for name in ("batch", "query_len", "doc_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainShape.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def tokens(self) -> int:
        return self.batch * (self.query_len + self.doc_len)

    @property
    def name(self) -> str:
        return f"{self.preset} B={self.batch} q={self.query_len} d={self.doc_len} {self.dtype}"


def default_train_shapes(dtype: str = "fp32") -> list[TrainShape]:
    """MiniLM dense and its 8x2 MoE upcycle at a short-query / longer-document contrastive shape."""
    return [TrainShape(p, 16, 32, 128, dtype) for p in ("all-minilm-l6-v2", "all-minilm-l6-v2-moe")]


def quick_train_shapes(dtype: str = "fp32") -> list[TrainShape]:
    return [TrainShape(p, 4, 8, 16, dtype) for p in ("tiny-dense", "tiny-moe")]


def measure_matmul_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    n: int = 2048,
    repeats: int = 5,
    clock: str = "wall",
) -> dict[str, float]:
    """FLOP/s of an n x n x n matmul: the best of ``repeats`` (a peak) and the median."""
    device = torch.device(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    stats = time_interleaved(
        {"matmul": lambda: a @ b}, warmup=1, repeats=repeats, sync=device_sync(device), clock=clock
    )
    stat = stats["matmul"]
    flops = 2.0 * n**3
    return {
        "n": n,
        "peak_flops_per_s": flops / (stat.min_ms / 1e3),
        "median_flops_per_s": flops / (stat.median_ms / 1e3),
    }


def _random_ids(shape: tuple[int, int], vocab: int, generator: torch.Generator) -> torch.Tensor:
    low = min(1000, vocab // 2)  # past BERT's [unused]/special ids, which real text rarely hits
    return torch.randint(low, vocab, shape, generator=generator)


def _train_step(
    encoder: Any, loss_fn: Any, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], checkpointing: bool,
    autocast: Any,
) -> Callable[[], None]:  # fmt: skip
    coef = encoder.config.aux_loss_coef if encoder.config.is_moe else 0.0

    def step() -> None:
        encoder.gradient_checkpointing = checkpointing
        with autocast():
            q = encoder(batch["q_ids"], batch["q_mask"])
            d = encoder(batch["d_ids"], batch["d_mask"])
            loss = loss_fn(q.embeddings.float(), d.embeddings.float()).loss
            if coef:
                loss = loss + coef * 0.5 * (q.aux_loss + d.aux_loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run_train_row(
    shape: TrainShape,
    device: torch.device | str = "cpu",
    peak: dict[str, float] | None = None,
    warmup: int = 1,
    repeats: int = 3,
    max_repeats: int = 10,
    budget_s: float = 20.0,
    seed: int = 0,
    clock: str = "wall",
) -> Row:
    from lit_nomic.config import preset
    from lit_nomic.model.encoder import Encoder
    from lit_nomic.model.params import count_parameters
    from lit_nomic.objectives.infonce import InfoNCELoss

    device = torch.device(device)
    dtype = DTYPES[shape.dtype]
    config = preset(shape.preset)
    for length in (shape.query_len, shape.doc_len):
        if config.position_embedding == "absolute" and length > config.max_position_embeddings:
            raise ValueError(
                f"{shape.name}: length {length} exceeds max_position_embeddings={config.max_position_embeddings}"
            )
    torch.manual_seed(seed)
    encoder = Encoder(config).to(device).train()
    loss_fn = InfoNCELoss(gather_across_ranks=False).to(device)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-5)
    generator = torch.Generator().manual_seed(seed)
    vocab = config.vocab_size
    batch = {
        "q_ids": _random_ids((shape.batch, shape.query_len), vocab, generator).to(device),
        "d_ids": _random_ids((shape.batch, shape.doc_len), vocab, generator).to(device),
    }
    batch["q_mask"] = torch.ones_like(batch["q_ids"], dtype=torch.bool)
    batch["d_mask"] = torch.ones_like(batch["d_ids"], dtype=torch.bool)

    def autocast() -> Any:
        if dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    variants = {
        "plain": _train_step(encoder, loss_fn, optimizer, batch, False, autocast),
        "checkpointing": _train_step(encoder, loss_fn, optimizer, batch, True, autocast),
    }
    times = time_interleaved(
        variants,
        warmup=warmup,
        repeats=repeats,
        max_repeats=max_repeats,
        budget_s=budget_s,
        sync=device_sync(device),
        clock=clock,
    )
    encoder.gradient_checkpointing = False

    flops_q = count_parameters(config, seq_len=shape.query_len)["flops_per_token_train"]
    flops_d = count_parameters(config, seq_len=shape.doc_len)["flops_per_token_train"]
    step_flops = shape.batch * (shape.query_len * flops_q + shape.doc_len * flops_d)
    counts = count_parameters(config, seq_len=shape.doc_len)

    row = Row(
        benchmark="train",
        name=shape.name,
        shape=asdict(shape)
        | {
            "tokens_per_step": shape.tokens,
            "device": device.type,
            "total_params": counts["total"],
            "active_params": counts["active"],
            "model_flops_per_step": step_flops,
        },
        dtype=shape.dtype,
        times=times,
    )
    for variant, stat in times.items():
        row.metrics[variant] = _rates(stat, shape, step_flops, peak)
    row.ratio("checkpointing_time_over_plain", "checkpointing", "plain")
    if peak is not None:
        row.notes.append(
            f"peak = best of 5 {peak['n']:.0f}^3 {shape.dtype if device.type == 'cpu' else 'bf16'} matmuls"
        )
    return row


def _rates(stat: Stat, shape: TrainShape, step_flops: int, peak: dict[str, float] | None) -> dict[str, float]:
    seconds = stat.median_ms / 1e3
    rates = {
        "step_ms": stat.median_ms,
        "tokens_per_s": shape.tokens / seconds,
        "samples_per_s": shape.batch / seconds,
        "model_flops_per_s": step_flops / seconds,
    }
    if peak is not None:
        rates["peak_flops_per_s"] = peak["peak_flops_per_s"]
        rates["mfu"] = rates["model_flops_per_s"] / peak["peak_flops_per_s"]
    return rates


def run_train_benchmark(
    shapes: Sequence[TrainShape],
    device: torch.device | str = "cpu",
    peak_n: int = 2048,
    warmup: int = 1,
    repeats: int = 3,
    max_repeats: int = 10,
    budget_s: float = 20.0,
    log: Callable[[str], None] | None = print,
    clock: str = "wall",
) -> tuple[list[Row], dict[str, float]]:
    """All shapes plus the matmul peak they are judged against (fp32 on CPU, bf16 on CUDA)."""
    device = torch.device(device)
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = measure_matmul_peak(device, peak_dtype, n=peak_n, clock=clock)
    if log is not None:
        log(f"[train] matmul peak {peak['peak_flops_per_s'] / 1e9:.1f} GFLOP/s ({peak_n}^3, {peak_dtype})")
    rows = []
    for i, shape in enumerate(shapes):
        row = run_train_row(shape, device, peak, warmup, repeats, max_repeats, budget_s, clock=clock)
        rows.append(row)
        if log is not None:
            p, c = row.metrics["plain"], row.metrics["checkpointing"]
            log(
                f"[train {i + 1}/{len(shapes)}] {row.name}: {p['tokens_per_s']:.0f} tok/s, "
                f"{p['samples_per_s']:.2f} samples/s, MFU {100 * p['mfu']:.1f}%; "
                f"checkpointing {c['tokens_per_s']:.0f} tok/s ({row.ratios['checkpointing_time_over_plain']:.2f}x time)"
            )
    return rows, peak
