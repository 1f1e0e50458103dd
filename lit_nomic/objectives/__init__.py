"""Training objectives on embeddings: contrastive InfoNCE (cross-rank), Matryoshka, MoE router regularisers."""

from lit_nomic.objectives.gather import all_gather_with_grad, all_gather_with_sizes, rank_and_world_size
from lit_nomic.objectives.infonce import ContrastiveOutput, GatheredBatch, InfoNCELoss, false_negative_mask
from lit_nomic.objectives.matryoshka import MatryoshkaLoss, MatryoshkaOutput
from lit_nomic.objectives.moe_balance import MoERegularisation, moe_regularisation

__all__ = [
    "ContrastiveOutput",
    "GatheredBatch",
    "InfoNCELoss",
    "MatryoshkaLoss",
    "MatryoshkaOutput",
    "MoERegularisation",
    "all_gather_with_grad",
    "all_gather_with_sizes",
    "false_negative_mask",
    "moe_regularisation",
    "rank_and_world_size",
]
