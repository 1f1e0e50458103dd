"""Expert choice selects per sequence: batch-independent embeddings, capacity, padding, gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lit_nomic.config import EncoderConfig, preset
from lit_nomic.model import Encoder
from lit_nomic.model.moe import MoEFeedForward
from lit_nomic.model.moe_backends import TorchBackend
from lit_nomic.model.moe_reference import (
    reference_expert_choice_gates,
    reference_moe_forward,
    routing_to_dense_gates,
)
from lit_nomic.model.routers import (
    ExpertChoiceRouter,
    Routing,
    expert_capacity,
    router_z_loss,
    sequence_capacities,
)


def cu_of(lengths: list[int]) -> torch.Tensor:
    return F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)


def check_layout(r: Routing) -> None:
    """The invariants the backends rely on (as in test_routers.assert_layout)."""
    n = r.num_assignments
    assert torch.all(r.expert_index[1:] >= r.expert_index[:-1])
    assert torch.equal(torch.bincount(r.expert_index, minlength=r.num_experts), r.tokens_per_expert)
    assert torch.equal(r.token_major[r.expert_major], torch.arange(n))
    per_token = r.row_ptr[1:] - r.row_ptr[:-1]
    tokens_tm = torch.repeat_interleave(torch.arange(r.num_tokens), per_token)
    assert torch.equal(r.token_index[r.token_major], tokens_tm)
    assert r.top_k is None and r.gates.shape == (n,)


def ec_encoder(**overrides: Any) -> Encoder:
    """tiny-moe with an expert-choice router: 2 MoE layers of 4 experts, top-2."""
    values: dict[str, Any] = dict(router="expert_choice", router_init_std=0.5)
    values.update(overrides)
    return Encoder(preset("tiny-moe", **values))


def padded_batch(lengths: list[int], vocab: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), width))
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, 0), mask


class RoutingRecorder:
    """Wraps a layer's routing policy and keeps every Routing it returns (with its cu_seqlens)."""

    def __init__(self, layer: MoEFeedForward) -> None:
        self.inner = layer.routing
        self.calls: list[tuple[Routing, torch.Tensor | None]] = []
        layer.routing = self

    def __call__(self, logits: torch.Tensor, bias: torch.Tensor | None, cu: torch.Tensor | None) -> Routing:
        routing = self.inner(logits, bias, cu)
        self.calls.append((routing, cu))
        return routing


# ---------------------------------------------------------------------------- router vs the loop
CASES = [
    # (num_experts, top_k, capacity_factor, lengths)
    (4, 2, 1.0, [5, 30, 17]),
    (4, 1, 1.25, [1, 2, 3, 40]),
    (8, 2, 1.0, [1, 7, 1, 9]),  # one-token texts: capacity clamps up to 1
    (2, 2, 3.0, [3, 4]),  # capacity clamps down to the sequence length
    (16, 4, 0.5, [64]),
]


@pytest.mark.parametrize(("experts", "top_k", "factor", "lengths"), CASES, ids=str)
def test_router_matches_the_per_sequence_loop_reference(
    experts: int, top_k: int, factor: float, lengths: list[int]
) -> None:
    logits = (torch.randn(sum(lengths), experts) * 2).requires_grad_(True)
    cu = cu_of(lengths)
    routing = ExpertChoiceRouter(experts, top_k, factor)(logits, cu_seqlens=cu)
    check_layout(routing)
    got = routing_to_dense_gates(routing)
    expected = reference_expert_choice_gates(logits, cu, experts, top_k, factor)
    assert torch.equal(got, expected)
    # gradients flow through the gates to the logits, as they do through the reference's
    upstream = torch.randn_like(got)
    (g_got,) = torch.autograd.grad((got * upstream).sum(), logits)
    (g_ref,) = torch.autograd.grad((expected * upstream).sum(), logits)
    torch.testing.assert_close(g_got, g_ref, rtol=0, atol=1e-7)
    assert g_got.abs().sum() > 0


@pytest.mark.parametrize(("experts", "top_k", "factor", "lengths"), CASES, ids=str)
def test_per_sequence_capacity_is_respected(
    experts: int, top_k: int, factor: float, lengths: list[int]
) -> None:
    router = ExpertChoiceRouter(experts, top_k, factor)
    cu = cu_of(lengths)
    routing = router(torch.randn(sum(lengths), experts), cu_seqlens=cu)
    capacities = [expert_capacity(n, experts, top_k, factor) for n in lengths]
    assert sequence_capacities(torch.tensor(lengths), experts, top_k, factor).tolist() == capacities
    assert all(1 <= c <= n for c, n in zip(capacities, lengths, strict=True))
    assert routing.tokens_per_expert.tolist() == [sum(capacities)] * experts
    seq_of_token = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    for e in range(experts):
        chosen = routing.token_index[routing.expert_index == e]
        assert chosen.unique().numel() == chosen.numel(), "an expert picks distinct tokens"
        per_seq = torch.bincount(seq_of_token[chosen], minlength=len(lengths))
        assert per_seq.tolist() == capacities


