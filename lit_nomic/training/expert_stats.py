"""Per-layer expert-load statistics for logging.

An MoE that collapses onto a few experts still trains (the loss falls) but wastes its capacity, so
the load of every expert in every MoE layer, its coefficient of variation (0 = perfectly balanced)
and the router entropy are logged; the numbers come from the tokens-per-expert counts that the MoE
layer returns for the real (non-padding) tokens it routed. Layers are named by their block index
(``layer3`` is ``encoder.blocks[3]``), so a curve keeps its name when an ablation moves the MoE layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor


class RoutedPass(Protocol):
    """What one forward pass reports per MoE layer (``EncoderOutput`` satisfies it)."""

    tokens_per_expert: list[Tensor]
    router_entropy: list[Tensor]


def load_fractions(passes: Sequence[RoutedPass]) -> list[Tensor]:
    """Fraction of routed assignments per expert, per MoE layer, summed over the forward passes."""
    layers: list[Tensor] = []
    for p in passes:
        for i, counts in enumerate(p.tokens_per_expert):
            counts = counts.detach().to(torch.float64)
            if i < len(layers):
                layers[i] = layers[i] + counts
            else:
                layers.append(counts)
    return [c / c.sum().clamp(min=1.0) for c in layers]


def coefficient_of_variation(fractions: Tensor) -> Tensor:
    """Population std / mean of the per-expert loads: 0 when balanced, sqrt(E - 1) when one expert takes all."""
    return fractions.std(unbiased=False) / fractions.mean().clamp(min=1e-12)


def expert_load_metrics(
    passes: Sequence[RoutedPass], layer_ids: Sequence[int] | None = None, per_expert: bool = True
) -> dict[str, float]:
    """Flat ``name -> value``: ``layer{b}/load_cv``, ``layer{b}/router_entropy``, ``layer{b}/expert{e}``.

    ``layer_ids`` are the block indices of the MoE layers (``EncoderConfig.moe_layer_indices``); by
    default the MoE layers are numbered 0, 1, ... The entropy of several passes is their token-weighted
    mean, i.e. the mean over every routed token of the step.
    """
    fractions = load_fractions(passes)
    ids = list(layer_ids) if layer_ids is not None else list(range(len(fractions)))
    if len(ids) != len(fractions):
        raise ValueError(f"{len(fractions)} MoE layers reported but {len(ids)} layer ids given: {ids}")
    metrics: dict[str, float] = {}
    for lid, frac in zip(ids, fractions, strict=True):
        metrics[f"layer{lid}/load_cv"] = float(coefficient_of_variation(frac))
        if per_expert:
            for e, value in enumerate(frac.tolist()):
                metrics[f"layer{lid}/expert{e}"] = value
    weighted = [0.0] * len(ids)
    weights = [0.0] * len(ids)
    for p in passes:
        for i, (h, counts) in enumerate(zip(p.router_entropy, p.tokens_per_expert, strict=True)):
            w = float(counts.sum())
            weighted[i] += float(h) * w
            weights[i] += w
    for lid, num, den in zip(ids, weighted, weights, strict=True):
        if den > 0:
            metrics[f"layer{lid}/router_entropy"] = num / den
    return metrics
