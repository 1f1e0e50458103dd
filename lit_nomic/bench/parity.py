"""Backend parity: one MoE layer on an expert backend against the fp32 per-expert reference.

Every backend is compared with :func:`lit_nomic.model.moe_reference.reference_moe_forward` in fp32
(never with another fast backend, which may run the very same kernel), on the output and on the
gradients of the input, the router and every expert tensor. Both sides take the *same* routing,
computed in fp32 from the same router weight, so a comparison measures the expert kernels alone (a
bf16 router would flip near-tied choices and blur the check). Inputs and weights are rounded to
bf16 first, so the only differences left are the kernels' own rounding.

Modes: ``fp32`` (fp32 input and weights), ``bf16`` (bf16 input and weights), ``bf16-mixed`` (fp32
input and weights under ``torch.autocast(bf16)``, Lightning's ``precision='bf16-mixed'``: the
weights' gradients must come back fp32). Used by ``tests/test_gpu_backends.py`` on CUDA, by the CPU
tests that show a broken backend fails the check, and by ``python -m lit_nomic.bench.gpu_check``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_nomic.config import EncoderConfig
from lit_nomic.model.moe import MoEFeedForward
from lit_nomic.model.moe_backends import ExpertParams, get_backend
from lit_nomic.model.moe_reference import reference_moe_forward

MODES = ("fp32", "bf16", "bf16-mixed")
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "bf16-mixed": 2e-2}
"""Relative norm error allowed against the fp32 reference: bf16 keeps 8 mantissa bits (~4e-3 per
value) and the kernels accumulate in fp32, so errors of a correct kernel sit near 3e-3-1e-2."""
NAMES = ("y", "grad x", "grad router", "grad w1", "grad w2", "grad b1", "grad b2")


@dataclass
class ParityResult:
    backend: str
    router: str
    mode: str
    errors: dict[str, float]
    tolerance: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "router": self.router,
            "mode": self.mode,
            "ok": self.ok,
            "tolerance": self.tolerance,
            "errors": self.errors,
            "problems": self.problems,
        }


def relative_error(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def parity_config(
    router: str = "softmax", hidden: int = 256, ffn: int = 1024, experts: int = 8, top_k: int = 2
):
    """The Nomic Embed v2 MoE shape scaled down (8 experts top-2, expert biases on so every tensor is checked)."""
    return EncoderConfig(
        hidden_size=hidden, num_heads=4, ffn_size=ffn, num_experts=experts, top_k=top_k, router=router,
        expert_bias=True, router_init_std=0.5, initializer_range=0.05,
    )  # fmt: skip


def moe_parity(
    backend: str,
    router: str = "softmax",
    mode: str = "bf16",
    device: str | torch.device = "cuda",
    tokens: int = 2048,
    hidden: int = 256,
    ffn: int = 1024,
    experts: int = 8,
    top_k: int = 2,
    seed: int = 0,
) -> ParityResult:
    """Errors of ``backend`` against the fp32 per-expert reference, and what is out of tolerance."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    device = torch.device(device)
    config = parity_config(router, hidden, ffn, experts, top_k)
    torch.manual_seed(seed)
    ref = MoEFeedForward(config).to(device).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.bfloat16().float())
            if p.dim() == 1 and p.abs().sum() == 0:  # zero-init biases: give them values to check
                p.copy_((0.05 * torch.randn_like(p)).bfloat16().float())
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    x = torch.randn(tokens, hidden, generator=gen).bfloat16().float().to(device)
    upstream = torch.randn(tokens, hidden, generator=gen).to(
        device
    )  # dense: grouped_mm rejects stride-0 grads

    # reference: fp32 per-expert loop
    xr = x.clone().requires_grad_(True)
    routing = ref.routing(F.linear(xr, ref.router.weight))
    y_ref = reference_moe_forward(ref, xr, routing)
    e = ref.experts
    wanted = [xr, ref.router.weight, e.w1, e.w2, e.b1, e.b2]
    ref_out = [y_ref.detach(), *torch.autograd.grad((y_ref * upstream).sum(), wanted)]

    # candidate: the backend on the same values, routed by the same fp32 router
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    leaves = [t.detach().clone().to(dtype).requires_grad_(True) for t in (x, e.w1, e.w2, e.b1, e.b2)]
    xc, w1, w2, b1, b2 = leaves
    router_w = ref.router.weight.detach().clone().requires_grad_(True)
    out_bias = ref.output_bias.detach().to(dtype)
    layer_backend = get_backend(backend)
    candidate_routing = ref.routing(F.linear(xc.float(), router_w))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16-mixed"):
        y = layer_backend(xc, candidate_routing, ExpertParams(w1, w2, b1, b2), config.activation) + out_bias
    grads = torch.autograd.grad((y.float() * upstream).sum(), [xc, router_w, w1, w2, b1, b2])
    ours = [y.detach(), *grads]

    tolerance = TOLERANCE[mode]
    result = ParityResult(backend, router, mode, {}, tolerance)
    for name, a, b in zip(NAMES, ours, ref_out, strict=True):
        if a.shape != b.shape:
            result.problems.append(f"{name}: shape {tuple(a.shape)} != reference {tuple(b.shape)}")
            continue
        err = relative_error(a, b)
        result.errors[name] = err
        if not err < tolerance:  # NaN fails too
            result.problems.append(f"{name}: relative error {err:.2e} > {tolerance:.0e}")
    if mode == "bf16-mixed":
        for name, g in zip(NAMES[3:], grads[2:], strict=True):
            if g.dtype != torch.float32:
                result.problems.append(f"{name}: {g.dtype} gradient for fp32 weights under bf16-mixed")
    return result


def assert_parity(
    backend: str, router: str = "softmax", mode: str = "bf16", **kwargs: object
) -> ParityResult:
    """:func:`moe_parity`, failing with every out-of-tolerance tensor named."""
    result = moe_parity(backend, router, mode, **kwargs)  # type: ignore[arg-type]
    assert result.ok, f"{backend} {router} {mode} vs fp32 reference: " + "; ".join(result.problems)
    return result
