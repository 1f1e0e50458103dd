"""Expert backends: grouped GEMM pieces, the combine step, backend selection and the megablocks adapter."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from lit_nomic.config import EncoderConfig
from lit_nomic.model.moe import MoEFeedForward
from lit_nomic.model.moe_backends import (
    MEGABLOCKS_INSTALL_HINT,
    CudaGroupedMMBackend,
    ExpertParams,
    MegablocksBackend,
    TorchBackend,
    backend_names,
    combine_index_add,
    get_backend,
    grouped_experts,
    grouped_matmul,
    grouped_mm_applies,
    grouped_weight_grad,
    plan_chunks,
)
from lit_nomic.model.moe_reference import reference_moe_forward
from lit_nomic.model.routers import ExpertChoiceRouter, Routing, token_choice_routing

HAS_MEGABLOCKS = importlib.util.find_spec("megablocks") is not None


def fixed_routing(experts: list[list[int]], num_experts: int) -> Routing:
    """Token choice with given expert ids [T, k] and random gates."""
    choice = torch.tensor(experts)
    logits = torch.randn(choice.shape[0], num_experts)
    gates = torch.rand(choice.shape, requires_grad=True)
    return token_choice_routing(logits, logits.softmax(-1), gates, choice)


# ---------------------------------------------------------------------------- grouped GEMM pieces
CPU = torch.device("cpu")


def test_grouped_mm_applies_truth_table() -> None:
    assert grouped_mm_applies(torch.float32, CPU, 32, 48)
    assert grouped_mm_applies(torch.bfloat16, CPU, 32, 48)
    assert not grouped_mm_applies(torch.float32, CPU, 30, 48)  # 120-byte rows
    assert not grouped_mm_applies(torch.float32, CPU, 32, 18)  # 72-byte rows
    assert not grouped_mm_applies(torch.bfloat16, CPU, 32, 12)  # 24-byte rows
    assert not grouped_mm_applies(torch.float64, CPU, 32, 48)
    assert not grouped_mm_applies(torch.float32, torch.device("meta"), 32, 48)


@pytest.mark.parametrize("use_grouped_mm", [True, False], ids=["grouped_mm", "fallback"])
def test_grouped_matmul_and_weight_grad_with_empty_groups(use_grouped_mm: bool) -> None:
    # experts 0, 2, 3 and 5 get no rows: empty groups first, in the middle and last
    routing = fixed_routing([[1, 4], [4, 1], [1, 4], [4, 1], [1, 4]], num_experts=6)
    assert routing.tokens_per_expert.tolist() == [0, 5, 0, 0, 5, 0]
    (chunk,) = plan_chunks(routing, row_bytes=128)
    a, w, g = torch.randn(10, 32), torch.randn(6, 32, 48), torch.randn(10, 48)
    got = grouped_matmul(a, w, chunk, use_grouped_mm)
    torch.testing.assert_close(got, torch.cat([a[:5] @ w[1], a[5:] @ w[4]]))
    wgrad = grouped_weight_grad(a, g, chunk, use_grouped_mm)
    assert wgrad.shape == (6, 32, 48)
    torch.testing.assert_close(wgrad[1], a[:5].t() @ g[:5])
    torch.testing.assert_close(wgrad[4], a[5:].t() @ g[5:])
    assert wgrad[[0, 2, 3, 5]].abs().sum() == 0


def test_plan_chunks_covers_every_expert_once() -> None:
    counts = torch.tensor([7, 0, 3, 3, 0, 12, 1, 0, 0, 4])
    logits = torch.randn(int(counts.sum()), 10)
    experts = torch.repeat_interleave(torch.arange(10), counts).unsqueeze(1)
    routing = token_choice_routing(logits, logits.softmax(-1), torch.ones(experts.shape), experts)
    assert len(plan_chunks(routing, row_bytes=4)) == 1  # 120 bytes in all: one chunk
    chunks = plan_chunks(routing, row_bytes=4, budget_bytes=20, single_chunk_bytes=0)  # ~5 rows each
    assert len(chunks) > 3
    assert chunks[0].first == 0 and chunks[-1].last == 10 and chunks[-1].row_stop == 30
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before.last == after.first and before.row_stop == after.row_start
    for c in chunks:
        assert c.num_rows == int(counts[c.experts].sum()), "an expert is never split"
        assert c.offsets.dtype == torch.int32
        torch.testing.assert_close(c.offsets, torch.cumsum(counts[c.experts], 0).to(torch.int32))
        assert c.counts == counts[c.experts].tolist()
        # every expert of a chunk starts inside one budget-sized window of rows (5 here);
        # the last one may run past it (expert 5 has 12 rows)
        last_start = c.row_stop - int(counts[c.last - 1])
        assert last_start // 5 == c.row_start // 5


def test_require_grouped_mm_refuses_to_fall_back() -> None:
    routing = fixed_routing([[0], [1], [0]], num_experts=2)
    params = ExpertParams(w1=torch.randn(2, 30, 8), w2=torch.randn(2, 8, 30))
    x = torch.randn(3, 30)
    y = grouped_experts(x, routing, params, "gelu")  # misaligned rows: the exact fallback runs
    torch.testing.assert_close(y[1], routing.gates[1] * (F.gelu(x[1] @ params.w1[1]) @ params.w2[1]))
    with pytest.raises(RuntimeError, match="cuda_grouped_mm.*16-byte aligned"):
        grouped_experts(x, routing, params, "gelu", require_grouped_mm=True)


def test_combine_index_add_by_hand() -> None:
    routing = ExpertChoiceRouter(3, 1, capacity_factor=1.0)(torch.randn(5, 3))  # C = 2 of 5 tokens
    out = torch.randn(routing.num_assignments, 4)
    y = combine_index_add(out, routing)
    expected = torch.zeros(5, 4)
    gates = routing.gates_expert_major()
    for row in range(routing.num_assignments):
        expected[routing.token_index[row]] += gates[row] * out[row]
    torch.testing.assert_close(y, expected)


def test_bfloat16_layer_runs_on_cpu_and_tracks_float32() -> None:
    config = EncoderConfig(
        hidden_size=32, num_heads=4, ffn_size=64, num_experts=4, top_k=2, initializer_range=0.2
    )
    layer = MoEFeedForward(config).eval()
    x = torch.randn(16, 32)
    y32 = layer(x).y
    y16 = layer.to(torch.bfloat16)(x.bfloat16()).y  # bf16 grouped_mm + index_add combine
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=5e-2, atol=5e-2)


def test_cpu_autocast_runs_experts_in_bf16_with_fp32_gradients() -> None:
    config = EncoderConfig(
        hidden_size=32,
        num_heads=4,
        ffn_size=64,
        num_experts=4,
        top_k=2,
        initializer_range=0.2,
        moe_output_bias=False,
    )
    layer = MoEFeedForward(config).train()
    x = torch.randn(16, 32, requires_grad=True)
    y32 = layer(x).y
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = layer(x).y
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=5e-2, atol=5e-2)
    (y16.float() * torch.randn(16, 32)).sum().backward()
    assert layer.experts.w1.grad is not None and layer.experts.w1.grad.dtype == torch.float32
    assert x.grad is not None and x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- selection and errors
def test_backend_registry() -> None:
    assert backend_names() == ["torch", "cuda_grouped_mm", "megablocks"]
    assert isinstance(get_backend("torch"), TorchBackend)
    assert isinstance(get_backend("cuda_grouped_mm"), CudaGroupedMMBackend)
    with pytest.raises(ValueError, match="unknown moe_backend 'triton'.*torch, cuda_grouped_mm, megablocks"):
        get_backend("triton")


@pytest.mark.skipif(HAS_MEGABLOCKS, reason="megablocks is installed here")
def test_megablocks_missing_gives_a_clear_error() -> None:
    with pytest.raises(ImportError, match="moe_backend='megablocks'") as info:
        get_backend("megablocks")
    assert MEGABLOCKS_INSTALL_HINT in str(info.value) and "lit-nomic[megablocks]" in str(info.value)
    config = EncoderConfig(hidden_size=32, num_heads=4, num_experts=4, top_k=2, moe_backend="megablocks")
    with pytest.raises(ImportError, match=r"pip install 'lit-nomic\[megablocks\]'"):
        MoEFeedForward(config)


def test_cuda_grouped_mm_backend_refuses_cpu_tensors() -> None:
    config = EncoderConfig(hidden_size=32, num_heads=4, num_experts=4, top_k=2, moe_backend="cuda_grouped_mm")
    layer = MoEFeedForward(config)
    with pytest.raises(RuntimeError, match="cuda_grouped_mm.*CUDA"):
        layer(torch.randn(4, 32))


# ---------------------------------------------------------------------------- megablocks adapter
def fake_megablocks() -> dict[str, types.ModuleType]:
    """CPU doubles with the documented semantics of megablocks' kernels (backend/kernels.py):
    gather copies row ``indices[i] // top_k`` of x to sorted row i; scatter adds
    ``weights[indices[i]] * x[i]`` into token ``indices[i] // top_k``; gmm multiplies consecutive
    ``batch_sizes`` row blocks of a by b[e] (CPU int64 batch sizes)."""

    def gather(x, indices, bin_ids, bins, top_k):  # noqa: ANN001, ANN202
        assert indices.dtype == bin_ids.dtype == bins.dtype == torch.int32
        assert torch.equal(
            bins, torch.cumsum(torch.bincount(bin_ids.long(), minlength=bins.numel()), 0).int()
        )
        return x.index_select(0, torch.div(indices.long(), top_k, rounding_mode="floor"))

    def scatter(x, indices, bin_ids, weights, bins, top_k):  # noqa: ANN001, ANN202
        tokens = torch.div(indices.long(), top_k, rounding_mode="floor")
        scaled = x * weights.index_select(0, indices.long()).unsqueeze(1)
        return x.new_zeros((x.shape[0] // top_k, x.shape[1])).index_add(0, tokens, scaled)

    def gmm(a, b, batch_sizes, trans_b=False):  # noqa: ANN001, ANN202
        assert batch_sizes.device.type == "cpu" and batch_sizes.dtype == torch.int64 and not trans_b
        if a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16:  # as grouped_gemm's CUTLASS kernel
            raise RuntimeError(f"Expected bfloat16 operands, got {a.dtype} and {b.dtype}")
        return torch.cat([chunk @ b[e] for e, chunk in enumerate(torch.split(a, batch_sizes.tolist()))])

    root = types.ModuleType("megablocks")
    ops = types.ModuleType("megablocks.ops")
    ops.gather, ops.scatter = gather, scatter  # type: ignore[attr-defined]
    gg = types.ModuleType("megablocks.grouped_gemm_util")
    gg.grouped_gemm_is_available = lambda: True  # type: ignore[attr-defined]
    gg.ops = types.SimpleNamespace(gmm=gmm)  # type: ignore[attr-defined]
    root.ops, root.grouped_gemm_util = ops, gg  # type: ignore[attr-defined]
    return {"megablocks": root, "megablocks.ops": ops, "megablocks.grouped_gemm_util": gg}


def install_fake_megablocks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, module in fake_megablocks().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(MegablocksBackend, "requires_cuda", False)


@pytest.mark.parametrize("router", ["softmax", "expert_choice"])
def test_megablocks_adapter_index_conventions(router: str, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_megablocks(monkeypatch)
    config = EncoderConfig(
        hidden_size=32, num_heads=4, ffn_size=48, num_experts=6, top_k=2, router=router, expert_bias=True,
        router_init_std=1.0, initializer_range=0.2,
    )  # fmt: skip
    layer = MoEFeedForward(config.replace(moe_backend="megablocks")).eval().to(torch.bfloat16)
    assert isinstance(layer.backend, MegablocksBackend)
    x = torch.randn(20, 32, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x).y
    ref = reference_moe_forward(layer, x)  # the same bf16 weights, one loop iteration per expert
    torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2)
    upstream = torch.randn(y.shape)
    params = [x, layer.router.weight, layer.experts.w1, layer.experts.b2]
    for a, b in zip(
        torch.autograd.grad((y.float() * upstream).sum(), params),
        torch.autograd.grad((ref.float() * upstream).sum(), params),
        strict=True,
    ):
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=5e-2)
    monkeypatch.setattr(MegablocksBackend, "requires_cuda", True)
    with pytest.raises(RuntimeError, match="megablocks.*CUDA"):
        layer(x)


@pytest.mark.parametrize("mode", ["bf16", "bf16-mixed"])
def test_megablocks_adapter_matches_fp32_reference(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16-mixed: fp32 weights under autocast reach gmm as bf16 (the fake rejects anything else)."""
    from lit_nomic.bench.parity import assert_parity

    install_fake_megablocks(monkeypatch)
    result = assert_parity(
        "megablocks", "softmax", mode, device="cpu", tokens=48, hidden=32, ffn=64, experts=4
    )
    assert result.errors["y"] > 0  # bf16 kernels, really compared


