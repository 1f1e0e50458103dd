r"""InfoNCE over in-batch positives and hard negatives, with negatives gathered from every rank.

Loss (van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding"; in the
query/document form of CLIP, Radford et al. 2021, and Nomic Embed, Nussbaum et al. 2024/2025):

.. math::

    \ell_i = -\log \frac{\exp(s\,\langle q_i, d_i\rangle)}
                        {\sum_{c \in \mathcal{C}} \exp(s\,\langle q_i, c\rangle)}, \qquad
    \mathcal{L} = \frac{1}{B_g}\sum_{i=1}^{B_g} \ell_i

with ``q`` and ``d`` L2-normalised, logit scale ``s = 1/τ`` (default τ = 0.02, s = 50, as Nomic Embed
v2), and candidates ``C`` = the positives of *all* queries of the global batch plus *all* hard
negatives of the global batch (what contrastors' ``clip_loss`` does). The optional symmetric term adds
the document→query direction, each positive scored against all queries, and averages the two
directions as CLIP does: ``(L_qd + L_dq) / 2``.

False negatives: with ``doc_ids`` (equal id ⇔ identical positive text), an in-batch document that
is identical to query ``i``'s positive (other than its own column) is removed from ``i``'s
candidates, as are the matching queries in the document→query direction.

Distributed bookkeeping (cache-free large batches). Rank ``r`` holds ``B_r`` queries; documents,
negatives (and, for the symmetric term, queries) are gathered from all ranks with
:func:`~lit_nomic.objectives.gather.all_gather_with_sizes`, whose backward sums every rank's
gradient into the owning rank. Rank ``r`` returns

.. math::  \mathcal{L}_r = \frac{W}{B_g} \sum_{i \in \text{rank } r} \ell_i ,

so ``mean_r L_r`` is the global-batch loss and, because gradients flow back to their owners and
DDP/FSDP2 then *average* over the ``W`` ranks, every parameter receives exactly the single-process
gradient of the global batch (``tests/dist_scripts/gather_equivalence.py`` checks this with 2 gloo
processes). With equal local batches the factor ``W·B_r/B_g`` is 1, i.e. the plain local mean.
contrastors also gathers with a summing backward (``torch.distributed.nn.all_gather``) but multiplies
its local-mean loss by ``W`` as well, so its gradient is ``W`` times this one (its auxiliary loss is
not scaled): under AdamW that equals this loss with gradient clipping at ``clip / W`` and the
auxiliary coefficient at ``alpha / W`` (experiments/README.md, tests/test_recipe_paper.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lit_nomic.objectives.gather import all_gather_with_sizes, rank_and_world_size

__all__ = [
    "ContrastiveOutput",
    "GatheredBatch",
    "InfoNCELoss",
    "false_negative_mask",
    "masked_logits",
]


class ContrastiveOutput(NamedTuple):
    """What a contrastive objective reports: the loss to backprop, and detached metrics to log."""

    loss: torch.Tensor
    accuracy: torch.Tensor  # in-batch top-1 of this rank's queries over all candidates
    logit_scale: torch.Tensor


@dataclass(frozen=True)
class GatheredBatch:
    """Embeddings after the cross-rank gather, before normalisation.

    Kept separate from the loss so that Matryoshka training gathers once at full width and then
    scores every truncated prefix, instead of paying one gather per dimension.
    """

    query: torch.Tensor  # this rank's queries [B, D]
    document: torch.Tensor  # positives of the global batch [B_g, D], rank order
    negatives: torch.Tensor | None  # hard negatives of the global batch [N_g, D]
    all_queries: torch.Tensor | None  # queries of the global batch [B_g, D]; only for the symmetric term
    doc_ids: torch.Tensor | None  # ids of the global positives [B_g]
    offset: int  # global index of this rank's first query
    world_size: int  # ranks the candidates came from (1 when not gathered)

    @property
    def global_batch(self) -> int:
        return int(self.document.shape[0])

    @property
    def dim(self) -> int:
        return int(self.query.shape[-1])

    def truncate(self, dim: int) -> GatheredBatch:
        """Leading ``dim`` coordinates of every embedding (a Matryoshka prefix)."""
        if not 0 < dim <= self.dim:
            raise ValueError(f"cannot truncate embeddings of width {self.dim} to {dim} dims")
        cut = lambda t: None if t is None else t[..., :dim]
        return replace(
            self,
            query=self.query[..., :dim],
            document=self.document[..., :dim],
            negatives=cut(self.negatives),
            all_queries=cut(self.all_queries),
        )


def false_negative_mask(row_ids: torch.Tensor, col_ids: torch.Tensor, offset: int) -> torch.Tensor:
    """``mask[i, j]`` is True when column ``j`` shares row ``i``'s id but is not row ``i``'s own column.

    Row ``i`` of this rank is global item ``offset + i``; its own column is never masked, so every
    row keeps its positive and the loss stays finite.
    """
    same = row_ids[:, None] == col_ids[None, :]
    own = (
        torch.arange(row_ids.shape[0], device=row_ids.device)[:, None] + offset
        == torch.arange(col_ids.shape[0], device=col_ids.device)[None, :]
    )
    return same & ~own


def masked_logits(
    rows: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``scale · rows @ columns.T`` with masked entries (the leading ``mask.shape[1]`` columns) at -inf.

    -inf rather than a large negative number: the masked entries then contribute exactly zero to the
    softmax and receive exactly zero gradient.
    """
    logits = scale * (rows @ columns.T)
    if mask is not None:
        full = torch.zeros_like(logits, dtype=torch.bool)
        full[:, : mask.shape[1]] = mask
        logits = logits.masked_fill(full, float("-inf"))
    return logits


