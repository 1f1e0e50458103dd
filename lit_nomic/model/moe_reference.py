"""A deliberately naive MoE forward: one Python iteration per expert (contrastors / HF remote-code style).

It exists to be obviously correct and to be the "loop" baseline of ``lit-nomic bench moe``. It reuses
the layer's parameters and routing policy (so routing is not what is being compared) but none of the
fast path's machinery: it reads the assignments in *token-major* order (the order the router
produced them), while the fast path consumes the expert-major sort, so a wrong permutation in
either shows up as a mismatch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_nomic.model.moe import MoEFeedForward
from lit_nomic.model.routers import Routing


def reference_moe_forward(layer: MoEFeedForward, x: Tensor, routing: Routing | None = None) -> Tensor:
    """``layer(x).y`` computed with a per-expert loop; pass ``routing`` to reuse a jittered draw."""
    if routing is None:
        routing = layer.route(x)
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
