"""A deliberately naive MoE forward: one Python iteration per expert (contrastors / HF remote-code style).

It exists to be obviously correct and to be the "loop" baseline of ``lit-nomic bench moe``. It reuses
the layer's parameters and routing policy (so routing is not what is being compared) but none of the
fast path's machinery: it reads the assignments in *token-major* order (the order the router
produced them), while the fast path consumes the expert-major sort, so a wrong permutation in
either shows up as a mismatch.

:func:`reference_expert_choice_gates` is the same kind of baseline for the expert-choice router: a
plain loop over sequences and experts, each expert taking ``topk`` of that sequence's scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_nomic.model.moe import MoEFeedForward
from lit_nomic.model.routers import Routing, expert_capacity


def reference_expert_choice_gates(
    logits: Tensor,
    cu_seqlens: Tensor | None,
    num_experts: int,
    top_k: int,
    capacity_factor: float,
) -> Tensor:
    """Dense ``[T, E]`` gates of per-sequence expert choice (0 = not picked), one loop per sequence.

    In sequence ``b`` of ``L`` tokens each expert takes the ``expert_capacity(L, ...)`` tokens with
    the highest softmax probability for it, gated by that probability.
    """
    probs = logits.float().softmax(dim=-1)
    bounds = [0, probs.shape[0]] if cu_seqlens is None else [int(c) for c in cu_seqlens]
    gates = torch.zeros_like(probs)
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        capacity = expert_capacity(stop - start, num_experts, top_k, capacity_factor)
        for e in range(num_experts):
            picked = torch.topk(probs[start:stop, e], capacity).indices + start
            gates[picked, e] = probs[picked, e]
    return gates


def routing_to_dense_gates(routing: Routing) -> Tensor:
    """``[T, E]`` gate matrix of a :class:`Routing` (0 where a token is not assigned to an expert)."""
    dense = routing.gates.new_zeros(routing.num_tokens, routing.num_experts)
    rows = routing.token_index.index_select(0, routing.token_major)
    cols = routing.expert_index.index_select(0, routing.token_major)
    return dense.index_put((rows, cols), routing.gates)


def reference_moe_forward(
    layer: MoEFeedForward, x: Tensor, routing: Routing | None = None, cu_seqlens: Tensor | None = None
) -> Tensor:
    """``layer(x, cu_seqlens).y`` computed with a per-expert loop; pass ``routing`` to reuse a jittered draw."""
    if routing is None:
        routing = layer.route(x, cu_seqlens)
    experts = layer.experts
    # Token-major view of the assignments: the token and expert of each (token, slot) pair.
    per_token = routing.row_ptr[1:] - routing.row_ptr[:-1]
    tokens = torch.repeat_interleave(torch.arange(routing.num_tokens, device=x.device), per_token)
    expert_of = routing.expert_index.index_select(0, routing.token_major)
    y = torch.zeros_like(x)
    for e in range(layer.num_experts):
        (positions,) = torch.nonzero(expert_of == e, as_tuple=True)
        if positions.numel() == 0:
            continue
        rows = tokens[positions]
        h = x[rows] @ experts.w1[e]
        if experts.b1 is not None:
            h = h + experts.b1[e]
        out = layer.act(h) @ experts.w2[e]
        if experts.b2 is not None:
            out = out + experts.b2[e]
        gate = routing.gates[positions].to(out.dtype).unsqueeze(1)
        y = y.index_add(0, rows, out * gate)
    if layer.shared_expert is not None:
        y = y + layer.shared_expert(x)
    if layer.output_bias is not None:
        y = y + layer.output_bias
    return y
