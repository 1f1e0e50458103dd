r"""Embedding matching: pull the student's embedding of a text onto the teacher's embedding of it.

The feature-distillation term of MoE → dense distillation (sentence-transformers' ``MSELoss`` /
``CosineSimilarityLoss`` used for model distillation, Reimers & Gurevych 2020):

.. math::

    \ell_i^{\cos} = 1 - \cos(P s_i, t_i), \qquad
    \ell_i^{\mathrm{mse}} = \tfrac{1}{D_t} \lVert P s_i - t_i \rVert_2^2, \qquad
    \mathcal{L} = \frac{1}{N_g} \sum_{i=1}^{N_g} \ell_i

for student embeddings ``s_i`` (width ``D_s``), teacher embeddings ``t_i`` (width ``D_t``) of the same
texts, and ``P`` the identity when the widths agree, else a learned linear map ``D_s → D_t`` (without
bias: it only has to rotate/scale the student's space onto the teacher's). The mse form is the mean
over elements (PyTorch's ``mse_loss``), as sentence-transformers does, so it reads the same at any width.

Why cosine is the default: our embedders L2-normalise their output, and retrieval scores only the
direction, so matching the direction is the part of the teacher that transfers to retrieval.

Under data parallelism rank ``r`` returns ``(W / N_g) Σ_{i ∈ r} ℓ_i``, the same bookkeeping as
:mod:`lit_nomic.objectives.infonce`: the mean over ranks is the global-batch loss and DDP's gradient
average then gives the single-process gradient, also when ranks hold different numbers of rows.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lit_nomic.objectives.gather import is_distributed, rank_and_world_size

__all__ = ["EmbeddingMatchLoss", "EmbeddingMetric", "global_row_scale"]

EmbeddingMetric = Literal["cosine", "mse"]


def global_row_scale(local_rows: int, group: Any = None, device: torch.device | None = None) -> float:
    """``W / N_g``: the factor that turns a per-rank *sum* of row losses into a share of the global mean.

    ``N_g`` is the number of rows over all ranks (one small all-reduce); ``1 / local_rows`` when not
    distributed, i.e. the plain mean.
    """
    if not is_distributed(group):
        return 1.0 / local_rows
    _, world = rank_and_world_size(group)
    total = torch.tensor([float(local_rows)], device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return world / float(total.item())


class EmbeddingMatchLoss(nn.Module):
    """Cosine or MSE distance between (projected) student embeddings and teacher embeddings.

    Owns the projection ``P`` when the widths differ; it is trained with the student (and saved in
    the training checkpoint), but it is not part of the exported student, which never needs it.
    """

    def __init__(self, student_dim: int, teacher_dim: int, metric: EmbeddingMetric = "cosine") -> None:
        """
        Args:
            student_dim: width of the student's embeddings.
            teacher_dim: width of the teacher's embeddings; a different width adds the learned ``P``.
            metric: ``"cosine"`` (1 - cosine similarity) or ``"mse"`` (mean squared error per element).
        """
        super().__init__()
        if metric not in ("cosine", "mse"):
            raise ValueError(f"embedding metric must be 'cosine' or 'mse', got {metric!r}")
        if student_dim < 1 or teacher_dim < 1:
            raise ValueError(f"embedding widths must be positive, got {student_dim} and {teacher_dim}")
        self.metric = metric
        self.projection: nn.Linear | None = (
            nn.Linear(student_dim, teacher_dim, bias=False) if student_dim != teacher_dim else None
        )
        self.group: Any = None  # data-parallel process group; None = WORLD

    def row_losses(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``ℓ_i`` for every row, in at least fp32 (``[N]``)."""
        if student.ndim != 2 or teacher.ndim != 2 or student.shape[0] != teacher.shape[0]:
            raise ValueError(
                f"student and teacher embeddings must be [N, D] with the same N; got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        dtype = torch.promote_types(student.dtype, torch.float32)
        with torch.autocast(device_type=student.device.type, enabled=False):
            projected = student.to(dtype)
            if self.projection is not None:
                projected = F.linear(projected, self.projection.weight.to(dtype))
            target = teacher.detach().to(dtype)
            if projected.shape[1] != target.shape[1]:
                raise ValueError(
                    f"student width {projected.shape[1]} != teacher width {target.shape[1]} after projection"
                )
            if self.metric == "cosine":
                return 1.0 - F.cosine_similarity(projected, target, dim=-1)
            return (projected - target).pow(2).mean(dim=-1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Loss of student ``[N, D_s]`` against teacher ``[N, D_t]`` (the teacher is never differentiated)."""
        rows = self.row_losses(student, teacher)
        return rows.sum() * global_row_scale(int(rows.shape[0]), self.group, rows.device)
