"""Parameter and FLOP counts of an EncoderConfig, from the real module built on the meta device.

Counting the module that will actually be trained (instead of re-deriving formulas) means the
numbers cannot drift from the model code; the meta device allocates nothing, so the 475M-parameter
Nomic v2 counts in milliseconds on a laptop.

Conventions (those of the Nomic Embed v2 paper's "305M active of 475M"):
- ``active`` = parameters one token touches: everything except routed experts, which count
  ``experts_per_token / num_experts`` of their size (top_k of E for token-choice routers). Routers,
  output biases and shared experts always count. The whole embedding table counts as active.
- ``embedding`` = word + position + token-type tables and the embedding LayerNorm.
- FLOPs per token, forward = 2 x active non-embedding *matmul* parameters (>= 2-D weights; biases
  and LayerNorms are negligible and not counted) + attention scores and context, 2 x 2 x seq_len x D
  per layer for bidirectional attention. Training ~ 3 x forward (backward = 2 x forward).
"""

from __future__ import annotations

import re
from fractions import Fraction

import torch

from lit_nomic.config import EncoderConfig
from lit_nomic.model.encoder import Encoder

__all__ = ["count_parameters", "experts_per_token"]

_ROUTED = re.compile(r"^blocks\.(\d+)\.ffn\.experts\.")


def experts_per_token(config: EncoderConfig) -> Fraction:
    """Average routed experts a token visits: top_k (token choice) or top_k x capacity (expert choice).

    An expert-choice router lets each expert pick ``capacity_factor * top_k * T / E`` tokens, so a
    token is processed ``capacity_factor * top_k`` times on average (capped at E).
    """
    if config.router == "expert_choice":
        return min(
            Fraction(config.num_experts), Fraction(config.top_k) * Fraction(config.expert_capacity_factor)
        )
    return Fraction(config.top_k)


def count_parameters(config: EncoderConfig, seq_len: int | None = None) -> dict[str, int]:
    """Total/active/embedding parameter counts and per-token FLOPs at ``seq_len`` tokens per text.

    ``seq_len`` defaults to min(512, max_position_embeddings), a typical training length.
    """
    if seq_len is None:
        seq_len = min(512, config.max_position_embeddings)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    with torch.device("meta"):
        encoder = Encoder(config)
    routed_fraction = experts_per_token(config) / config.num_experts

    total = embedding = routed = router = 0
    active_non_embedding = Fraction(0)
    active_matmul = Fraction(0)
    for name, param in encoder.named_parameters():
        n = param.numel()
        total += n
        if name.startswith("embeddings."):
            embedding += n
            continue
        fraction = Fraction(1)
        if _ROUTED.match(name):
            routed += n
            fraction = routed_fraction
        elif ".ffn.router." in name:
            router += n
        active_non_embedding += n * fraction
        if param.dim() >= 2:
            active_matmul += n * fraction

    attention_flops = 4 * config.num_layers * seq_len * config.hidden_size
    forward = 2 * active_matmul + attention_flops
    active = embedding + active_non_embedding
    return {
        "total": total,
        "active": round(active),
        "embedding": embedding,
        "non_embedding": total - embedding,
        "active_non_embedding": round(active_non_embedding),
        "routed_experts": routed,
        "router": router,
        "seq_len": seq_len,
        "flops_per_token_forward": round(forward),
        "flops_per_token_train": round(3 * forward),
    }
