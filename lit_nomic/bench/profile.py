"""``torch.profiler`` hotspots of the MoE layer and the encode path, to decide what to speed up next.

The benchmarks say *how fast*; this says *where the time goes*: operators ranked by self time (time
inside the operator, children excluded), per step, so a ``copy_`` or ``index_put_`` that costs more
than the expert matmuls stands out at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lit_nomic.bench.moe import MoEShape

__all__ = ["Hotspot", "format_hotspots", "profile_callable", "profile_encode", "profile_moe"]


@dataclass(frozen=True)
class Hotspot:
    name: str
    self_ms_per_step: float
    total_ms_per_step: float
    calls_per_step: float
    self_share: float  # of the summed self time of all operators

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def profile_callable(
    fn: Callable[[], object],
    steps: int = 3,
    warmup: int = 1,
    top: int = 15,
    device: torch.device | str = "cpu",
) -> list[Hotspot]:
    """Run ``fn`` ``warmup`` times unprofiled, then ``steps`` times under the profiler; top-``top`` by self time."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    for _ in range(warmup):
        fn()
    activities = [ProfilerActivity.CPU]
    use_cuda = torch.device(device).type == "cuda"
    if use_cuda:
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if use_cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    attr = "self_device_time_total" if use_cuda else "self_cpu_time_total"
    total_self = sum(getattr(e, attr) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:top]
    return [
        Hotspot(
            name=e.key,
            self_ms_per_step=getattr(e, attr) / 1e3 / steps,
            total_ms_per_step=(e.device_time_total if use_cuda else e.cpu_time_total) / 1e3 / steps,
            calls_per_step=e.count / steps,
            self_share=getattr(e, attr) / total_self,
        )
        for e in ranked
    ]


def profile_moe(
    shape: MoEShape, steps: int = 3, top: int = 15, device: torch.device | str = "cpu"
) -> list[Hotspot]:
    """Hotspots of ours (torch backend) fwd+bwd at ``shape``."""
    from lit_nomic.model.moe import MoEFeedForward

    device = torch.device(device)
    torch.manual_seed(0)
    layer = MoEFeedForward(shape.config("torch")).to(device=device, dtype=shape.torch_dtype).train()
    x = torch.randn(shape.tokens, shape.hidden, device=device, dtype=shape.torch_dtype, requires_grad=True)
    g = torch.randn_like(x)

    def step() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        (layer(x).y * g).sum().backward()

    return profile_callable(step, steps=steps, top=top, device=device)


def profile_encode(
    texts: Sequence[str],
    model_path: str | Path,
    batch_size: int = 32,
    max_length: int = 256,
    steps: int = 1,
    top: int = 15,
    moe: bool = False,
) -> list[Hotspot]:
    """Hotspots of ``Embedder.encode`` (CPU) on ``texts``; ``moe`` profiles the 8x2 upcycled model instead."""
    from lit_nomic.config import preset
    from lit_nomic.model.embedder import Embedder

    embedder = Embedder.from_pretrained(model_path)
    embedder.max_seq_length = max_length
    if moe:
        embedder = embedder.upcycled(preset("all-minilm-l6-v2-moe")).eval()
    texts = list(texts)
    return profile_callable(
        lambda: embedder.encode(texts, batch_size=batch_size, max_length=max_length), steps=steps, top=top
    )


def format_hotspots(hotspots: Sequence[Hotspot], title: str) -> str:
    lines = [f"{title}", f"{'self ms/step':>12} {'share':>6} {'total ms/step':>13} {'calls':>7}  operator"]
    for h in hotspots:
        lines.append(
            f"{h.self_ms_per_step:12.2f} {100 * h.self_share:5.1f}% {h.total_ms_per_step:13.2f} "
            f"{h.calls_per_step:7.0f}  {h.name}"
        )
    return "\n".join(lines)
