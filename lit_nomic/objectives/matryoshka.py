r"""Matryoshka representation learning: the same contrastive loss on nested leading-dimension prefixes.

Kusupati et al. 2022, "Matryoshka Representation Learning" (NeurIPS):

.. math::  \mathcal{L}_{MRL} = \sum_{m \in \mathcal{M}} c_m \, \mathcal{L}\big(q_{1:m}, d_{1:m}\big)

where ``x_{1:m}`` keeps the first ``m`` coordinates and is re-normalised before scoring (the base loss
normalises internally), so a truncated embedding is a usable embedding on its own. Nomic Embed v2
trains with M = {768, 256}. The weights ``c_m`` default to 1, as in the paper.

With a gathering base loss (:class:`~lit_nomic.objectives.infonce.InfoNCELoss`) the cross-rank gather
runs once at full width and every prefix is a slice of it, so Matryoshka costs no extra communication.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from lit_nomic.objectives.infonce import ContrastiveOutput, GatheredBatch

__all__ = ["MatryoshkaLoss", "MatryoshkaOutput"]


class MatryoshkaOutput(NamedTuple):
    """Weighted total plus each prefix's loss, so training curves can show every width."""

    loss: torch.Tensor
    accuracy: torch.Tensor  # of the widest prefix
    logit_scale: torch.Tensor
    per_dim_loss: dict[int, torch.Tensor]  # detached, unweighted


@runtime_checkable
class _GatheringLoss(Protocol):
    def gather(
        self, query: torch.Tensor, document: torch.Tensor, negatives: Any, doc_ids: Any
    ) -> GatheredBatch: ...

    def loss_on(self, batch: GatheredBatch) -> ContrastiveOutput: ...


class MatryoshkaLoss(nn.Module):
    """Weighted sum of ``base_loss`` over the leading ``dims`` of every embedding (see module docstring)."""

    def __init__(self, base_loss: nn.Module, dims: list[int], weights: list[float] | None = None) -> None:
        """
        Args:
            base_loss: a contrastive loss returning ``(loss, accuracy, logit_scale, ...)``; it must
                L2-normalise its inputs. Its parameters (e.g. a learned temperature) are shared by all prefixes.
            dims: prefix widths, e.g. ``[768, 256]``; positive and distinct.
            weights: one non-negative weight per dim; default all 1.
        """
        super().__init__()
        if not dims:
            raise ValueError("dims must name at least one prefix width")
        if any(int(d) != d or d <= 0 for d in dims):
            raise ValueError(f"dims must be positive integers, got {dims}")
        if len(set(dims)) != len(dims):
            raise ValueError(f"dims must be distinct, got {dims}")
        weights = [1.0] * len(dims) if weights is None else list(weights)
        if len(weights) != len(dims):
            raise ValueError(f"got {len(weights)} weights for {len(dims)} dims ({dims})")
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError(f"weights must be non-negative with at least one positive, got {weights}")
        self.base_loss = base_loss
        self.dims = [int(d) for d in dims]
        self.weights = [float(w) for w in weights]

    def forward(
        self,
        query: torch.Tensor,
        document: torch.Tensor,
        negatives: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> MatryoshkaOutput:
        """Same inputs as the base loss; every embedding must be at least ``max(dims)`` wide."""
        width = int(query.shape[-1])
        if max(self.dims) > width:
            raise ValueError(f"Matryoshka dims {self.dims} exceed the embedding width {width}")
        if isinstance(self.base_loss, _GatheringLoss):
            batch = self.base_loss.gather(query, document, negatives, doc_ids)
            outputs = [self.base_loss.loss_on(batch.truncate(d)) for d in self.dims]
        else:
            cut = lambda t, d: None if t is None else t[..., :d]
            outputs = [
                self.base_loss(
                    query[..., :d], document[..., :d], negatives=cut(negatives, d), doc_ids=doc_ids
                )
                for d in self.dims
            ]
        total = sum(w * out.loss for w, out in zip(self.weights, outputs, strict=True))
        widest = outputs[self.dims.index(max(self.dims))]
        per_dim = {d: out.loss.detach() for d, out in zip(self.dims, outputs, strict=True)}
        return MatryoshkaOutput(total, widest.accuracy, widest.logit_scale, per_dim)