def _check_inputs(
    query: torch.Tensor, document: torch.Tensor, negatives: torch.Tensor | None, doc_ids: torch.Tensor | None
) -> None:
    """Fail before any collective so that a bad batch raises instead of hanging the other ranks."""
    if query.ndim != 2 or document.ndim != 2:
        raise ValueError(
            f"query and document must be [batch, dim]; got query {tuple(query.shape)}, document {tuple(document.shape)}"
        )
    if query.shape != document.shape:
        raise ValueError(
            f"query {tuple(query.shape)} and document {tuple(document.shape)} must have the same shape "
            "(one positive document per query)"
        )
    if query.shape[0] == 0:
        raise ValueError("empty batch: query and document have 0 rows")
    if not (query.is_floating_point() and document.is_floating_point()):
        raise TypeError(f"embeddings must be floating point; got {query.dtype} and {document.dtype}")
    batch, dim = query.shape
    if negatives is not None:
        if negatives.ndim != 2 or negatives.shape[1] != dim:
            raise ValueError(f"negatives must be [batch * n, {dim}]; got {tuple(negatives.shape)}")
        if negatives.shape[0] == 0 or negatives.shape[0] % batch:
            raise ValueError(
                f"negatives have {negatives.shape[0]} rows, not a positive multiple of the batch size {batch} "
                "(expected [batch * n, dim] with row i's negatives at rows i*n..(i+1)*n-1)"
            )
    if doc_ids is not None:
        if doc_ids.dtype != torch.int64 or doc_ids.shape != (batch,):
            raise ValueError(
                f"doc_ids must be an int64 tensor of shape ({batch},); got {doc_ids.dtype} {tuple(doc_ids.shape)}"
            )


