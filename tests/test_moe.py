"""MoEFeedForward: parity with the naive per-expert loop, losses, balancing, upcycling, parameter contract."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lit_nomic.config import EncoderConfig, preset
from lit_nomic.model.ffn import FeedForward
from lit_nomic.model.moe import MoEFeedForward, MoEOutput
from lit_nomic.model.moe_backends import TorchBackend
from lit_nomic.model.moe_reference import reference_moe_forward
from lit_nomic.model.routers import load_balancing_loss, router_z_loss

TOL = dict(rtol=1e-5, atol=1e-5)


# name -> config overrides; "loss_free" variants get a random, non-zero selection bias below
ROUTERS: dict[str, dict[str, Any]] = {
    "softmax": dict(router="softmax"),
    "softmax_renorm": dict(router="softmax", router_renormalize=True),
    "sigmoid": dict(router="sigmoid"),
    "loss_free_softmax": dict(router="softmax", loss_free_balancing=True),
    "loss_free_sigmoid": dict(router="sigmoid", router_renormalize=True, loss_free_balancing=True),
    "expert_choice": dict(router="expert_choice", expert_capacity_factor=1.25),
}
EXPERTS_TOP_K = [(1, 1), (4, 1), (4, 2), (4, 4), (8, 1), (8, 2), (8, 4), (16, 1), (16, 2), (16, 4)]


def make_config(**overrides: Any) -> EncoderConfig:
    values: dict[str, Any] = dict(
        hidden_size=32,
        num_heads=4,
        ffn_size=48,
        num_experts=4,
        top_k=2,
        router_init_std=1.0,
        initializer_range=0.2,
    )
    values.update(overrides)
    return EncoderConfig(**values)


def make_layer(
    config: EncoderConfig, dtype: torch.dtype = torch.float32, chunked: bool = False
) -> MoEFeedForward:
    """``chunked``: walk the experts in chunks of ~5 rows (the CPU layout for large batches)."""
    layer = MoEFeedForward(config).to(dtype)
    if chunked:
        layer.backend = TorchBackend(chunk_bytes=5 * config.hidden_size * 4, single_chunk_bytes=0)
    with torch.no_grad():  # non-zero biases so that a dropped bias term cannot go unnoticed
        for name, p in layer.named_parameters():
            if name.endswith("bias") or name.endswith(".b1") or name.endswith(".b2"):
                p.normal_(std=0.1)
        if config.loss_free_balancing:
            layer.selection_bias.normal_(std=0.3)
    return layer.eval()


def grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    out = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, out, strict=True)]


def assert_parity(layer: MoEFeedForward, x: torch.Tensor, tol: dict[str, float] = TOL) -> MoEOutput:
    """Grouped path == naive loop for the output and for the gradients of x and every parameter."""
    x = x.detach().requires_grad_(True)
    out = layer(x)
    ref = reference_moe_forward(layer, x)
    torch.testing.assert_close(out.y, ref, **tol)
    upstream = torch.randn_like(ref)  # dense: grouped_mm's backward rejects stride-0 gradients
    inputs = [x, *layer.parameters()]
    names = ["x"] + [n for n, _ in layer.named_parameters()]
    for name, a, b in zip(
        names, grads((out.y * upstream).sum(), inputs), grads((ref * upstream).sum(), inputs), strict=True
    ):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"gradient of {name}: {m}")
    return out


# ---------------------------------------------------------------------------- parity matrix
@pytest.mark.parametrize("layout", ["one_chunk", "chunks"])
@pytest.mark.parametrize("expert_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("shared", [0, 1], ids=["noshared", "shared"])
@pytest.mark.parametrize(("num_experts", "top_k"), EXPERTS_TOP_K, ids=lambda v: str(v))
@pytest.mark.parametrize("router", list(ROUTERS))
def test_grouped_matches_reference(
    router: str, num_experts: int, top_k: int, shared: int, expert_bias: bool, layout: str
) -> None:
    config = make_config(
        **ROUTERS[router],
        num_experts=num_experts,
        top_k=top_k,
        num_shared_experts=shared,
        expert_bias=expert_bias,
        router_bias=expert_bias,
    )
    layer = make_layer(config, chunked=layout == "chunks")
    out = assert_parity(layer, torch.randn(24, 32))
    if config.router == "expert_choice":
        assert out.aux_loss.item() == 0.0
    else:
        assert int(out.tokens_per_expert.sum()) == 24 * top_k


@pytest.mark.parametrize("router", list(ROUTERS))
def test_zero_tokens_give_zeros_and_a_valid_graph(router: str) -> None:
    layer = make_layer(make_config(**ROUTERS[router], num_shared_experts=1, expert_bias=True))
    x = torch.zeros(0, 32, requires_grad=True)
    out = layer(x)
    assert out.y.shape == (0, 32)
    assert out.tokens_per_expert.tolist() == [0, 0, 0, 0]
    assert out.aux_loss.item() == 0.0 and out.z_loss.item() == 0.0
    (out.y.sum() + out.aux_loss + out.z_loss).backward()
    assert layer.experts.w1.grad is not None and layer.experts.w1.grad.abs().sum() == 0
    torch.testing.assert_close(reference_moe_forward(layer, x), out.y)


@pytest.mark.parametrize("layout", ["one_chunk", "chunks"])
@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_zero_load_experts(router: str, layout: str) -> None:
    """Experts 0, 2 and 5 receive nothing: empty grouped-GEMM groups at the start, middle and end
    (and, chunked, a chunk holding only expert 5 with no rows at all)."""
    config = make_config(router=router, num_experts=6, top_k=2, router_bias=True, expert_bias=True)
    layer = make_layer(config, chunked=layout == "chunks")
    with torch.no_grad():
        layer.router.bias.copy_(torch.tensor([-1e4, 0.0, -1e4, 0.0, 0.0, -1e4]))
    out = assert_parity(layer, torch.randn(30, 32))
    assert out.tokens_per_expert[[0, 2, 5]].tolist() == [0, 0, 0]
    assert int(out.tokens_per_expert.sum()) == 60
    x = torch.randn(30, 32)
    (layer(x).y * torch.randn(30, 32)).sum().backward()
    for e in (0, 2, 5):
        assert layer.experts.w1.grad[e].abs().sum() == 0 and layer.experts.b2.grad[e].abs().sum() == 0
    assert layer.experts.w1.grad[1].abs().sum() > 0


@pytest.mark.parametrize("layout", ["one_chunk", "chunks"])
def test_fallback_paths_match_reference(layout: str) -> None:
    """Rows that are not 16-byte aligned (grouped_mm refuses them) and float64 (no grouped_mm at all)."""
    chunked = layout == "chunks"
    misaligned = make_config(
        hidden_size=30, num_heads=3, ffn_size=18, num_experts=5, top_k=2, expert_bias=True
    )
    assert_parity(make_layer(misaligned, chunked=chunked), torch.randn(17, 30))
    config = make_config(num_experts=4, top_k=2, num_shared_experts=1)
    double = make_layer(config, dtype=torch.float64, chunked=chunked)
    assert_parity(double, torch.randn(19, 32, dtype=torch.float64), tol=dict(rtol=1e-10, atol=1e-10))


def test_fine_grained_experts_use_expert_width() -> None:
    config = make_config(
        ffn_size=64, ffn_div=4, num_experts=16, top_k=4, num_shared_experts=2, expert_bias=True
    )
    layer = make_layer(config)
    assert config.expert_ffn == 16
    assert layer.experts.w1.shape == (16, 32, 16) and layer.experts.w2.shape == (16, 16, 32)
    assert layer.shared_expert is not None and layer.shared_expert.fc1.out_features == 32
    assert_parity(layer, torch.randn(21, 32))


def test_stride_zero_upstream_gradient_works() -> None:
    """``y.sum().backward()`` hands a stride-0 gradient that raw grouped_mm rejects; the combine absorbs it."""
    layer = make_layer(make_config())
    x = torch.randn(9, 32, requires_grad=True)
    layer(x).y.sum().backward()
    ref_x = x.detach().clone().requires_grad_(True)
    ref_grads = torch.autograd.grad(reference_moe_forward(layer, ref_x).sum(), [ref_x, layer.experts.w1])
    torch.testing.assert_close(x.grad, ref_grads[0], **TOL)
    torch.testing.assert_close(layer.experts.w1.grad, ref_grads[1], **TOL)


def test_jitter_only_touches_routing_in_training() -> None:
    layer = make_layer(make_config(router_jitter=0.5))
    x = torch.randn(40, 32)
    layer.eval()
    torch.testing.assert_close(layer(x).y, layer(x).y)  # no noise in eval
    layer.train()
    torch.manual_seed(1)
    noisy = layer(x)
    torch.manual_seed(1)
    ref = reference_moe_forward(layer, x)  # same draw -> same routing -> same output
    torch.testing.assert_close(noisy.y, ref, **TOL)
    torch.manual_seed(2)
    other = layer(x)
    assert not torch.equal(other.tokens_per_expert, noisy.tokens_per_expert) or not torch.allclose(
        other.y, noisy.y
    )


# ---------------------------------------------------------------------------- losses and statistics
def test_losses_match_their_formulas() -> None:
    layer = make_layer(make_config(num_experts=8, top_k=2))
    x = torch.randn(50, 32)
    out = layer(x)
    logits = layer.router(x)
    probs = logits.softmax(-1)
    counts = torch.bincount(probs.topk(2, dim=-1).indices.flatten(), minlength=8)
    assert torch.equal(out.tokens_per_expert, counts)
    assert out.tokens_per_expert.dtype == torch.int64 and not out.tokens_per_expert.requires_grad
    expected_aux = 8 / (50 * 2) * (counts.float() * probs.mean(0)).sum()
    torch.testing.assert_close(out.aux_loss, expected_aux)
    torch.testing.assert_close(out.aux_loss, load_balancing_loss(probs, counts, 2))
    expected_z = torch.logsumexp(logits, -1).square().mean()
    torch.testing.assert_close(out.z_loss, expected_z)
    torch.testing.assert_close(out.z_loss, router_z_loss(logits))
    expected_entropy = -(probs * probs.log()).sum(-1).mean()
    torch.testing.assert_close(out.router_entropy, expected_entropy)
    assert not out.router_entropy.requires_grad
    out.aux_loss.backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_bad_input_shape_is_named() -> None:
    layer = make_layer(make_config())
    with pytest.raises(ValueError, match=r"\[T, 32\].*\(2, 3, 32\)"):
        layer(torch.randn(2, 3, 32))


# ---------------------------------------------------------------------------- loss-free balancing
@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_loss_free_bias_moves_toward_balance(router: str) -> None:
    config = make_config(
        router=router,
        num_experts=4,
        top_k=2,
        router_bias=True,
        router_init_std=0.2,
        loss_free_balancing=True,
        loss_free_update_rate=0.003,
    )
    layer = MoEFeedForward(config).train()
    with torch.no_grad():  # a skewed router: nearly every token picks experts 0 and 1
        layer.router.bias.copy_(torch.tensor([3.0, 2.0, -2.0, -3.0]))
    x = torch.randn(256, 32)
    start = layer(x).tokens_per_expert
    layer.update_loss_free_bias()
    recent = torch.zeros(4)
    for step in range(400):
        counts = layer(x).tokens_per_expert
        layer.update_loss_free_bias()
        if step >= 300:  # the sign rule balances on average; single steps may overshoot by a few tokens
            recent += counts
    assert start.max() / start.min().clamp_min(1) > 100, start.tolist()
    assert recent.max() / recent.min() < 1.5, recent.tolist()
    assert layer.selection_bias[0] < 0 < layer.selection_bias[3]
    # selection changed, gates did not: gates are still the unbiased scores of the chosen experts
    layer.eval()
    routing = layer.route(x)
    scores = layer.router(x).float()
    scores = scores.softmax(-1) if router == "softmax" else torch.sigmoid(scores)
    chosen = routing.expert_index[routing.token_major].view(256, 2)
    torch.testing.assert_close(routing.gates.view(256, 2), scores.gather(1, chosen))


def test_loss_free_accumulates_only_in_training_and_resets() -> None:
    layer = make_layer(make_config(loss_free_balancing=True, loss_free_update_rate=0.1))
    before = layer.selection_bias.clone()
    x = torch.randn(10, 32)
    layer.eval()
    layer(x)
    assert layer.load_accumulator.sum() == 0
    layer.train()
    first = layer(x).tokens_per_expert
    second = layer(x).tokens_per_expert
    torch.testing.assert_close(layer.load_accumulator, (first + second).float())
    layer.update_loss_free_bias()
    assert layer.load_accumulator.sum() == 0
    expected = before + 0.1 * torch.sign((first + second).float().mean() - (first + second).float())
    torch.testing.assert_close(layer.selection_bias, expected)
    assert "selection_bias" in layer.state_dict() and "load_accumulator" not in layer.state_dict()


def test_update_is_a_no_op_when_disabled() -> None:
    layer = make_layer(make_config()).train()
    layer(torch.randn(10, 32))
    layer.update_loss_free_bias()
    assert layer.selection_bias.abs().sum() == 0 and layer.load_accumulator.sum() == 0


# ---------------------------------------------------------------------------- upcycling property
@pytest.mark.parametrize(
    ("router", "num_experts", "top_k"), [("softmax", 8, 2), ("softmax", 4, 4), ("sigmoid", 8, 3)]
)
def test_identical_experts_with_renormalised_gates_equal_the_dense_ffn(
    router: str, num_experts: int, top_k: int
) -> None:
    """Sparse upcycling: copies of one dense FFN, gates summing to 1 -> exactly the dense output."""
    dense = FeedForward(32, 48, "gelu", bias=True)
    config = make_config(
        router=router,
        router_renormalize=True,
        num_experts=num_experts,
        top_k=top_k,
        expert_bias=True,
        moe_output_bias=False,
    )
    layer = MoEFeedForward(config).eval()
    with torch.no_grad():
        layer.experts.w1.copy_(dense.fc1.weight.t().expand(num_experts, -1, -1))
        layer.experts.w2.copy_(dense.fc2.weight.t().expand(num_experts, -1, -1))
        layer.experts.b1.copy_(dense.fc1.bias.expand(num_experts, -1))
        layer.experts.b2.copy_(dense.fc2.bias.expand(num_experts, -1))
    x = torch.randn(33, 32)
    torch.testing.assert_close(layer(x).y, dense(x), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- parameter contract
def test_nomic_preset_parameter_count_on_meta() -> None:
    config = preset("nomic-embed-text-v2-moe")
    with torch.device("meta"):
        layer = MoEFeedForward(config)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {
        "router.weight": (8, 768),
        "experts.w1": (8, 768, 3072),
        "experts.w2": (8, 3072, 768),
        "output_bias": (768,),
    }
    # 768*8 + 8*(768*3072 + 3072*768) + 768
    assert sum(p.numel() for p in layer.parameters()) == 37_755_648
    assert layer.selection_bias.shape == (8,) and layer.selection_bias.dtype == torch.float32


def test_optional_parameters_follow_config() -> None:
    config = make_config(router_bias=True, expert_bias=True, moe_output_bias=False, num_shared_experts=2)
    names = {n: tuple(p.shape) for n, p in MoEFeedForward(config).named_parameters()}
    assert names["router.bias"] == (4,)
    assert names["experts.b1"] == (4, 48) and names["experts.b2"] == (4, 32)
    assert "output_bias" not in names
    assert names["shared_expert.fc1.weight"] == (96, 32) and names["shared_expert.fc1.bias"] == (96,)


def test_initialisation_scales() -> None:
    config = make_config(
        hidden_size=256,
        num_heads=4,
        ffn_size=512,
        num_experts=8,
        router_init_std=0.05,
        initializer_range=0.02,
    )
    config = config.replace(router_bias=True, expert_bias=True, num_shared_experts=1)
    layer = MoEFeedForward(config)
    assert layer.router.weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert layer.experts.w1.std().item() == pytest.approx(0.02, rel=0.02)
    assert layer.experts.w2.std().item() == pytest.approx(0.02, rel=0.02)
    assert layer.shared_expert is not None
    assert layer.shared_expert.fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for bias in (
        layer.router.bias,
        layer.experts.b1,
        layer.experts.b2,
        layer.output_bias,
        layer.shared_expert.fc2.bias,
    ):
        assert bias is not None and bias.abs().sum() == 0
