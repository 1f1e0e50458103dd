"""GPU backends against the torch backend, in bf16 on CUDA: CUDA grouped_mm, megablocks and flash-attn.

Skipped without CUDA (and megablocks / flash-attn each without their package). Both sides of every
comparison run the same router in bf16, so they route identically and differ only in the kernels;
errors are measured as a norm ratio, the natural scale for bf16 (8 mantissa bits, ~4e-3 per value).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lit_nomic.config import EncoderConfig, preset
from lit_nomic.model.encoder import Encoder
from lit_nomic.model.moe import MoEFeedForward

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
HAS_MEGABLOCKS = importlib.util.find_spec("megablocks") is not None
HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None
BF16_REL = 2e-2  # relative norm error allowed between two bf16 kernels (fp32 accumulation in both)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def moe_config(backend: str, router: str) -> EncoderConfig:
    """The Nomic Embed v2 MoE shape scaled down: 8 experts, top-2, widths that grouped GEMMs accept."""
    return EncoderConfig(
        hidden_size=256, num_heads=4, ffn_size=1024, num_experts=8, top_k=2, router=router,
        expert_bias=True, router_init_std=0.5, initializer_range=0.05, moe_backend=backend,
    )  # fmt: skip


def moe_outputs(backend: str, router: str, x: torch.Tensor, upstream: torch.Tensor) -> list[torch.Tensor]:
    """Output and gradients (input, router, both expert matrices, expert bias) of one layer."""
    torch.manual_seed(0)  # same weights for every backend
    layer = MoEFeedForward(moe_config(backend, router)).cuda().to(torch.bfloat16).eval()
    x = x.detach().clone().requires_grad_(True)
    y = layer(x).y
    params = [x, layer.router.weight, layer.experts.w1, layer.experts.w2, layer.experts.b2]
    grads = torch.autograd.grad((y.float() * upstream).sum(), params)
    return [y.detach(), *grads]


def assert_backend_matches_torch(backend: str, router: str) -> None:
    torch.manual_seed(1)
    x = torch.randn(2048, 256, device="cuda", dtype=torch.bfloat16)
    upstream = torch.randn(2048, 256, device="cuda")  # dense: grouped_mm's backward rejects stride-0 grads
    ours = moe_outputs("torch", router, x, upstream)
    other = moe_outputs(backend, router, x, upstream)
    names = ["y", "grad x", "grad router", "grad w1", "grad w2", "grad b2"]
    for name, a, b in zip(names, other, ours, strict=True):
        assert a.shape == b.shape, name
        assert relative_error(a, b) < BF16_REL, f"{backend} {name}: relative error {relative_error(a, b):.2e}"


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_cuda_grouped_mm_matches_torch_backend(router: str) -> None:
    assert_backend_matches_torch("cuda_grouped_mm", router)


@pytest.mark.skipif(not HAS_MEGABLOCKS, reason="megablocks is not installed")
@pytest.mark.parametrize("router", ["softmax", "sigmoid", "expert_choice"])
def test_megablocks_matches_torch_backend(router: str) -> None:
    assert_backend_matches_torch("megablocks", router)


def test_torch_backend_bf16_tracks_fp32_reference_on_cuda() -> None:
    """The bf16 grouped path itself against fp32, where routing can differ only on near-ties."""
    torch.manual_seed(1)
    x = torch.randn(2048, 256, device="cuda")
    torch.manual_seed(0)
    layer = MoEFeedForward(moe_config("torch", "softmax")).cuda().eval()
    with torch.no_grad():
        y32 = layer(x).y
        y16 = layer.to(torch.bfloat16)(x.to(torch.bfloat16)).y
    assert relative_error(y16, y32) < 5e-2


@pytest.mark.skipif(not HAS_FLASH_ATTN, reason="flash-attn is not installed")
def test_flash_attn_matches_sdpa() -> None:
    """Embeddings and gradients of a padded batch: varlen flash-attn vs SDPA on the same weights."""
    torch.manual_seed(0)
    config = preset("tiny-moe")
    sdpa = Encoder(config.replace(attention_backend="sdpa")).cuda().to(torch.bfloat16)
    flash = Encoder(config.replace(attention_backend="flash_attn")).cuda().to(torch.bfloat16)
    flash.load_state_dict(sdpa.state_dict())
    input_ids = torch.randint(5, config.vocab_size, (6, 40), device="cuda")
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    for row, length in enumerate([40, 33, 17, 9, 3, 1]):
        mask[row, length:] = False
    outputs = []
    for model in (sdpa, flash):
        model.train(False)
        emb = model(input_ids, mask).embeddings
        (emb.float() * torch.linspace(-1, 1, emb.numel(), device="cuda").view_as(emb)).sum().backward()
        outputs.append(
            [emb.detach()] + [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
        )
    assert len(outputs[0]) == len(outputs[1])
    for i, (a, b) in enumerate(zip(outputs[1], outputs[0], strict=True)):
        assert relative_error(a, b) < BF16_REL, f"tensor {i}: relative error {relative_error(a, b):.2e}"
