"""Expert computation behind one interface: gather -> grouped expert MLP -> weighted combine.

Every backend computes, for a :class:`~lit_nomic.model.routers.Routing`,
``y[t] = sum over assignments (t, e, g) of g * expert_e(x[t])`` with
``expert_e(v) = act(v @ w1[e] + b1[e]) @ w2[e] + b2[e]``, dropless (no token is ever dropped and
no expert is padded to a capacity). Backends:

* ``torch`` (default) - ``torch.nn.functional.grouped_mm`` where it applies (CPU float32/bf16/fp16;
  CUDA bf16 on sm80+), otherwise an exact per-expert fallback.
* ``cuda_grouped_mm`` - the same, but insisting on CUDA grouped_mm (errors instead of falling back).
* ``megablocks`` - megablocks' fused permutation kernels and the ``grouped_gemm`` GEMMs
  (``pip install 'lit-nomic[megablocks]'``; CUDA only).

How the torch backend is laid out, and why. The textbook data path (``xs = x[tok]``, two grouped
GEMMs, ``index_add_(tok, out * gate)``) materialises ``[N, D]`` and ``[N, F]`` tensors (N = T*k):
the gathered input, hidden and expert outputs, their gradients. On CPU every tensor above glibc's
mmap threshold (32 MiB at most) is fresh memory each step, paying a page fault per 4 KiB on first
write - at T=4096, D=384, k=8 about 35 ms per [N, D] tensor, more than the copy itself - and the
gathered input and expert output stay alive until backward. :class:`_ExpertMLP` therefore runs
gather -> GEMM1 -> activation -> GEMM2 -> gate-weighted scatter-add as one autograd op, chunk by
chunk over groups of whole experts (a few MiB of rows each, so temporaries are cache-sized and
recycled by malloc), keeps only what backward needs (the pre-activation and activation, as autograd
would, plus the expert output when that is cheaper than the alternative) and re-gathers the input
in backward. Off CPU the layout is one chunk (no host sync).

Measured (``fwd+bwd``, fp32, T=4,096, D=384, one thread, CPU time, on the shared 2-core box whose
load adds +-10 %): 8 experts top-2 (F=1,536) 1.02-1.07x a dense FFN of width k*F; 64 experts
top-8 at F=192 1.3-1.5x, at F=384 1.1-1.3x; the naive per-expert loop 1.1x and 3.5-3.9x of dense.
The earlier unfused layout measured 1.05-1.09x, 1.5-1.6x and 1.3x on the same runs.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_nomic.model.ffn import activation_fn, activation_grad
from lit_nomic.model.routers import Routing

MEGABLOCKS_INSTALL_HINT = "pip install 'lit-nomic[megablocks]'"
CHUNK_BYTES = 8 << 20
"""Target size of one chunk's ``[rows, D]`` temporaries on CPU: cache-sized, below glibc's mmap
threshold (so freed chunks are recycled without page faults), and large enough that the per-chunk
Python overhead (~10 ops) is noise next to the GEMMs."""
SINGLE_CHUNK_BYTES = 32 << 20
"""Up to this size the ``[N, D]`` temporaries are recycled by malloc anyway (glibc's dynamic mmap
threshold grows to 32 MiB), so the layout is processed as one chunk, without any copy."""
_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
HAS_GROUPED_MM = hasattr(F, "grouped_mm")
"""``torch.nn.functional.grouped_mm`` is public from torch 2.10 (pytorch/pytorch#168298); the
pyproject floor says so, and an older torch runs the exact per-expert fallback, loudly."""
GROUPED_MM_MISSING = (
    f"torch {torch.__version__} has no torch.nn.functional.grouped_mm (public from torch 2.10): "
    "the MoE experts run as a per-expert loop. Install torch>=2.10"
)
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """One ``UserWarning`` per ``key`` per process (a slow path is loud once, not once per layer)."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


@dataclass(frozen=True)
class ExpertParams:
    """The routed experts' weights: ``w1 [E, D, F]``, ``w2 [E, F, D]``, optional ``b1 [E, F]``, ``b2 [E, D]``."""

    w1: Tensor
    w2: Tensor
    b1: Tensor | None = None
    b2: Tensor | None = None

    @property
    def num_experts(self) -> int:
        return int(self.w1.shape[0])


# ---------------------------------------------------------------------------- grouped GEMM primitives
def grouped_mm_applies(dtype: torch.dtype, device: torch.device, *widths: int) -> bool:
    """Whether ``F.grouped_mm`` runs natively on operands of this dtype/device whose rows have these widths.

    CPU: float32/bf16/fp16 with 16-byte aligned rows. CUDA: the CUTLASS kernels want bf16 on sm80+.
    False on a torch without ``F.grouped_mm`` (older than 2.10).
    """
    if not HAS_GROUPED_MM or dtype not in _GROUPED_MM_DTYPES:
        return False
    if device.type == "cuda":
        if dtype != torch.bfloat16 or torch.cuda.get_device_capability(device) < (8, 0):
            return False
    elif device.type != "cpu":
        return False
    item = torch.empty((), dtype=dtype).element_size()
    return all((width * item) % 16 == 0 for width in widths)


def _segment_counts(chunk: ExpertChunk) -> list[int]:
    if chunk.counts is None:  # plan_chunks(host_counts=True) reads them once per layer call
        raise RuntimeError(
            "the per-expert fallback needs the chunk's host counts (plan_chunks(host_counts=True))"
        )
    return chunk.counts


def grouped_matmul(a: Tensor, w: Tensor, chunk: ExpertChunk, use_grouped_mm: bool) -> Tensor:
    """``a[rows of e] @ w[e]`` for the chunk's experts; ``a`` rows expert-major. No autograd."""
    if use_grouped_mm:
        return F.grouped_mm(a, w, offs=chunk.offsets)
    out = a.new_empty((a.shape[0], w.shape[-1]))
    start = 0
    for e, n in enumerate(_segment_counts(chunk)):
        if n:
            torch.mm(a[start : start + n], w[e], out=out[start : start + n])
        start += n
    return out


def grouped_weight_grad(a: Tensor, g: Tensor, chunk: ExpertChunk, use_grouped_mm: bool) -> Tensor:
    """``[E_chunk, K, M]`` with ``a[rows of e]^T @ g[rows of e]`` (zero for experts without rows). No autograd."""
    if use_grouped_mm:
        return F.grouped_mm(a.t(), g, offs=chunk.offsets)
    out = a.new_zeros((chunk.num_experts, a.shape[1], g.shape[1]))
    start = 0
    for e, n in enumerate(_segment_counts(chunk)):
        if n:
            torch.mm(a[start : start + n].t(), g[start : start + n], out=out[e])
        start += n
    return out


def _rowwise_dot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(-1)`` without materialising the product (a batched 1xK @ Kx1)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


# ---------------------------------------------------------------------------- chunking
@dataclass(frozen=True)
class ExpertChunk:
    """Experts ``[first, last)`` whose rows are ``[row_start, row_stop)`` of the expert-major layout."""

    first: int
    last: int
    row_start: int
    row_stop: int
    offsets: Tensor
    """int32 [E_chunk] cumulative row counts relative to ``row_start`` (grouped_mm's ``offs``)."""
    tokens_per_expert: Tensor
    counts: list[int] | None = None
    """Host copy of the per-expert counts when already known (CPU), for the exact fallback."""

    @property
    def experts(self) -> slice:
        return slice(self.first, self.last)

    @property
    def rows(self) -> slice:
        return slice(self.row_start, self.row_stop)

    @property
    def num_experts(self) -> int:
        return self.last - self.first

    @property
    def num_rows(self) -> int:
        return self.row_stop - self.row_start


def plan_chunks(
    routing: Routing,
    row_bytes: int,
    budget_bytes: int = CHUNK_BYTES,
    single_chunk_bytes: int = SINGLE_CHUNK_BYTES,
    host_counts: bool = False,
) -> list[ExpertChunk]:
    """Split the experts into consecutive groups of about ``budget_bytes / row_bytes`` rows.

    A chunk takes the experts whose first row falls in the same budget-sized window of rows, so an
    expert is never split (its rows form one GEMM) and a chunk overruns the window by at most its
    last expert. Everything is one chunk off CPU (nothing is read back to the host unless
    ``host_counts``: the per-expert fallback needs the counts there, read once here for forward and
    backward) and when all rows together take at most ``single_chunk_bytes``.
    """
    counts_t = routing.tokens_per_expert
    num_experts, num_rows = routing.num_experts, routing.num_assignments
    if counts_t.device.type != "cpu" or num_rows * row_bytes <= single_chunk_bytes:
        counts = counts_t.tolist() if counts_t.device.type == "cpu" or host_counts else None
        return [ExpertChunk(0, num_experts, 0, num_rows, routing.offsets(), counts_t, counts)]
    ends = torch.cumsum(counts_t, 0)
    starts = ends - counts_t
    max_rows = max(1, budget_bytes // max(row_bytes, 1))
    group = torch.div(starts, max_rows, rounding_mode="floor")  # non-decreasing
    firsts = [0] + (torch.nonzero(group[1:] != group[:-1]).flatten() + 1).tolist()
    counts = counts_t.tolist()
    starts_l, ends_l = starts.tolist(), ends.tolist()
    chunks = []
    for first, last in zip(firsts, firsts[1:] + [num_experts], strict=True):
        row_start, row_stop = starts_l[first], ends_l[last - 1]
        offsets = (ends[first:last] - row_start).to(torch.int32)
        chunks.append(
            ExpertChunk(first, last, row_start, row_stop, offsets, counts_t[first:last], counts[first:last])
        )
    return chunks


def _join(parts: list[Tensor]) -> Tensor:
    """Concatenate per-chunk results along dim 0; a single chunk is returned as is (no copy)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


# ---------------------------------------------------------------------------- the fused expert MLP
@dataclass(frozen=True)
class _MLPPlan:
    chunks: list[ExpertChunk]
    num_tokens: int
    activation: str
    use_grouped_mm: bool
    keep_output: bool
    """Save the expert outputs for the gate gradient (see :class:`_ExpertMLP`)."""


class _ExpertMLP(torch.autograd.Function):
    """``y[t] = sum over rows r of token t: gate[r] * (act(x[t] @ w1[e] + b1[e]) @ w2[e] + b2[e])``.

    Gather, both grouped GEMMs, activation and weighted combine run chunk by chunk, so nothing of
    size ``[N, *]`` is ever allocated: per chunk only the pre-activation ``h``, the activation ``a``
    (both needed by backward, as autograd would keep them) and a few cache-sized temporaries. The
    gathered input is not kept either; backward re-gathers it from ``x``.

    The gate gradient is ``<dL/dy[t], expert output>`` per row. With ``keep_output`` the outputs are
    saved and the dot runs over D; without, it runs over F as ``<dL/dy[t] @ w2^T, a>`` (a product
    backward needs anyway) at the price of one more F-wide pass. That is ``2D`` against ``D + 2F``
    element passes per row, so outputs are kept when ``D < 2F``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        w1: Tensor,
        b1: Tensor | None,
        w2: Tensor,
        b2: Tensor | None,
        gates: Tensor,
        token_index: Tensor,
        expert_index: Tensor,
        plan: _MLPPlan,
    ) -> Tensor:
        act = activation_fn(plan.activation)
        y = x.new_zeros((plan.num_tokens, w2.shape[-1]))
        gate_rows = gates.to(x.dtype).unsqueeze(1)
        hs, acts, outs = [], [], []
        for c in plan.chunks:
            tokens = token_index[c.rows]
            h = grouped_matmul(x.index_select(0, tokens), w1[c.experts], c, plan.use_grouped_mm)
            if b1 is not None:
                h += b1.index_select(0, expert_index[c.rows])
            a = act(h)
            out = grouped_matmul(a, w2[c.experts], c, plan.use_grouped_mm)
            if b2 is not None:
                out += b2.index_select(0, expert_index[c.rows])
            if plan.keep_output:
                outs.append(out)
                out = out * gate_rows[c.rows]
            else:
                out.mul_(gate_rows[c.rows])
            y.index_add_(0, tokens, out)
            hs.append(h)
            acts.append(a)
        ctx.save_for_backward(x, w1, b1, w2, b2, gates, token_index, expert_index, *hs, *acts, *outs)
        ctx.plan = plan
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        plan: _MLPPlan = ctx.plan
        x, w1, b1, w2, b2, gates, token_index, expert_index, *per_chunk = ctx.saved_tensors
        n = len(plan.chunks)
        hs, acts, outs = per_chunk[:n], per_chunk[n : 2 * n], per_chunk[2 * n :]
        need_x, need_w1, need_b1, need_w2, need_b2, need_g = ctx.needs_input_grad[:6]
        act_grad = activation_grad(plan.activation)
        grad_y = grad_y.contiguous()
        grad_x = torch.zeros_like(x) if need_x else None
        grad_b1 = torch.zeros_like(b1) if need_b1 else None
        grad_b2 = torch.zeros_like(b2) if need_b2 else None
        grad_g = torch.empty_like(gates) if need_g else None
        w1_parts, w2_parts = [], []
        gate_rows = gates.to(x.dtype).unsqueeze(1)
        for i, c in enumerate(plan.chunks):
            tokens, g_c, h, a = token_index[c.rows], gate_rows[c.rows], hs[i], acts[i]
            w2t = w2[c.experts].transpose(1, 2)
            gy = grad_y.index_select(0, tokens)  # dL/dy of each row's token
            if plan.keep_output:
                if grad_g is not None:
                    grad_g[c.rows] = _rowwise_dot(gy, outs[i]).to(grad_g.dtype)
                gy.mul_(g_c)  # now dL/d(expert output)
                grad_a = grouped_matmul(gy, w2t, c, plan.use_grouped_mm)
            else:
                u = grouped_matmul(gy, w2t, c, plan.use_grouped_mm)
                if grad_g is not None:
                    dot = _rowwise_dot(u, a)  # <gy, a @ w2> computed as <gy @ w2^T, a>
                    if b2 is not None:
                        dot += _rowwise_dot(gy, b2.index_select(0, expert_index[c.rows]))
                    grad_g[c.rows] = dot.to(grad_g.dtype)
                gy.mul_(g_c)  # now dL/d(expert output)
                grad_a = u.mul_(g_c)
            if need_w2:
                w2_parts.append(grouped_weight_grad(a, gy, c, plan.use_grouped_mm))
            if grad_b2 is not None:
                grad_b2.index_add_(0, expert_index[c.rows], gy)
            grad_h = act_grad(grad_a, h)
            if grad_b1 is not None:
                grad_b1.index_add_(0, expert_index[c.rows], grad_h)
            if need_w1:
                xs = x.index_select(0, tokens)
                w1_parts.append(grouped_weight_grad(xs, grad_h, c, plan.use_grouped_mm))
            if grad_x is not None:
                w1t = w1[c.experts].transpose(1, 2)
                grad_x.index_add_(0, tokens, grouped_matmul(grad_h, w1t, c, plan.use_grouped_mm))
        grad_w1 = _join(w1_parts) if need_w1 else None
        grad_w2 = _join(w2_parts) if need_w2 else None
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_g, None, None, None


def _add_expert_bias(h: Tensor, bias: Tensor | None, routing: Routing) -> Tensor:
    """Add ``bias[e]`` to every row of expert e (in place: the producing op does not keep its output)."""
    if bias is None:
        return h
    rows = torch.repeat_interleave(bias, routing.tokens_per_expert, dim=0, output_size=h.shape[0])
    return h.add_(rows)


def grouped_experts(
    x: Tensor,
    routing: Routing,
    params: ExpertParams,
    activation: str,
    *,
    require_grouped_mm: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    single_chunk_bytes: int = SINGLE_CHUNK_BYTES,
) -> Tensor:
    """The routed MoE output ``[T, D]`` of the torch backend (one fused, chunked autograd op).

    Under autocast the experts run in the autocast dtype (as an ``nn.Linear`` would) with autocast
    switched off inside, so that no op of the fused kernel gets cast behind its back; weights of
    another dtype than the input are cast differentiably (their gradients stay in their dtype).
    """
    x, params = cast_for_autocast(x, params)
    hidden, width = params.w1.shape[1], params.w1.shape[2]
    use_grouped_mm = grouped_mm_applies(x.dtype, x.device, hidden, width)
    if require_grouped_mm and not use_grouped_mm:
        raise RuntimeError(
            "moe_backend='cuda_grouped_mm' needs CUDA bf16 tensors (and weights) on an sm80+ GPU with "
            f"16-byte aligned rows; got {x.dtype} input, {params.w1.dtype} weights on {x.device}, widths "
            f"{hidden} and {width}. Use moe_backend='torch' for the automatic fallback."
            + ("" if HAS_GROUPED_MM else f" {GROUPED_MM_MISSING}.")
        )
    if not use_grouped_mm and x.device.type != "cpu":
        warn_once(
            f"fallback:{x.device.type}:{x.dtype}",
            f"MoE experts on {x.device.type} in {x.dtype} run as a per-expert Python loop (one host sync "
            "per layer call): grouped_mm there needs bf16 on sm80+ with 16-byte aligned rows "
            f"(widths {hidden}, {width}). Train with precision='bf16-mixed' or bf16 weights."
            + ("" if HAS_GROUPED_MM else " " + GROUPED_MM_MISSING),
        )
    elif not HAS_GROUPED_MM:
        warn_once("no-grouped-mm", GROUPED_MM_MISSING)
    chunks = plan_chunks(
        routing,
        max(hidden, width) * x.element_size(),
        chunk_bytes,
        single_chunk_bytes,
        host_counts=not use_grouped_mm,
    )
    plan = _MLPPlan(chunks, routing.num_tokens, activation, use_grouped_mm, keep_output=hidden < 2 * width)
    gates = routing.gates_expert_major()
    with torch.autocast(x.device.type, enabled=False):
        return _ExpertMLP.apply(
            x,
            params.w1,
            params.b1,
            params.w2,
            params.b2,
            gates,
            routing.token_index,
            routing.expert_index,
            plan,
        )


def cast_for_autocast(x: Tensor, params: ExpertParams) -> tuple[Tensor, ExpertParams]:
    """Input and weights in the compute dtype: autocast's when it is on (as ``nn.Linear`` would run),
    else the input's. Weights are cast differentiably, so their gradients stay in their own dtype
    (fp32 master weights under bf16-mixed). Every backend calls this before its own kernels, which
    autocast does not see (a fused autograd op, megablocks' custom ops)."""
    compute = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    if x.dtype != compute or any(
        p is not None and p.dtype != compute for p in (params.w1, params.w2, params.b1, params.b2)
    ):
        x = x.to(compute)
        params = ExpertParams(
            *(None if p is None else p.to(compute) for p in (params.w1, params.w2, params.b1, params.b2))
        )
    return x, params


def combine_index_add(out: Tensor, routing: Routing) -> Tensor:
    """Portable combine of expert-major rows ``out [N, D]``: weight them, scatter-add into ``[T, D]``."""
    weighted = out * routing.gates_expert_major().to(out.dtype).unsqueeze(1)
    return out.new_zeros((routing.num_tokens, out.shape[1])).index_add(0, routing.token_index, weighted)


# ---------------------------------------------------------------------------- backends
class ExpertBackend(ABC):
    """Computes the routed part of the MoE output; stateless, parameters come from the layer."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(self, x: Tensor, routing: Routing, params: ExpertParams, activation: str) -> Tensor:
        """``x [T, D]`` -> ``[T, D]``: the gate-weighted sum of each token's experts."""


class TorchBackend(ExpertBackend):
    """Dropless MoE in plain PyTorch: grouped_mm experts with the permutations fused in."""

    name = "torch"
    require_grouped_mm: ClassVar[bool] = False

    def __init__(self, chunk_bytes: int = CHUNK_BYTES, single_chunk_bytes: int = SINGLE_CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self.single_chunk_bytes = single_chunk_bytes

    def __call__(self, x: Tensor, routing: Routing, params: ExpertParams, activation: str) -> Tensor:
        return grouped_experts(
            x,
            routing,
            params,
            activation,
            require_grouped_mm=self.require_grouped_mm,
            chunk_bytes=self.chunk_bytes,
            single_chunk_bytes=self.single_chunk_bytes,
        )


class CudaGroupedMMBackend(TorchBackend):
    """The torch backend restricted to CUDA grouped_mm (bf16, sm80+): no silent slow fallback."""

    name = "cuda_grouped_mm"
    require_grouped_mm = True

    def __call__(self, x: Tensor, routing: Routing, params: ExpertParams, activation: str) -> Tensor:
        if x.device.type != "cuda":
            raise RuntimeError(
                f"moe_backend='cuda_grouped_mm' needs CUDA tensors, got {x.device}; use moe_backend='torch' on CPU"
            )
        return super().__call__(x, routing, params, activation)


class MegablocksBackend(ExpertBackend):
    """megablocks' dMoE data path: fused gather/scatter kernels + ``grouped_gemm.ops.gmm``.

    Mirrors ``megablocks.layers.dmoe.ParallelDroplessMLP.grouped_forward_once``: ``ops.gather`` with
    (indices, bin_ids, bins) = (flat [T, k] position of each sorted assignment, its expert, inclusive
    cumulative counts), ``gmm`` with CPU int64 ``batch_sizes``, and ``ops.scatter`` weighted by the
    gates in flat [T, k] order. Our ``w1`` is stored [E, D, F] so no ``trans_b`` is needed.
    Expert choice (variable assignments per token) uses a torch gather/combine around the gmm.
    """

    name = "megablocks"
    requires_cuda: bool = True  # megablocks' kernels are Triton/CUDA; tests swap in CPU doubles

    def __init__(self) -> None:
        try:
            import megablocks.ops as mb_ops
            from megablocks import grouped_gemm_util
        except ImportError as err:
            raise ImportError(
                "moe_backend='megablocks' needs the megablocks and grouped_gemm packages (CUDA only): "
                f"{MEGABLOCKS_INSTALL_HINT}, or set moe_backend='torch'"
            ) from err
        if not grouped_gemm_util.grouped_gemm_is_available():
            raise ImportError(
                "moe_backend='megablocks' needs the grouped_gemm package for its dropless GEMMs: "
                f"{MEGABLOCKS_INSTALL_HINT}, or set moe_backend='torch'"
            )
        self._ops = mb_ops
        self._gmm = grouped_gemm_util.ops.gmm

    def _mlp(self, xs: Tensor, routing: Routing, params: ExpertParams, activation: str) -> Tensor:
        batch_sizes = routing.tokens_per_expert.to("cpu", torch.int64)
        act = activation_fn(activation)
        h = act(_add_expert_bias(self._gmm(xs, params.w1, batch_sizes), params.b1, routing))
        return _add_expert_bias(self._gmm(h, params.w2, batch_sizes), params.b2, routing)

    def __call__(self, x: Tensor, routing: Routing, params: ExpertParams, activation: str) -> Tensor:
        if self.requires_cuda and x.device.type != "cuda":
            raise RuntimeError(
                f"moe_backend='megablocks' runs on CUDA only, got {x.device}; use moe_backend='torch'"
            )
        # grouped_gemm's gmm wants bf16 operands and autocast does not reach custom ops: cast as the
        # torch backend does (fp32 master weights under bf16-mixed get bf16 copies, fp32 gradients).
        x, params = cast_for_autocast(x, params)
        with torch.autocast(x.device.type, enabled=False):
            return self._forward(x, routing, params, activation)

    def _forward(self, x: Tensor, routing: Routing, params: ExpertParams, activation: str) -> Tensor:
        if routing.top_k is None:
            out = self._mlp(x.index_select(0, routing.token_index), routing, params, activation)
            return combine_index_add(out, routing)
        indices = routing.expert_major.int()
        bin_ids = routing.expert_index.int()
        bins = routing.offsets()
        xs = self._ops.gather(x, indices, bin_ids, bins, routing.top_k)
        out = self._mlp(xs, routing, params, activation)
        return self._ops.scatter(out, indices, bin_ids, routing.gates.to(out.dtype), bins, routing.top_k)


_BACKENDS: dict[str, type[ExpertBackend]] = {
    TorchBackend.name: TorchBackend,
    CudaGroupedMMBackend.name: CudaGroupedMMBackend,
    MegablocksBackend.name: MegablocksBackend,
}


def backend_names() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str) -> ExpertBackend:
    """The backend called ``name`` (``EncoderConfig.moe_backend``); optional ones fail here, clearly."""
    try:
        cls = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown moe_backend {name!r}; choose one of: {', '.join(_BACKENDS)}") from None
    return cls()
