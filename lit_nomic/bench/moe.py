"""MoE layer benchmark: forward+backward of one layer, ours against the baselines that matter.

Per shape (tokens T, hidden D, expert width F, experts E, top-k k, dtype) the variants are timed
interleaved on the same input and the same upstream gradient:

- ``ours``: :class:`~lit_nomic.model.moe.MoEFeedForward` with ``moe_backend="torch"``;
- ``loop``: the naive per-expert Python loop (:func:`~lit_nomic.model.moe_reference.reference_moe_forward`)
  over the *same* stacked parameters. Slicing ``w1[e]`` of one ``[E, D, F]`` parameter makes each
  expert's backward accumulate a full ``[E, D, F]`` gradient (E² work): a pessimistic baseline;
- ``linear_loop``: the fair loop baseline, contrastors' / HF remote code's fallback: one
  ``nn.Linear`` pair per expert in a ``ModuleList`` (weights copied from ``ours``), the same router,
  a Python loop over experts gathering each expert's tokens (:class:`LinearLoopMoE`);
- ``dense``: a dense :class:`~lit_nomic.model.ffn.FeedForward` whose width is the MoE layer's active
  width ``(k + shared) x F``, i.e. the same matmul FLOPs per token. ``grouped_over_dense`` is then
  the pure overhead of routing, permuting and grouping, the number an MoE implementation is judged on;
- ``megablocks`` / ``cuda_grouped_mm``: the same layer on those backends, when a CUDA device and
  the kernels exist (otherwise skipped with a note saying why).

The upstream gradient is a fixed dense random tensor ``g`` (loss = ``(y * g).sum()``): ``y.sum()``
would hand backward a stride-0 gradient that grouped_mm's backward rejects, and a constant gradient
is not what a real network sends back either.

FLOPs: ``active = 4·T·D·(k + shared)·F`` per forward (two matmuls, 2 FLOPs per MAC); fwd+bwd = 3x
that. The router's ``2·T·D·E`` is left out so that ours and dense share one FLOP count and the
FLOP/s ratio is exactly the inverse time ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import product

import torch
from torch import nn

from lit_nomic.bench.timing import Row, device_sync, time_interleaved
from lit_nomic.config import EncoderConfig

__all__ = [
    "DTYPES",
    "MoEShape",
    "default_sweep",
    "grid_sweep",
    "quick_sweep",
    "run_moe_benchmark",
    "run_moe_row",
]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Targets of the performance issue; the checks below are applied row by row.
DENSE_TARGET_8X2 = 1.10  # ours <= 1.10 x dense-equal-active at 8 experts top-2, >= 4,096 tokens
DENSE_TARGET_64X8 = 1.5  # ours <= 1.5 x dense-equal-active at 64 experts top-8
DENSE_TARGET_MIN_TOKENS = 4096


@dataclass(frozen=True)
class MoEShape:
    """One benchmark shape. ``ffn`` is the dense FFN width; experts are ``ffn // ffn_div`` wide."""

    tokens: int
    hidden: int
    ffn: int
    num_experts: int
    top_k: int
    ffn_div: int = 1
    num_shared_experts: int = 0
    dtype: str = "fp32"
    label: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"MoEShape.dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        for name in ("tokens", "hidden", "ffn", "num_experts", "top_k", "ffn_div"):
            if getattr(self, name) < 1:
                raise ValueError(f"MoEShape.{name} must be >= 1, got {getattr(self, name)}")
        if self.top_k > self.num_experts:
            raise ValueError(f"MoEShape.top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.ffn % self.ffn_div:
            raise ValueError(f"MoEShape.ffn_div={self.ffn_div} does not divide ffn={self.ffn}")

    @property
    def expert_ffn(self) -> int:
        return self.ffn // self.ffn_div

    @property
    def active_ffn(self) -> int:
        """Width of the dense FFN with the MoE layer's per-token matmul FLOPs."""
        return (self.top_k + self.num_shared_experts) * self.expert_ffn

    @property
    def active_flops_forward(self) -> int:
        return 4 * self.tokens * self.hidden * self.active_ffn

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def name(self) -> str:
        fine = f" /{self.ffn_div}" if self.ffn_div > 1 else ""
        shared = f" +{self.num_shared_experts}sh" if self.num_shared_experts else ""
        prefix = f"{self.label} " if self.label else ""
        return (
            f"{prefix}T={self.tokens} D={self.hidden} F={self.expert_ffn}{fine} "
            f"E={self.num_experts} k={self.top_k}{shared} {self.dtype}"
        )

    def config(self, backend: str = "torch") -> EncoderConfig:
        """A one-layer MoE EncoderConfig of this shape (Nomic v2 router: softmax, no renormalisation)."""
        return EncoderConfig(
            vocab_size=8,
            hidden_size=self.hidden,
            num_heads=1,
            num_layers=1,
            ffn_size=self.ffn,
            ffn_div=self.ffn_div,
            moe_layers=[0],
            num_experts=self.num_experts,
            top_k=self.top_k,
            num_shared_experts=self.num_shared_experts,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            moe_backend=backend,
        )


# ----------------------------------------------------------------------------- sweeps
MINILM = (384, 1536)
NOMIC_V2 = (768, 3072)


def default_sweep(bf16: str = "none", full: bool = False) -> list[MoEShape]:
    """The issue's sweep: tokens 512-8,192, experts 8-64, top-k 1-8, MiniLM and v2 widths, fine-grained 64x8.

    The CPU sweep (``full=False``) spans those ranges sparsely so it fits in ~5 minutes on 2 cores:
    MiniLM 8x2 over tokens, top-k and expert count at MiniLM width, the two targets' shapes at v2
    width. ``full=True`` (the default on CUDA) takes every token count at both widths and the top-k
    and expert sweeps at 2,048 tokens.

    ``bf16``: ``none``; ``small`` adds one bf16 row at the smallest shape (CPU bf16 matmul is ~60x
    slower than fp32 on the reference machine); ``all`` repeats the whole sweep in bf16.
    """
    shapes: list[MoEShape] = []
    if full:
        for (d, f), label in ((MINILM, "minilm"), (NOMIC_V2, "v2")):
            shapes += [MoEShape(t, d, f, 8, 2, label=label) for t in (512, 2048, 4096, 8192)]
        shapes += [MoEShape(2048, *MINILM, 8, k, label="minilm") for k in (1, 4, 8)]
        shapes += [MoEShape(2048, *MINILM, e, 2, label="minilm") for e in (16, 32, 64)]
    else:
        shapes += [MoEShape(t, *MINILM, 8, 2, label="minilm") for t in (512, 4096, 8192)]
        shapes += [MoEShape(512, *MINILM, 8, k, label="minilm") for k in (1, 4, 8)]
        # 32, not 64: the per-expert loop's backward materialises a full [E, D, F] gradient per expert
        # (E^2 cost), 30 s per call at 64 full-width experts on 2 cores. 64 experts are covered by
        # the fine-grained rows below; the full sweep times 64 full-width experts too.
        shapes += [MoEShape(2048, *MINILM, e, 2, label="minilm") for e in (16, 32)]
        shapes.append(MoEShape(4096, *NOMIC_V2, 8, 2, label="v2"))
    for (d, f), label in ((MINILM, "minilm"), (NOMIC_V2, "v2")):  # fine-grained: 64 experts top-8, ffn/8
        shapes.append(MoEShape(4096, d, f, 64, 8, ffn_div=8, label=label + "-fine"))
    if bf16 == "all":
        shapes += [MoEShape(**{**asdict(s), "dtype": "bf16"}) for s in shapes]
    elif bf16 == "small":
        shapes.append(MoEShape(512, *MINILM, 8, 2, dtype="bf16", label="minilm"))
    elif bf16 != "none":
        raise ValueError(f"bf16 must be none, small or all; got {bf16!r}")
    return shapes


def quick_sweep(bf16: str = "none") -> list[MoEShape]:
    """Tiny shapes that exercise every code path (coarse and fine-grained, k=1, shared expert) in seconds."""
    shapes = [
        MoEShape(256, 64, 128, 4, 2, label="tiny"),
        MoEShape(256, 64, 128, 8, 1, label="tiny"),
        MoEShape(256, 64, 128, 16, 4, ffn_div=4, label="tiny-fine"),
        MoEShape(256, 64, 128, 4, 1, num_shared_experts=1, label="tiny-shared"),
    ]
    if bf16 in ("small", "all"):
        shapes.append(MoEShape(128, 64, 128, 4, 2, dtype="bf16", label="tiny"))
    elif bf16 != "none":
        raise ValueError(f"bf16 must be none, small or all; got {bf16!r}")
    return shapes


def grid_sweep(
    tokens: Sequence[int],
    hidden: int,
    ffn: int,
    experts: Sequence[int],
    top_k: Sequence[int],
    ffn_div: int = 1,
    num_shared_experts: int = 0,
    dtypes: Sequence[str] = ("fp32",),
) -> list[MoEShape]:
    """The cartesian product of user-given values (combinations with top_k > experts are skipped)."""
    return [
        MoEShape(t, hidden, ffn, e, k, ffn_div, num_shared_experts, dt, label="custom")
        for dt, t, e, k in product(dtypes, tokens, experts, top_k)
        if k <= e
    ]


# ----------------------------------------------------------------------------- variants
class LinearLoopMoE(nn.Module):
    """The HF / contrastors fallback MoE: ``ModuleList`` of per-expert ``fc1``/``fc2`` ``nn.Linear``,
    a loop over experts, ``index_add_`` of the gate-weighted outputs. Routing reuses ``layer``'s
    router (shared weights), so only the expert computation differs from ``ours``."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        from lit_nomic.model.moe import MoEFeedForward

        assert isinstance(layer, MoEFeedForward)
        self.layer = layer
        e, d, f = layer.experts.w1.shape
        bias = layer.experts.b1 is not None
        w = layer.experts.w1
        self.fc1 = nn.ModuleList(nn.Linear(d, f, bias=bias, device=w.device, dtype=w.dtype) for _ in range(e))
        self.fc2 = nn.ModuleList(nn.Linear(f, d, bias=bias, device=w.device, dtype=w.dtype) for _ in range(e))
        with torch.no_grad():
            for i in range(e):
                self.fc1[i].weight.copy_(layer.experts.w1[i].t())
                self.fc2[i].weight.copy_(layer.experts.w2[i].t())
                if bias:
                    self.fc1[i].bias.copy_(layer.experts.b1[i])
                    self.fc2[i].bias.copy_(layer.experts.b2[i])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        routing = layer.route(x)
        weights = torch.zeros(x.shape[0], layer.num_experts, dtype=routing.gates.dtype, device=x.device)
        rows = routing.token_index.index_select(0, routing.token_major)
        cols = routing.expert_index.index_select(0, routing.token_major)
        weights = weights.index_put((rows, cols), routing.gates)
        y = torch.zeros_like(x)
        for e in range(layer.num_experts):
            (tokens,) = torch.nonzero(weights[:, e], as_tuple=True)
            if tokens.numel() == 0:
                continue
            out = self.fc2[e](layer.act(self.fc1[e](x[tokens])))
            y = y.index_add(0, tokens, out * weights[tokens, e].unsqueeze(1).to(out.dtype))
        if layer.shared_expert is not None:
            y = y + layer.shared_expert(x)
        if layer.output_bias is not None:
            y = y + layer.output_bias
        return y


def _fwd_bwd(
    forward: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, x: torch.Tensor, g: torch.Tensor
) -> Callable[[], None]:
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        (forward(x) * g).sum().backward()

    return step


def _backend_layer(
    ours: nn.Module, shape: MoEShape, backend: str, device: torch.device
) -> tuple[nn.Module | None, str]:
    """The same weights on another backend, or (None, why not)."""
    if device.type != "cuda":
        return None, f"{backend}: skipped, needs a CUDA device (ran on {device.type})"
    if backend == "megablocks":
        try:
            import megablocks  # noqa: F401
        except ImportError:
            return None, "megablocks: skipped, package not installed (pip install 'lit-nomic[megablocks]')"
    from lit_nomic.model.moe import MoEFeedForward

    try:
        layer = MoEFeedForward(shape.config(backend)).to(device=device, dtype=shape.torch_dtype)
        layer.load_state_dict(ours.state_dict())
        probe = torch.randn(8, shape.hidden, device=device, dtype=shape.torch_dtype)
        layer(probe)
    except Exception as err:  # a missing kernel is reported, not fatal: the other variants still run
        return None, f"{backend}: skipped, {type(err).__name__}: {err}"
    return layer, ""


def run_moe_row(
    shape: MoEShape,
    device: torch.device | str = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    max_repeats: int = 20,
    budget_s: float = 4.0,
    backends: Sequence[str] = ("megablocks", "cuda_grouped_mm"),
    seed: int = 0,
    clock: str = "wall",
) -> Row:
    """Time all variants on one shape and derive rates, ratios and target checks."""
    from lit_nomic.model.ffn import FeedForward
    from lit_nomic.model.moe import MoEFeedForward
    from lit_nomic.model.moe_reference import reference_moe_forward

    device = torch.device(device)
    dtype = shape.torch_dtype
    torch.manual_seed(seed)
    config = shape.config("torch")
    ours = MoEFeedForward(config).to(device=device, dtype=dtype).train()
    dense = FeedForward(shape.hidden, shape.active_ffn, config.activation, bias=True).to(
        device=device, dtype=dtype
    )
    x = torch.randn(shape.tokens, shape.hidden, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(shape.tokens, shape.hidden, device=device, dtype=dtype)

    variants: dict[str, Callable[[], None]] = {
        "ours": _fwd_bwd(lambda t: ours(t).y, ours, x, g),
        "dense": _fwd_bwd(dense, dense, x, g),
        "loop": _fwd_bwd(lambda t: reference_moe_forward(ours, t), ours, x, g),
    }
    linear_loop = LinearLoopMoE(ours).train()
    variants["linear_loop"] = _fwd_bwd(linear_loop, linear_loop, x, g)
    notes: list[str] = []
    for backend in backends:
        layer, why = _backend_layer(ours, shape, backend, device)
        if layer is None:
            notes.append(why)
        else:
            variants[backend] = _fwd_bwd(lambda t, m=layer: m(t).y, layer, x, g)

    with torch.no_grad():
        load = ours(x.detach()).tokens_per_expert.float()
    times = time_interleaved(
        variants,
        warmup=warmup,
        repeats=repeats,
        max_repeats=max_repeats,
        budget_s=budget_s,
        sync=device_sync(device),
        clock=clock,
    )

    row = Row(
        benchmark="moe", name=shape.name, shape=asdict(shape) | {"device": device.type}, dtype=shape.dtype
    )
    row.shape.update(expert_ffn=shape.expert_ffn, active_ffn=shape.active_ffn)
    row.times = times
    train_flops = 3 * shape.active_flops_forward
    for variant, stat in times.items():
        seconds = stat.median_ms / 1e3
        row.metrics[variant] = {
            "ms": stat.median_ms,
            "tokens_per_s": shape.tokens / seconds,
            "flops_per_s": train_flops / seconds,
        }
    row.metrics["ours"]["max_over_mean_expert_load"] = float(load.max() / load.mean())
    row.ratio("grouped_over_dense", "ours", "dense")
    row.ratio("loop_over_grouped", "loop", "ours")
    row.ratio("linear_loop_over_grouped", "linear_loop", "ours")
    if "megablocks" in times:
        row.ratio("megablocks_over_grouped", "megablocks", "ours")
    if "cuda_grouped_mm" in times:
        row.ratio("cuda_grouped_mm_over_grouped", "cuda_grouped_mm", "ours")
    _apply_targets(row, shape)
    row.notes = notes
    return row


def _apply_targets(row: Row, shape: MoEShape) -> None:
    if shape.num_experts == 8 and shape.top_k == 2 and shape.tokens >= DENSE_TARGET_MIN_TOKENS:
        row.check(
            "dense_overhead_8x2", "grouped_over_dense", "<=", DENSE_TARGET_8X2,
            f"ours <= {DENSE_TARGET_8X2}x dense-equal-active at 8 experts top-2, >= {DENSE_TARGET_MIN_TOKENS:,} tokens",
        )  # fmt: skip
    if shape.num_experts == 64 and shape.top_k == 8:
        row.check(
            "dense_overhead_64x8", "grouped_over_dense", "<=", DENSE_TARGET_64X8,
            f"ours <= {DENSE_TARGET_64X8}x dense-equal-active at 64 experts top-8",
        )  # fmt: skip
    row.check(
        "not_slower_than_loop", "loop_over_grouped", ">=", 1.0, "ours never slower than the per-expert loop"
    )
    if "linear_loop_over_grouped" in row.ratios:
        row.check(
            "not_slower_than_linear_loop", "linear_loop_over_grouped", ">=", 1.0,
            "ours never slower than the nn.Linear-per-expert loop (contrastors / HF fallback)",
        )  # fmt: skip


def run_moe_benchmark(
    shapes: Sequence[MoEShape],
    device: torch.device | str = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    max_repeats: int = 20,
    budget_s: float = 4.0,
    log: Callable[[str], None] | None = print,
    clock: str = "wall",
) -> list[Row]:
    """Run every shape; ``log`` receives one progress line per row."""
    rows = []
    for i, shape in enumerate(shapes):
        row = run_moe_row(shape, device, warmup, repeats, max_repeats, budget_s, clock=clock)
        rows.append(row)
        if log is not None:
            r = row.ratios
            log(
                f"[moe {i + 1}/{len(shapes)}] {row.name}: ours {row.times['ours'].median_ms:.2f} ms, "
                f"grouped/dense {r['grouped_over_dense']:.2f}x, loop/grouped {r['loop_over_grouped']:.2f}x"
                + "".join(
                    f" [{c.name}: {'met' if c.met else 'MISSED'}]"
                    for c in row.checks
                    if c.name != "not_slower_than_loop"
                )
            )
    return rows
