"""Training objectives on embeddings: contrastive InfoNCE (cross-rank), Matryoshka, MoE router regularisers,
and the distillation terms (embedding matching, score KL)."""

from lit_nomic.objectives.embedding_match import EmbeddingMatchLoss, global_row_scale
from lit_nomic.objectives.gather import all_gather_with_grad, all_gather_with_sizes, rank_and_world_size
from lit_nomic.objectives.infonce import ContrastiveOutput, GatheredBatch, InfoNCELoss, false_negative_mask
from lit_nomic.objectives.matryoshka import MatryoshkaLoss, MatryoshkaOutput
from lit_nomic.objectives.moe_balance import MoERegularisation, moe_regularisation
from lit_nomic.objectives.score_kl import ScoreDistillationLoss, kl_rows

__all__ = [
    "ContrastiveOutput",
    "EmbeddingMatchLoss",
    "GatheredBatch",
    "InfoNCELoss",
    "MatryoshkaLoss",
    "MatryoshkaOutput",
    "MoERegularisation",
    "ScoreDistillationLoss",
    "all_gather_with_grad",
    "all_gather_with_sizes",
    "false_negative_mask",
    "global_row_scale",
    "kl_rows",
    "moe_regularisation",
    "rank_and_world_size",
]
