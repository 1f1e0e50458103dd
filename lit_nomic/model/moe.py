"""The sparse Mixture-of-Experts FFN layer (Nomic Embed v2 / megablocks dMoE style).

``MoEFeedForward`` owns the parameters (router, stacked expert weights, output bias, optional shared
expert) and the loss-free balancing state; the routing policy lives in ``routers.py`` and the
expert computation in ``moe_backends.py``. It takes only the real tokens of a batch, flattened to
``[T, D]``, so padding never competes for experts nor skews the balancing statistics, plus the
sequence boundaries ``cu_seqlens`` so that expert choice can select within each sequence (a text's
embedding then does not depend on the other texts of its batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_nomic.config import EncoderConfig
from lit_nomic.model.ffn import FeedForward, activation_fn
from lit_nomic.model.moe_backends import ExpertParams, get_backend
from lit_nomic.model.routers import (
    Routing,
    all_reduce_load,
    apply_jitter,
    build_router,
    load_balancing_loss,
    loss_free_bias_update,
    router_entropy,
    router_z_loss,
)


@dataclass
class MoEOutput:
    """Output of one MoE layer; losses are unweighted (the caller applies coefficients and 1/L)."""

    y: Tensor
    """[T, D]"""
    aux_loss: Tensor
    """scalar ``E/(T*k) * sum_i tokens_i * mean_prob_i``; 0 for expert choice."""
    z_loss: Tensor
    """scalar mean over tokens of ``logsumexp(router_logits)^2``."""
    tokens_per_expert: Tensor
    """int64 [E], detached: assignments per expert in this call."""
    router_entropy: Tensor
    """scalar, detached: mean entropy of the router distribution."""


class MoEExperts(nn.Module):
    """The routed experts as stacked tensors, the layout grouped GEMMs consume directly.

    ``w1 [E, D, F]`` and ``w2 [E, F, D]`` are stored input-major (``x @ w1[e]``), i.e. the transpose
    of ``nn.Linear.weight``; upcycling copies ``fc1.weight.T`` into every ``w1[e]``.
    """

    def __init__(self, num_experts: int, hidden_size: int, expert_ffn: int, bias: bool) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden_size, expert_ffn))
        self.w2 = nn.Parameter(torch.empty(num_experts, expert_ffn, hidden_size))
        if bias:
            self.b1 = nn.Parameter(torch.empty(num_experts, expert_ffn))
            self.b2 = nn.Parameter(torch.empty(num_experts, hidden_size))
        else:
            self.register_parameter("b1", None)
            self.register_parameter("b2", None)

    def params(self) -> ExpertParams:
        return ExpertParams(self.w1, self.w2, self.b1, self.b2)

    def extra_repr(self) -> str:
        e, d, f = self.w1.shape
        return f"num_experts={e}, hidden_size={d}, expert_ffn={f}, bias={self.b1 is not None}"


class MoEFeedForward(nn.Module):
    """Dropless token-choice (or expert-choice) MoE FFN with grouped-GEMM experts.

    Parameters (a contract for weight import, upcycling and parameter counting):
    ``router.weight [E, D]`` (+ ``router.bias`` if ``router_bias``), ``experts.w1 [E, D, F]``,
    ``experts.w2 [E, F, D]`` (+ ``experts.b1 [E, F]``, ``experts.b2 [E, D]`` if ``expert_bias``),
    ``output_bias [D]`` if ``moe_output_bias``, ``shared_expert`` (a :class:`FeedForward` of width
    ``F * num_shared_experts``) if ``num_shared_experts > 0``; F = ``config.expert_ffn``.
    Buffers: ``selection_bias [E]`` (persistent: it decides routing, so it belongs to the model) and
    ``load_accumulator [E]`` (non-persistent: loads since the last bias update).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        num_experts, hidden, expert_ffn = config.num_experts, config.hidden_size, config.expert_ffn
        self.num_experts = num_experts
        self.top_k = config.top_k
        self.router = nn.Linear(hidden, num_experts, bias=config.router_bias)
        self.experts = MoEExperts(num_experts, hidden, expert_ffn, bias=config.expert_bias)
        if config.moe_output_bias:
            self.output_bias = nn.Parameter(torch.empty(hidden))
        else:
            self.register_parameter("output_bias", None)
        self.shared_expert: FeedForward | None = None
        if config.num_shared_experts > 0:
            self.shared_expert = FeedForward(
                hidden, expert_ffn * config.num_shared_experts, config.activation, bias=config.expert_bias
            )
        self.register_buffer("selection_bias", torch.zeros(num_experts, dtype=torch.float32))
        self.register_buffer(
            "load_accumulator", torch.zeros(num_experts, dtype=torch.float32), persistent=False
        )
        self.routing = build_router(config)
        self.backend = get_backend(config.moe_backend)
        self.act = activation_fn(config.activation)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        nn.init.normal_(self.router.weight, std=self.config.router_init_std)
        nn.init.normal_(self.experts.w1, std=std)
        nn.init.normal_(self.experts.w2, std=std)
        biases = [self.router.bias, self.experts.b1, self.experts.b2, self.output_bias]
        if self.shared_expert is not None:
            for linear in (self.shared_expert.fc1, self.shared_expert.fc2):
                nn.init.normal_(linear.weight, std=std)
                biases.append(linear.bias)
        for bias in biases:
            if bias is not None:
                nn.init.zeros_(bias)
        self.selection_bias.zero_()
        self.load_accumulator.zero_()

    # ------------------------------------------------------------------ routing
    def route(self, x: Tensor, cu_seqlens: Tensor | None = None) -> Routing:
        """Router logits -> assignments; jitter only in training, selection bias only if enabled.

        ``cu_seqlens`` (int ``[B + 1]``) delimits the sequences of ``x``; expert choice selects
        within each of them, token choice ignores it. None: ``x`` is one sequence.
        """
        router_in = apply_jitter(x, self.config.router_jitter) if self.training else x
        logits = self.router(router_in)
        bias = self.selection_bias if self.config.loss_free_balancing else None
        return self.routing(logits, bias, cu_seqlens)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, cu_seqlens: Tensor | None = None) -> MoEOutput:
        """``x`` [T, D] real tokens; ``cu_seqlens`` [B + 1] their sequence boundaries (None: one sequence)."""
        if x.dim() != 2 or x.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"MoEFeedForward expects real tokens flattened to [T, {self.config.hidden_size}], "
                f"got shape {tuple(x.shape)}"
            )
        routing = self.route(x, cu_seqlens)
        y = self.backend(x, routing, self.experts.params(), self.config.activation)
        if self.shared_expert is not None:
            y = y + self.shared_expert(x)
        if self.output_bias is not None:
            y = y + self.output_bias
        if routing.top_k is None:
            aux_loss = routing.probs.new_zeros(())
        else:
            aux_loss = load_balancing_loss(routing.probs, routing.tokens_per_expert, routing.top_k)
        tokens_per_expert = routing.tokens_per_expert.detach()
        if self.training and self.config.loss_free_balancing:
            self.load_accumulator += tokens_per_expert.to(self.load_accumulator.dtype)
        return MoEOutput(
            y=y,
            aux_loss=aux_loss,
            z_loss=router_z_loss(routing.logits),
            tokens_per_expert=tokens_per_expert,
            router_entropy=router_entropy(routing.probs),
        )

    # ------------------------------------------------------------------ loss-free balancing
    @torch.no_grad()
    def update_loss_free_bias(self) -> None:
        """Once per optimiser step: nudge the selection bias toward balanced loads, then reset.

        Loads are summed over data-parallel ranks first, so every rank applies the same update and
        the replicas keep routing identically. No-op unless ``config.loss_free_balancing``.
        """
        if not self.config.loss_free_balancing:
            return
        load = all_reduce_load(self.load_accumulator)
        # No load at all leaves the bias alone by itself (sign(0 - 0) = 0): no host-side check, no sync.
        loss_free_bias_update(self.selection_bias, load, self.config.loss_free_update_rate)
        self.load_accumulator.zero_()

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"router={c.router!r}, top_k={c.top_k}, backend={c.moe_backend!r}, "
            f"loss_free_balancing={c.loss_free_balancing}"
        )
