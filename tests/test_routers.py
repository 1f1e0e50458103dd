"""Routing policies, router losses and loss-free balancing, checked against hand arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from lit_nomic.config import EncoderConfig
from lit_nomic.model.routers import (
    ExpertChoiceRouter,
    Routing,
    SigmoidTopKRouter,
    SoftmaxTopKRouter,
    apply_jitter,
    build_router,
    expert_capacity,
    load_balancing_loss,
    loss_free_bias_update,
    router_entropy,
    router_z_loss,
)


def assert_layout(r: Routing) -> None:
    """The invariants every backend relies on."""
    n = r.num_assignments
    assert r.expert_index.dtype == r.token_index.dtype == torch.int64
    assert torch.all(r.expert_index[1:] >= r.expert_index[:-1]), "assignments must be expert-major"
    assert torch.equal(torch.bincount(r.expert_index, minlength=r.num_experts), r.tokens_per_expert)
    assert torch.equal(r.offsets(), torch.cumsum(r.tokens_per_expert, 0).to(torch.int32))
    # token_major and expert_major are inverse permutations of 0..N-1
    assert torch.equal(r.token_major[r.expert_major], torch.arange(n))
    assert torch.equal(r.expert_major[r.token_major], torch.arange(n))
    # row_ptr groups the token-major positions by token, in token order
    assert r.row_ptr.shape == (r.num_tokens + 1,) and int(r.row_ptr[-1]) == n
    per_token = r.row_ptr[1:] - r.row_ptr[:-1]
    tokens_tm = torch.repeat_interleave(torch.arange(r.num_tokens), per_token)
    assert torch.equal(r.token_index[r.token_major], tokens_tm)
    assert r.gates.shape == (n,)


def probs_to_logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs).log()


# ---------------------------------------------------------------------------- softmax / sigmoid
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_softmax_top_k_gates_and_layout(renormalize: bool, top_k: int) -> None:
    logits = torch.randn(37, 5) * 3
    r = SoftmaxTopKRouter(5, top_k, renormalize)(logits)
    assert_layout(r)
    probs = logits.softmax(-1)
    torch.testing.assert_close(r.probs, probs)
    top_p, top_e = probs.topk(top_k, dim=-1)
    expected = top_p / top_p.sum(-1, keepdim=True) if renormalize else top_p
    torch.testing.assert_close(r.gates.view(37, top_k), expected)
    # token-major order is the router's [T, k] order: slot j of token t sits at t*k + j
    experts_tm = r.expert_index[r.token_major].view(37, top_k)
    assert torch.equal(experts_tm, top_e)
    assert r.top_k == top_k and int(r.tokens_per_expert.sum()) == 37 * top_k
    if renormalize:
        torch.testing.assert_close(r.gates.view(37, top_k).sum(-1), torch.ones(37))


def test_sigmoid_top_k_scores_and_aux_distribution() -> None:
    logits = torch.randn(20, 6) * 2
    r = SigmoidTopKRouter(6, 2, renormalize=False)(logits)
    assert_layout(r)
    scores = torch.sigmoid(logits)
    top_s, top_e = scores.topk(2, dim=-1)
    torch.testing.assert_close(r.gates.view(20, 2), top_s)
    assert torch.equal(r.expert_index[r.token_major].view(20, 2), top_e)
    # DeepSeek-V3: the balance statistics use the affinities normalised per token
    torch.testing.assert_close(r.probs, scores / scores.sum(-1, keepdim=True))
    renorm = SigmoidTopKRouter(6, 2, renormalize=True)(logits)
    torch.testing.assert_close(renorm.gates.view(20, 2), top_s / top_s.sum(-1, keepdim=True))


@pytest.mark.parametrize("router_cls", [SoftmaxTopKRouter, SigmoidTopKRouter])
def test_selection_bias_moves_the_choice_but_not_the_gate(router_cls: type) -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    router = router_cls(3, 1)
    plain = router(logits)
    assert plain.expert_index[plain.token_major].tolist() == [0, 1]
    biased = router(logits, selection_bias=torch.tensor([0.0, 0.0, 5.0]))
    assert biased.expert_index[biased.token_major].tolist() == [2, 2]
    scores = logits.softmax(-1) if router_cls is SoftmaxTopKRouter else torch.sigmoid(logits)
    # the gate is the *unbiased* score of the selected expert
    torch.testing.assert_close(biased.gates, scores[:, 2])


# ---------------------------------------------------------------------------- expert choice
@pytest.mark.parametrize(
    ("tokens", "experts", "top_k", "factor", "capacity"),
    [(10, 4, 2, 1.0, 5), (10, 4, 1, 1.0, 3), (7, 2, 2, 2.0, 7), (3, 8, 2, 1.0, 1), (16, 4, 2, 0.5, 4)],
)
def test_expert_capacity_formula(tokens: int, experts: int, top_k: int, factor: float, capacity: int) -> None:
    # ceil(T * k * factor / E), clamped to T: (10*2/4)=5, ceil(10/4)=3, min(7, 14)=7, ceil(6/8)=1, 16*2*.5/4=4
    assert expert_capacity(tokens, experts, top_k, factor) == capacity
    assert expert_capacity(0, experts, top_k, factor) == 0


@pytest.mark.parametrize(
    ("tokens", "experts", "top_k", "factor"), [(23, 4, 2, 1.0), (9, 8, 1, 1.5), (5, 3, 3, 2.0)]
)
def test_expert_choice_respects_capacity_exactly(
    tokens: int, experts: int, top_k: int, factor: float
) -> None:
    logits = torch.randn(tokens, experts) * 2
    router = ExpertChoiceRouter(experts, top_k, factor)
    r = router(logits)
    assert_layout(r)
    capacity = router.capacity(tokens)
    assert torch.equal(r.tokens_per_expert, torch.full((experts,), capacity))
    probs = logits.softmax(-1)
    gates_em = r.gates_expert_major()
    for e in range(experts):
        rows = r.expert_index == e
        chosen = r.token_index[rows]
        assert chosen.unique().numel() == capacity, "an expert picks distinct tokens"
        # they are the expert's top-C tokens by router probability, gated by that probability
        torch.testing.assert_close(chosen.sort().values, probs[:, e].topk(capacity).indices.sort().values)
        torch.testing.assert_close(gates_em[rows], probs[chosen, e])
    assert r.top_k is None
    per_token = r.row_ptr[1:] - r.row_ptr[:-1]
    assert int(per_token.min()) >= 0 and int(per_token.max()) <= experts


def test_expert_choice_can_skip_tokens() -> None:
    # every expert prefers tokens 0 and 1; token 2 is nobody's top-2
    logits = torch.tensor([[5.0, 5.0], [4.0, 4.0], [-5.0, -5.0]])
    probs_to_check = ExpertChoiceRouter(2, 1, capacity_factor=4 / 3)(logits)  # C = ceil(3*1*(4/3)/2) = 2
    per_token = probs_to_check.row_ptr[1:] - probs_to_check.row_ptr[:-1]
    assert per_token.tolist() == [2, 2, 0]


# ---------------------------------------------------------------------------- losses
def test_load_balancing_loss_hand_computed() -> None:
    # T=2 tokens, E=3 experts, k=2.
    # token 0 probs (0.5, 0.3, 0.2) -> experts {0, 1}; token 1 probs (0.1, 0.6, 0.3) -> experts {1, 2}
    # tokens_i = (1, 2, 1); mean_prob_i = (0.3, 0.45, 0.25)
    # loss = E/(T*k) * sum_i tokens_i * mean_prob_i = 3/4 * (0.3 + 0.9 + 0.25) = 0.75 * 1.45 = 1.0875
    r = SoftmaxTopKRouter(3, 2)(probs_to_logits([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]))
    assert r.tokens_per_expert.tolist() == [1, 2, 1]
    loss = load_balancing_loss(r.probs, r.tokens_per_expert, top_k=2)
    assert loss.item() == pytest.approx(1.0875, abs=1e-6)
    # k=1, T=3, E=2: probs (.8,.2), (.7,.3), (.4,.6) -> tokens (2, 1); mean_prob (1.9/3, 1.1/3)
    # loss = 2/3 * (2*1.9/3 + 1.1/3) = 2/3 * 4.9/3 = 9.8/9
    r1 = SoftmaxTopKRouter(2, 1)(probs_to_logits([[0.8, 0.2], [0.7, 0.3], [0.4, 0.6]]))
    assert load_balancing_loss(r1.probs, r1.tokens_per_expert, 1).item() == pytest.approx(9.8 / 9, abs=1e-6)


def test_load_balancing_loss_matches_megablocks_formula_and_bounds() -> None:
    probs = torch.randn(50, 8).softmax(-1)
    counts = torch.randint(0, 20, (8,))
    # megablocks.layers.moe.batched_load_balancing_loss with one layer and loss weight 1:
    # scale = num_experts / (num_layers * tokens * top_k); scale * dot(tokens_per_expert, scores.mean(0))
    expected = 8 / (1 * 50 * 2) * torch.dot(counts.float(), probs.mean(0))
    torch.testing.assert_close(load_balancing_loss(probs, counts, 2), expected)
    uniform = torch.full((40, 4), 0.25)
    assert load_balancing_loss(uniform, torch.tensor([20, 20, 20, 20]), 2).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(40, 1)
    assert load_balancing_loss(collapsed, torch.tensor([40, 0, 0, 0]), 1).item() == pytest.approx(4.0)


def test_load_balancing_loss_gradient_flows_through_probs_only() -> None:
    logits = torch.randn(12, 4, requires_grad=True)
    r = SoftmaxTopKRouter(4, 2)(logits)
    load_balancing_loss(r.probs, r.tokens_per_expert, 2).backward()
    # d/dlogits of mean probs weighted by counts: nonzero unless counts are all equal
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_z_loss_hand_computed() -> None:
    # logsumexp(0, 0) = ln 2; logsumexp(ln 3, 0) = ln 4 = 2 ln 2
    # z = mean(ln2^2, 4 ln2^2) = 2.5 ln2^2
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert router_z_loss(logits).item() == pytest.approx(2.5 * math.log(2.0) ** 2, rel=1e-6)
    assert router_z_loss(torch.zeros(0, 4)).item() == 0.0


def test_router_entropy() -> None:
    assert router_entropy(torch.full((3, 8), 1 / 8)).item() == pytest.approx(math.log(8), rel=1e-6)
    assert router_entropy(torch.tensor([[1.0, 0.0, 0.0]])).item() == 0.0
    p = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    expected = (math.log(2) + (0.5 * math.log(4) + 0.5 * math.log(2))) / 2
    assert router_entropy(p).item() == pytest.approx(expected, rel=1e-6)
    assert not router_entropy(p.requires_grad_()).requires_grad


# ---------------------------------------------------------------------------- jitter, bias update
def test_jitter_is_multiplicative_and_bounded() -> None:
    x = torch.randn(200, 16)
    assert apply_jitter(x, 0.0) is x
    j = apply_jitter(x, 0.1)
    ratio = j / x
    assert ratio.min() >= 0.9 - 1e-6 and ratio.max() <= 1.1 + 1e-6
    assert not torch.equal(j, x)


def test_loss_free_bias_update_sign_rule() -> None:
    bias = torch.tensor([0.0, 0.5, -0.5])
    # mean load 4: expert 0 overloaded (10) -> down, 1 and 2 underloaded -> up
    loss_free_bias_update(bias, torch.tensor([10.0, 0.0, 2.0]), rate=0.1)
    torch.testing.assert_close(bias, torch.tensor([-0.1, 0.6, -0.4]))
    loss_free_bias_update(bias, torch.tensor([3.0, 3.0, 3.0]), rate=0.1)  # balanced: unchanged
    torch.testing.assert_close(bias, torch.tensor([-0.1, 0.6, -0.4]))


# ---------------------------------------------------------------------------- factory and edge cases
def test_build_router_follows_config() -> None:
    base = dict(hidden_size=32, num_heads=4, num_experts=4, top_k=2)
    assert isinstance(build_router(EncoderConfig(**base)), SoftmaxTopKRouter)
    sig = build_router(EncoderConfig(**base, router="sigmoid", router_renormalize=True))
    assert isinstance(sig, SigmoidTopKRouter) and sig.renormalize
    ec = build_router(EncoderConfig(**base, router="expert_choice", expert_capacity_factor=1.5))
    assert isinstance(ec, ExpertChoiceRouter) and ec.capacity_factor == 1.5


def test_routers_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="top_k=3"):
        SoftmaxTopKRouter(2, 3)
    with pytest.raises(ValueError, match="capacity_factor"):
        ExpertChoiceRouter(4, 1, 0.0)
    with pytest.raises(ValueError, match="selection_bias"):
        ExpertChoiceRouter(4, 1)(torch.randn(3, 4), torch.zeros(4))


@pytest.mark.parametrize(
    "router", [SoftmaxTopKRouter(4, 2), SigmoidTopKRouter(4, 2, True), ExpertChoiceRouter(4, 2)], ids=str
)
def test_zero_tokens(router: object) -> None:
    r = router(torch.zeros(0, 4))  # type: ignore[operator]
    assert_layout(r)
    assert r.num_assignments == 0 and r.tokens_per_expert.tolist() == [0, 0, 0, 0]
    assert load_balancing_loss(r.probs, r.tokens_per_expert, 2).item() == 0.0


def test_count_indices_is_bincount_without_a_host_read() -> None:
    from lit_nomic.model.routers import count_indices

    index = torch.tensor([3, 0, 3, 5, 5, 5])
    assert torch.equal(count_indices(index, 7), torch.bincount(index, minlength=7))
    assert count_indices(index, 7).dtype == torch.int64
    assert torch.equal(count_indices(torch.zeros(0, dtype=torch.int64), 3), torch.zeros(3, dtype=torch.int64))
    with torch.device("meta"):  # no value is read: it runs where bincount (which sizes from data) cannot
        assert count_indices(torch.empty(10, dtype=torch.int64), 4).shape == (4,)


def test_loss_free_update_without_load_changes_nothing() -> None:
    bias = torch.tensor([0.5, -0.25, 0.0])
    loss_free_bias_update(bias, torch.zeros(3), rate=0.1)
    assert torch.equal(bias, torch.tensor([0.5, -0.25, 0.0]))
