r"""Score distillation: the student's query→document score distribution should be the teacher's.

Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network") applied to retrieval scores, as
in listwise embedding distillation (e.g. RocketQAv2, Qu et al. 2021; the KL-divergence loss of
sentence-transformers' distillation examples). For query ``i`` and a candidate set ``C_i``:

.. math::

    p^T_{ij} = \operatorname{softmax}_j\!\big(\cos(q^T_i, c^T_j) / \tau\big), \quad
    p^S_{ij} = \operatorname{softmax}_j\!\big(\cos(q^S_i, c^S_j) / \tau\big), \quad
    \ell_i = \mathrm{KL}(p^T_i \,\Vert\, p^S_i) = \sum_j p^T_{ij} (\log p^T_{ij} - \log p^S_{ij}),

    \mathcal{L} = \frac{1}{B_g} \sum_{i=1}^{B_g} \ell_i .

Why KL on the in-batch distribution and not only on each positive: the teacher's scores of the
*other* documents of the batch carry its ranking knowledge ("dark knowledge"), which InfoNCE's one-hot
target throws away. Why one temperature for both: the two models then agree exactly when their
cosine scores agree, so a student identical to its teacher has a loss of exactly zero.

Two candidate sets:

* **in-batch** (:meth:`ScoreDistillationLoss.forward`): ``C_i`` = every positive of the global batch
  plus every hard negative of the global batch, exactly InfoNCE's candidates
  (:mod:`lit_nomic.objectives.infonce`), gathered from all ranks; in-batch duplicates of the positive
  (equal ``doc_ids``) are removed from both distributions, as InfoNCE removes them.
* **mined scores** (:meth:`ScoreDistillationLoss.from_scores`): ``C_i`` = row ``i``'s own positive and
  hard negatives, with the teacher's cosine scores read from the data (the ``pos_score`` /
  ``neg_scores`` that ``lit-nomic mine`` writes for every triplet), so the teacher need not run.

Data parallelism: rank ``r`` returns ``(W / B_g) Σ_{i ∈ r} ℓ_i`` (InfoNCE's bookkeeping): the mean over
ranks is the global-batch loss and the gathered student candidates send their gradients back to the
rank that owns them, so DDP's gradient average gives the single-process gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_nomic.objectives.embedding_match import global_row_scale
from lit_nomic.objectives.gather import all_gather_with_sizes, rank_and_world_size
from lit_nomic.objectives.infonce import false_negative_mask, masked_logits

__all__ = ["ScoreDistillationLoss", "kl_rows"]


def kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) ‖ softmax(student))`` per row; entries at -inf in the teacher count as 0.

    A masked candidate (-inf in both rows) has teacher probability 0 and contributes nothing; writing
    the sum with ``where`` instead of ``F.kl_div`` keeps ``0 · (-inf - -inf)`` from becoming NaN.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher and student logits differ in shape: {tuple(teacher_logits.shape)} vs "
            f"{tuple(student_logits.shape)}"
        )
    log_pt = F.log_softmax(teacher_logits, dim=-1)
    log_ps = F.log_softmax(student_logits, dim=-1)
    present = torch.isfinite(log_pt)
    terms = torch.where(present, log_pt.exp() * (log_pt - log_ps), torch.zeros_like(log_ps))
    return terms.sum(dim=-1)


class ScoreDistillationLoss(nn.Module):
    """KL between teacher and student query→document score distributions (module docstring)."""

    def __init__(self, temperature: float = 0.05, gather_across_ranks: bool = True) -> None:
        """
        Args:
            temperature: τ applied to both models' cosine scores (logit scale 1/τ).
            gather_across_ranks: candidates from the global batch; False uses this rank's only.
        """
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"score distillation temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.gather_across_ranks = gather_across_ranks
        self.group: Any = None  # data-parallel process group; None = WORLD

    def _gather(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        if not self.gather_across_ranks:
            return x, [int(x.shape[0])]
        return all_gather_with_sizes(x, self.group)

    def forward(
        self,
        student_query: torch.Tensor,
        student_document: torch.Tensor,
        teacher_query: torch.Tensor,
        teacher_document: torch.Tensor,
        student_negatives: torch.Tensor | None = None,
        teacher_negatives: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """In-batch KL for this rank's queries; student ``[B, D_s]`` and teacher ``[B, D_t]`` rows align.

        Negatives ``[B·n, D]`` must be given for both models or for neither. Every rank must call this
        with the same structure (the collectives would otherwise deadlock).
        """
        if (student_negatives is None) != (teacher_negatives is None):
            raise ValueError("give hard-negative embeddings for both the student and the teacher, or neither")
        local = int(student_query.shape[0])
        if teacher_query.shape[0] != local or student_document.shape[0] != local:
            raise ValueError("student and teacher queries and documents must have the same number of rows")
        rank = rank_and_world_size(self.group)[0] if self.gather_across_ranks else 0
        s_docs, sizes = self._gather(student_document)
        t_docs = self._gather(teacher_document.detach())[0]
        rank_offset = sum(sizes[:rank])  # global index of this rank's first query
        s_cands, t_cands = [s_docs], [t_docs]
        if student_negatives is not None and teacher_negatives is not None:
            s_cands.append(self._gather(student_negatives)[0])
            t_cands.append(self._gather(teacher_negatives.detach())[0])
        mask = None
        if doc_ids is not None:
            all_ids = self._gather(doc_ids)[0]
            mask = false_negative_mask(all_ids[rank_offset : rank_offset + local], all_ids, rank_offset)
        with torch.autocast(device_type=student_query.device.type, enabled=False):
            dtype = torch.promote_types(student_query.dtype, torch.float32)
            scale = torch.tensor(1.0 / self.temperature, dtype=dtype, device=student_query.device)
            norm = lambda t: F.normalize(t.to(dtype), dim=-1)
            student = masked_logits(norm(student_query), norm(torch.cat(s_cands)), scale, mask)
            teacher = masked_logits(norm(teacher_query.detach()), norm(torch.cat(t_cands)), scale, mask)
            rows = kl_rows(teacher, student)
        return rows.sum() * global_row_scale(
            local, self.group if self.gather_across_ranks else None, rows.device
        )

    def from_scores(
        self, student_query: torch.Tensor, student_candidates: torch.Tensor, teacher_scores: torch.Tensor
    ) -> torch.Tensor:
        """KL over each row's own candidates: query ``[B, D]``, candidates ``[B, C, D]`` (positive first,
        then its hard negatives), teacher cosine scores ``[B, C]`` from the data (NaN = no candidate)."""
        if student_candidates.ndim != 3 or student_candidates.shape[:2] != teacher_scores.shape:
            raise ValueError(
                f"candidates [B, C, D] and teacher scores [B, C] do not align: "
                f"{tuple(student_candidates.shape)} vs {tuple(teacher_scores.shape)}"
            )
        with torch.autocast(device_type=student_query.device.type, enabled=False):
            dtype = torch.promote_types(student_query.dtype, torch.float32)
            query = F.normalize(student_query.to(dtype), dim=-1)
            cands = F.normalize(student_candidates.to(dtype), dim=-1)
            student = torch.einsum("bd,bcd->bc", query, cands) / self.temperature
            teacher = teacher_scores.detach().to(dtype) / self.temperature
            missing = torch.isnan(teacher)
            teacher = teacher.masked_fill(missing, float("-inf"))
            student = student.masked_fill(missing, float("-inf"))
            rows = kl_rows(teacher, student)
        group = self.group if self.gather_across_ranks else None
        return rows.sum() * global_row_scale(int(rows.shape[0]), group, rows.device)