def test_fake_gmm_rejects_fp32_like_grouped_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_megablocks(monkeypatch)
    config = EncoderConfig(hidden_size=32, num_heads=4, ffn_size=64, num_experts=4, top_k=2)
    layer = MoEFeedForward(config.replace(moe_backend="megablocks")).eval()
    with pytest.raises(RuntimeError, match="Expected bfloat16"):
        layer(torch.randn(8, 32))  # fp32 without autocast: the real kernel fails the same way
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(layer(torch.randn(8, 32)).y).all()  # cast like the torch backend: runs


def test_fallback_without_grouped_mm_is_loud_once_and_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from lit_nomic.model import moe_backends

    monkeypatch.setattr(moe_backends, "HAS_GROUPED_MM", False)
    monkeypatch.setattr(moe_backends, "_warned", set())
    routing = fixed_routing([[0, 1], [1, 2], [2, 0]], num_experts=3)
    params = ExpertParams(w1=torch.randn(3, 32, 16), w2=torch.randn(3, 16, 32))
    x = torch.randn(3, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = grouped_experts(x, routing, params, "gelu")
        grouped_experts(x, routing, params, "gelu")
    assert [str(w.message) for w in caught if "grouped_mm" in str(w.message)] == [
        moe_backends.GROUPED_MM_MISSING
    ]
    gates = routing.gates.detach().view(3, 2)
    expected = gates[0, 0] * (F.gelu(x[0] @ params.w1[0]) @ params.w2[0]) + gates[0, 1] * (
        F.gelu(x[0] @ params.w1[1]) @ params.w2[1]
    )
    torch.testing.assert_close(y[0], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="torch>=2.10"):
        grouped_experts(x, routing, params, "gelu", require_grouped_mm=True)