def test_capacity_formula_and_clamps() -> None:
    # ceil(L * k * f / E): 10*2/4 = 5; ceil(3/4) = 1; 1 token, 8 experts -> 1; ceil(3*2*3/2) = 9 -> 3
    lengths = torch.tensor([10, 3, 1, 0])
    assert sequence_capacities(lengths, 4, 2, 1.0).tolist() == [5, 2, 1, 0]
    assert sequence_capacities(lengths, 4, 1, 1.0).tolist() == [3, 1, 1, 0]
    assert sequence_capacities(torch.tensor([3]), 2, 2, 3.0).tolist() == [3]
    assert sequence_capacities(torch.tensor([1]), 8, 1, 1.0).tolist() == [1]


def test_router_is_batch_independent_and_ties_go_to_the_earlier_token() -> None:
    router = ExpertChoiceRouter(4, 2, 1.0)
    lengths = [6, 11, 3]
    logits = torch.randn(sum(lengths), 4) * 3
    logits[6:17] = logits[6]  # the middle text: every token ties for every expert
    together = routing_to_dense_gates(router(logits, cu_seqlens=cu_of(lengths)))
    start = 0
    for n in lengths:
        alone = routing_to_dense_gates(router(logits[start : start + n]))
        assert torch.equal(together[start : start + n], alone)
        start += n
    # ties: each expert takes the first ceil(11 * 2 / 4) = 6 tokens of the tied text
    assert (together[6:12] > 0).all() and (together[12:17] == 0).all()


def test_no_boundaries_means_one_sequence() -> None:
    router = ExpertChoiceRouter(4, 2, 1.25)
    logits = torch.randn(19, 4)
    a = router(logits)
    b = router(logits, cu_seqlens=cu_of([19]))
    assert torch.equal(routing_to_dense_gates(a), routing_to_dense_gates(b))
    assert a.tokens_per_expert.tolist() == [router.capacity(19)] * 4
    with pytest.raises(ValueError, match="cu_seqlens"):
        router(logits, cu_seqlens=torch.tensor([19]))


# ---------------------------------------------------------------------------- MoE layer
def ec_layer(chunked: bool = False) -> MoEFeedForward:
    config = EncoderConfig(
        hidden_size=32,
        num_heads=4,
        ffn_size=48,
        num_experts=4,
        top_k=2,
        router="expert_choice",
        expert_capacity_factor=1.25,
        router_init_std=1.0,
        initializer_range=0.2,
        expert_bias=True,
        router_bias=True,
    )
    layer = MoEFeedForward(config)
    if chunked:
        layer.backend = TorchBackend(chunk_bytes=5 * 32 * 4, single_chunk_bytes=0)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith(("bias", ".b1", ".b2")):
                p.normal_(std=0.1)
    return layer


