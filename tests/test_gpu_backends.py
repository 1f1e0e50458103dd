"""GPU backends on CUDA against the fp32 per-expert reference: torch, CUDA grouped_mm, megablocks; flash-attn.

Skipped without CUDA (megablocks / flash-attn each without their package). Every MoE backend is
checked against ``reference_moe_forward`` in fp32 (never against another fast backend: on CUDA the
torch backend runs the very kernel ``cuda_grouped_mm`` does), on the output and the gradients of
the input, router and every expert tensor, in bf16 and in bf16-mixed with fp32 parameters (the
Lightning recipe), where the weights' gradients must come back fp32. ``tests/test_gpu_parity_check.py``
shows on CPU that these checks fail when a backend is wrong. Errors are norm ratios, the natural
scale for bf16 (8 mantissa bits, ~4e-3 per value).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lit_nomic.bench.parity import assert_parity, relative_error
from lit_nomic.config import preset
from lit_nomic.model.encoder import Encoder

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
HAS_MEGABLOCKS = importlib.util.find_spec("megablocks") is not None
HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None
BF16_REL = 2e-2  # relative norm error allowed between two bf16 kernels (fp32 accumulation in both)
MODES = ["bf16", "bf16-mixed"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("router", ["softmax", "sigmoid", "expert_choice"])
def test_torch_backend_matches_fp32_reference(router: str, mode: str) -> None:
    assert_parity("torch", router, mode, device="cuda")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("router", ["softmax", "sigmoid", "expert_choice"])
def test_cuda_grouped_mm_matches_fp32_reference(router: str, mode: str) -> None:
    assert_parity("cuda_grouped_mm", router, mode, device="cuda")


@pytest.mark.skipif(not HAS_MEGABLOCKS, reason="megablocks is not installed")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("router", ["softmax", "sigmoid", "expert_choice"])
def test_megablocks_matches_fp32_reference(router: str, mode: str) -> None:
    assert_parity("megablocks", router, mode, device="cuda")


def test_torch_backend_fp32_on_cuda_warns_once_and_stays_exact() -> None:
    """fp32 on CUDA cannot use grouped_mm: the per-expert fallback must be loud (once) and exact."""
    import warnings

    from lit_nomic.model import moe_backends

    moe_backends._warned.discard(f"fallback:cuda:{torch.float32}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_parity("torch", "softmax", "fp32", device="cuda")
        assert_parity("torch", "softmax", "fp32", device="cuda")
    assert sum("per-expert Python loop" in str(w.message) for w in caught) == 1


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
