r"""Weighting of the MoE router regularisers that are added to the contrastive loss.

Each MoE layer reports, for one forward pass over ``T`` tokens with ``E`` experts and top-``k`` routing:

* the load-balancing loss of Switch/GShard (Fedus et al. 2021), already free of its coefficient α:
  ``aux = E / (T·k) · Σ_i tokens_i · mean_prob_i`` (1.0 when routing is perfectly uniform);
* the router z-loss of ST-MoE (Zoph et al. 2022): ``z = mean_tokens (logsumexp(router_logits))²``.

The regulariser is

.. math::  R = \sum_{p \in \text{passes}} \Big( c_{aux}\,\frac{1}{L_p}\sum_{l} aux_{p,l}
                                          + c_z\,\frac{1}{L_p}\sum_{l} z_{p,l} \Big)

*Mean over layers*, because MegaBlocks divides its batched load-balancing loss by ``num_layers`` and
contrastors inherits that scaling: the coefficient then means the same thing whatever the depth or the MoE frequency of the encoder, and ablations that
change the number of MoE layers do not silently change the regularisation strength. *Sum over
passes* (e.g. the query pass and the document pass of a contrastive step), because each pass routes
its own tokens and contrastors adds every forward's router loss to the objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["MoERegularisation", "moe_regularisation"]


class MoERegularisation(NamedTuple):
    """Weighted total to add to the loss, and the unweighted parts to log."""

    total: torch.Tensor  # aux_coef * aux + z_coef * z
    aux: torch.Tensor  # sum over passes of the mean load-balancing loss over layers
    z: torch.Tensor  # sum over passes of the mean router z-loss over layers


def _sum_of_layer_means(passes: Sequence[Sequence[torch.Tensor]], name: str) -> torch.Tensor | None:
    """Mean over the layers of each pass, summed over passes; None when there are no passes (dense model)."""
    total: torch.Tensor | None = None
    for p, layers in enumerate(passes):
        layers = list(layers)
        if not layers:
            raise ValueError(f"{name}[{p}] is empty: a forward pass must report one loss per MoE layer")
        for layer, value in enumerate(layers):
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{name}[{p}][{layer}] must be a scalar tensor, got {shape}")
        mean = torch.stack([v.reshape(()) for v in layers]).mean()
        total = mean if total is None else total + mean
    return total


def moe_regularisation(
    aux_losses: Sequence[Sequence[torch.Tensor]],
    z_losses: Sequence[Sequence[torch.Tensor]],
    aux_coef: float,
    z_coef: float,
) -> MoERegularisation:
    """Combine per-layer router losses, given as ``losses[pass][layer]`` scalars (see module docstring).

    A pass may also be a 1-D tensor of its per-layer losses.

    Empty outer lists (a dense model, or a regulariser the router does not compute) count as zero.
    """
    if aux_coef < 0 or z_coef < 0:
        raise ValueError(f"coefficients must be non-negative, got aux_coef={aux_coef}, z_coef={z_coef}")
    aux = _sum_of_layer_means(aux_losses, "aux_losses")
    z = _sum_of_layer_means(z_losses, "z_losses")
    like = aux if aux is not None else z
    zero = torch.zeros(
        (), device=None if like is None else like.device, dtype=None if like is None else like.dtype
    )
    aux = zero if aux is None else aux
    z = zero if z is None else z
    return MoERegularisation(aux_coef * aux + z_coef * z, aux.detach(), z.detach())