@pytest.mark.parametrize("layout", ["one_chunk", "chunks"])
def test_layer_matches_a_dense_per_sequence_reference(layout: str) -> None:
    """y[t] = sum_e gate[t, e] * expert_e(x[t]) with the loop reference's gates, and the naive
    per-expert loop of moe_reference, for the output and the gradients."""
    layer = ec_layer(chunked=layout == "chunks").eval()
    lengths = [4, 13, 1, 9]
    cu = cu_of(lengths)
    x = torch.randn(sum(lengths), 32, requires_grad=True)
    out = layer(x, cu)
    gates = reference_expert_choice_gates(layer.router(x), cu, 4, 2, 1.25)
    ex = layer.experts
    expected = layer.output_bias.expand_as(x).clone()
    for e in range(4):
        h = layer.act(x @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e]
        expected = expected + gates[:, e : e + 1] * h
    torch.testing.assert_close(out.y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.y, reference_moe_forward(layer, x, cu_seqlens=cu), rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(expected)
    params = [x, *layer.parameters()]
    got = torch.autograd.grad((out.y * upstream).sum(), params)
    ref = torch.autograd.grad((expected * upstream).sum(), params)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # aux outputs: z-loss over every token, no balance loss, counts = sum of per-text capacities
    torch.testing.assert_close(out.z_loss, router_z_loss(layer.router(x)))
    assert out.aux_loss.item() == 0.0
    assert out.tokens_per_expert.tolist() == [sum(expert_capacity(n, 4, 2, 1.25) for n in lengths)] * 4
    assert 0 < out.router_entropy.item() <= torch.log(torch.tensor(4.0)).item() + 1e-6


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_layer_output_is_batch_independent(mode: str) -> None:
    layer = ec_layer().train(mode == "train")  # router_jitter = 0: training routes deterministically
    lengths = [7, 2, 15]
    x = torch.randn(sum(lengths), 32)
    together = layer(x, cu_of(lengths)).y
    start = 0
    for n in lengths:
        alone = layer(x[start : start + n]).y
        torch.testing.assert_close(together[start : start + n], alone, rtol=0, atol=1e-6)
        start += n


# ---------------------------------------------------------------------------- encoder
def test_embedding_alone_equals_embedding_in_a_batch_eval() -> None:
    """The issue's property: a text's embedding does not depend on the texts it is batched with."""
    encoder = ec_encoder().eval()
    lengths = [5, 30, 17, 9]
    ids, mask = padded_batch(lengths)
    with torch.no_grad():
        together = encoder(ids, mask).embeddings
        for row, n in enumerate(lengths):
            alone = encoder(ids[row : row + 1, :n], mask[row : row + 1, :n]).embeddings
            torch.testing.assert_close(together[row], alone[0], rtol=0, atol=1e-6)
        # and in a different company, in another order
        order = [3, 0, 2]
        other = encoder(ids[order], mask[order]).embeddings
    torch.testing.assert_close(other, together[order], rtol=0, atol=1e-6)


def test_router_output_is_batch_independent_in_training() -> None:
    encoder = ec_encoder().train()
    assert encoder.config.router_jitter == 0.0
    recorders = [RoutingRecorder(layer) for layer in encoder.moe_layers]
    lengths = [8, 3, 21]
    ids, mask = padded_batch(lengths)
    encoder(ids, mask)
    together = [routing_to_dense_gates(rec.calls[-1][0]).detach() for rec in recorders]
    start = 0
    for row, n in enumerate(lengths):
        encoder(ids[row : row + 1, :n], mask[row : row + 1, :n])
        for rec, gates in zip(recorders, together, strict=True):
            alone = routing_to_dense_gates(rec.calls[-1][0]).detach()
            torch.testing.assert_close(gates[start : start + n], alone, rtol=0, atol=1e-6)
            assert torch.equal(gates[start : start + n] > 0, alone > 0), "same tokens picked"
        start += n


def test_padding_is_never_selected_and_capacity_follows_real_lengths() -> None:
    encoder = ec_encoder().eval()
    recorders = [RoutingRecorder(layer) for layer in encoder.moe_layers]
    lengths = [3, 12, 1, 6]
    ids, mask = padded_batch(lengths)
    wide_ids = F.pad(ids, (0, 20))  # 20 more pad columns: nothing may change
    wide_mask = F.pad(mask, (0, 20))
    with torch.no_grad():
        narrow = encoder(ids, mask).embeddings
        wide = encoder(wide_ids, wide_mask).embeddings
    torch.testing.assert_close(wide, narrow, rtol=0, atol=1e-6)
    config = encoder.config
    capacities = [expert_capacity(n, config.num_experts, config.top_k, 1.0) for n in lengths]
    seq_of_token = torch.repeat_interleave(torch.arange(4), torch.tensor(lengths))
    for rec in recorders:
        assert len(rec.calls) == 2
        for routing, cu in rec.calls:
            assert cu is not None and cu.tolist() == cu_of(lengths).tolist()
            assert routing.num_tokens == sum(lengths)  # real tokens only
            assert int(routing.token_index.max()) < sum(lengths)
            for e in range(config.num_experts):
                chosen = routing.token_index[routing.expert_index == e]
                assert torch.bincount(seq_of_token[chosen], minlength=4).tolist() == capacities


def test_backward_gives_finite_gradients_to_router_and_experts() -> None:
    encoder = ec_encoder(router_jitter=0.1).train()
    ids, mask = padded_batch([6, 19, 2])
    out = encoder(ids, mask)
    assert out.aux_loss.item() == 0.0 and out.z_loss.item() > 0
    for counts in out.tokens_per_expert:
        assert counts.tolist() == [sum(expert_capacity(n, 4, 2, 1.0) for n in (6, 19, 2))] * 4
    (out.embeddings @ torch.randn(out.embeddings.shape[1]) + 1e-3 * out.z_loss).sum().backward()
    for layer in encoder.moe_layers:
        for name in ("router.weight", "experts.w1", "experts.w2"):
            grad = layer.get_parameter(name).grad
            assert grad is not None and torch.isfinite(grad).all(), name
            assert grad.abs().sum() > 0, name