class InfoNCELoss(nn.Module):
    """Query→document InfoNCE with cross-rank negatives; see the module docstring for the formula.

    Put this module inside the LightningModule (it may own the learnable temperature, which must be
    synchronised by DDP/FSDP like any other parameter). Every rank must call it with the same
    structure (negatives and doc_ids present or absent on all ranks), or the collectives deadlock.
    """

    def __init__(
        self,
        temperature: float = 0.02,
        learn_temperature: bool = False,
        max_logit_scale: float = 100.0,
        symmetric: bool = False,
        gather_across_ranks: bool = True,
    ) -> None:
        """
        Args:
            temperature: τ; the logit scale is 1/τ (0.02 → 50, Nomic Embed v2).
            learn_temperature: learn log(1/τ) as a parameter (CLIP); otherwise 1/τ is a constant, not state.
            max_logit_scale: CLIP's cap (100) on the learned scale; above it the scale stops receiving gradient.
            symmetric: add the document→query term and average the two directions.
            gather_across_ranks: score against the global batch; False uses local negatives only.
        """
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if max_logit_scale <= 0 or 1.0 / temperature > max_logit_scale:
            raise ValueError(
                f"temperature {temperature} gives logit scale {1.0 / temperature:g}, above max_logit_scale {max_logit_scale}"
            )
        self.temperature = temperature
        self.learn_temperature = learn_temperature
        self.max_logit_scale = max_logit_scale
        self.symmetric = symmetric
        self.gather_across_ranks = gather_across_ranks
        self.group: Any = None  # data-parallel process group; None = WORLD (assign for a non-world DP mesh)
        # A fixed scale is a Python float, not a buffer: precision plugins ("bf16-true") cast buffers, and
        # log(50) in bf16 would silently train at 49.7. The config is its record.
        self.log_logit_scale: nn.Parameter | None = (
            nn.Parameter(torch.tensor(math.log(1.0 / temperature))) if learn_temperature else None
        )

    def scale_as(self, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.Tensor:
        """Logit scale in ``dtype``; the learned one is exp of the log-scale clamped at ``log(max_logit_scale)``.

        Clamping in forward keeps CLIP's cap without an optimiser hook (above it the scale gets no gradient).
        """
        if self.log_logit_scale is None:
            return torch.tensor(1.0 / self.temperature, dtype=dtype, device=device)
        return self.log_logit_scale.to(dtype).clamp(max=math.log(self.max_logit_scale)).exp()

    @property
    def logit_scale(self) -> torch.Tensor:
        """Current logit scale (1/τ) in fp32 or the parameter's precision, whichever is wider."""
        dtype = torch.float32 if self.log_logit_scale is None else self.log_logit_scale.dtype
        return self.scale_as(torch.promote_types(dtype, torch.float32))

    def gather(
        self,
        query: torch.Tensor,
        document: torch.Tensor,
        negatives: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> GatheredBatch:
        """Validate the local batch and gather candidates (and ids) from all ranks, with gradients."""
        _check_inputs(query, document, negatives, doc_ids)
        if not self.gather_across_ranks:
            return GatheredBatch(query, document, negatives, query if self.symmetric else None, doc_ids, 0, 1)
        rank, world = rank_and_world_size(self.group)
        all_docs, sizes = all_gather_with_sizes(document, self.group)
        all_negs = None if negatives is None else all_gather_with_sizes(negatives, self.group)[0]
        all_queries = all_gather_with_sizes(query, self.group)[0] if self.symmetric else None
        all_ids = None if doc_ids is None else all_gather_with_sizes(doc_ids, self.group)[0]
        return GatheredBatch(query, all_docs, all_negs, all_queries, all_ids, sum(sizes[:rank]), len(sizes))

    def loss_on(self, batch: GatheredBatch) -> ContrastiveOutput:
        """InfoNCE of this rank's queries against the gathered candidates (normalised here, idempotently)."""
        local = batch.query.shape[0]
        # Logits in (at least) fp32 even under bf16 autocast: with s = 50 the softmax is sharp.
        with torch.autocast(device_type=batch.query.device.type, enabled=False):
            dtype = torch.promote_types(batch.query.dtype, torch.float32)
            scale = self.scale_as(dtype, batch.query.device)
            norm = lambda t: F.normalize(t.to(dtype), dim=-1)
            query = norm(batch.query)
            documents = norm(batch.document)
            candidates = (
                documents if batch.negatives is None else torch.cat([documents, norm(batch.negatives)])
            )
            labels = torch.arange(local, device=query.device) + batch.offset
            mask = None
            if batch.doc_ids is not None:
                own_ids = batch.doc_ids[batch.offset : batch.offset + local]
                mask = false_negative_mask(own_ids, batch.doc_ids, batch.offset)
            logits = masked_logits(query, candidates, scale, mask)
            total = F.cross_entropy(logits, labels, reduction="sum")
            if self.symmetric:
                if batch.all_queries is None:
                    raise ValueError(
                        "symmetric InfoNCE needs the gathered queries; build the batch with gather()"
                    )
                own_docs = documents[batch.offset : batch.offset + local]
                logits_dq = masked_logits(own_docs, norm(batch.all_queries), scale, mask)
                total = 0.5 * (total + F.cross_entropy(logits_dq, labels, reduction="sum"))
            loss = total * (batch.world_size / batch.global_batch)
            accuracy = (logits.detach().argmax(dim=1) == labels).to(dtype).mean()
        return ContrastiveOutput(loss, accuracy, scale.detach())

    def forward(
        self,
        query: torch.Tensor,
        document: torch.Tensor,
        negatives: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> ContrastiveOutput:
        """Loss for query [B, D], positive document [B, D], hard negatives [B*n, D], doc_ids int64 [B]."""
        return self.loss_on(self.gather(query, document, negatives, doc_ids))
