"""Distillation training mode: a frozen teacher (e.g. the upcycled MoE) teaches a dense student.

Selected in YAML by a ``model.distill`` block on the usual :class:`~lit_nomic.training.module.ContrastiveModule`
(no separate LightningModule: the student, data, optimiser, logging, checkpoints and parallelism are
the contrastive run's)::

    model:
      model: {init_from: all-minilm-l6-v2}        # the student
      distill:
        teacher: {init_from: runs/ablation-minilm/model}
        infonce_weight: 1.0
        embedding_weight: 1.0
        embedding_metric: cosine
        score_weight: 1.0
        score_temperature: 0.05

Loss of one step (each term logged under ``train/distill/``)::

    loss = infonce_weight * infonce + embedding_weight * embedding + score_weight * score (+ MoE regularisers)

``embedding`` (:class:`~lit_nomic.objectives.embedding_match.EmbeddingMatchLoss`) matches the
student's query and document embeddings to the teacher's; ``score``
(:class:`~lit_nomic.objectives.score_kl.ScoreDistillationLoss`) is the KL between the two models'
in-batch query→document score distributions, or, when the batch carries the teacher's mined scores
(``teacher_scores``: ``[B, 1 + n]`` cosines of each row's positive then its negatives, what
``lit-nomic mine`` writes as ``pos_score``/``neg_scores``), over each row's own candidates.

The teacher. Built once from its :class:`~lit_nomic.model.build.ModelSpec` (our model folder, a
Hugging Face / sentence-transformers folder, a packaged name, or a training checkpoint: a ``.ckpt``
file or a sharded folder), frozen (``requires_grad=False``), always in eval mode (no dropout, no
router jitter, no loss-free bias updates), and run under ``no_grad`` once per batch. It is held
*outside* the module tree on purpose: it is then not in ``state_dict`` (checkpoints hold the student
and the trainable projection only; a resume rebuilds the teacher from the config), not in
``parameters()`` (never in the optimiser), not wrapped by DDP and not sharded by FSDP2. Every rank
builds the same teacher from the same spec, i.e. it is *replicated* under DDP and FSDP2 (for the
CPU-scale MiniLM teachers of this suite that is a few hundred MB at most). It follows the student to
its device at the first batch.

Student and teacher must share the tokenizer: a batch is tokenised once by the data module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from lit_nomic.model.build import ModelSpec, build_embedder
from lit_nomic.model.embedder import Embedder
from lit_nomic.objectives.embedding_match import EmbeddingMatchLoss
from lit_nomic.objectives.score_kl import ScoreDistillationLoss

__all__ = ["DistillConfig", "DistillOutput", "Distiller", "load_teacher"]

TEACHER_SCORES_KEY = "teacher_scores"


@dataclass
class DistillConfig:
    """The YAML ``model.distill`` block: the teacher and the weight of every term.

    Attributes:
        teacher: the frozen teacher (``init_from`` a model folder, packaged name or checkpoint).
        infonce_weight: weight of the student's own InfoNCE on the pairs (0 = pure distillation).
        embedding_weight: weight of embedding matching (queries and documents).
        embedding_metric: ``cosine`` (1 - cos) or ``mse`` (mean squared error per element).
        score_weight: weight of the KL between in-batch score distributions.
        score_temperature: τ of both models' scores in the KL (the student's InfoNCE keeps its own).
        use_data_scores: when a batch carries ``teacher_scores`` (mined), distil those instead of
            running the teacher for the KL term.
        gather_across_ranks: score candidates from the global batch (as InfoNCE does).
    """

    teacher: ModelSpec
    infonce_weight: float = 1.0
    embedding_weight: float = 1.0
    embedding_metric: Literal["cosine", "mse"] = "cosine"
    score_weight: float = 1.0
    score_temperature: float = 0.05
    use_data_scores: bool = True
    gather_across_ranks: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.teacher, dict):  # a plain mapping from Python callers
            self.teacher = ModelSpec(**self.teacher)
        weights = {
            "infonce_weight": self.infonce_weight,
            "embedding_weight": self.embedding_weight,
            "score_weight": self.score_weight,
        }
        bad = {k: v for k, v in weights.items() if v < 0}
        if bad or not any(v > 0 for v in weights.values()):
            raise ValueError(f"distill weights must be >= 0 with at least one > 0, got {weights}")
        if self.score_temperature <= 0:
            raise ValueError(f"distill.score_temperature must be > 0, got {self.score_temperature}")


class DistillOutput(NamedTuple):
    """The weighted distillation terms to add to the loss, and the unweighted ones to log."""

    total: Tensor
    terms: dict[str, Tensor]  # detached: embedding, score


def _is_checkpoint(ref: str) -> bool:
    """A Lightning checkpoint (what ``lit-nomic export`` reads), not a model folder (lit_nomic.cli rules)."""
    path = Path(ref).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return False
    sharded = path.is_dir() and ((path / "meta.pt").exists() or (path / ".metadata").exists())
    return ref.endswith(".ckpt") or sharded


def load_teacher(spec: ModelSpec) -> Embedder:
    """The frozen teacher in eval mode: a training checkpoint as exported, anything else as a run's init."""
    try:
        if spec.init_from is not None and _is_checkpoint(spec.init_from):
            if spec.preset is not None or spec.overrides:
                raise ValueError("a checkpoint teacher takes no preset or overrides")
            from lit_nomic.training.export import load_checkpoint_embedder

            teacher = load_checkpoint_embedder(spec.init_from)
        else:
            teacher = build_embedder(spec)
    except (FileNotFoundError, ValueError) as err:  # name the block: the student loads the same way
        kind = FileNotFoundError if isinstance(err, FileNotFoundError) else ValueError
        raise kind(f"distill.teacher: {err}") from err
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class Distiller(nn.Module):
    """The distillation terms of one step; owns the trainable projection, *holds* the frozen teacher.

    ``group`` (the data-parallel process group) is set by ``ContrastiveModule.configure_model`` under
    FSDP2; None means WORLD.
    """

    def __init__(self, config: DistillConfig, student: Embedder) -> None:
        super().__init__()
        self.config = config
        teacher = load_teacher(config.teacher)
        s_cfg, t_cfg = student.config, teacher.config
        if (s_cfg.vocab_size, s_cfg.pad_token_id) != (t_cfg.vocab_size, t_cfg.pad_token_id):
            raise ValueError(
                f"distill: the teacher's vocabulary ({t_cfg.vocab_size}, pad {t_cfg.pad_token_id}) differs "
                f"from the student's ({s_cfg.vocab_size}, pad {s_cfg.pad_token_id}); both must share the "
                "tokenizer, since each batch is tokenised once"
            )
        # A tuple, not an attribute nn.Module would register: see the module docstring.
        self._teacher: tuple[Embedder] = (teacher,)
        # Only with a weight: an unused projection would be a DDP parameter that never gets a gradient.
        self.embedding_loss = (
            EmbeddingMatchLoss(student.embedding_dim, teacher.embedding_dim, config.embedding_metric)
            if config.embedding_weight > 0
            else None
        )
        self.score_loss = ScoreDistillationLoss(config.score_temperature, config.gather_across_ranks)

    @property
    def teacher(self) -> Embedder:
        return self._teacher[0]

    @property
    def group(self) -> Any:
        return self.score_loss.group

    @group.setter
    def group(self, value: Any) -> None:
        self.score_loss.group = value
        if self.embedding_loss is not None:
            self.embedding_loss.group = value

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # never dropout or router updates in the teacher
        return self

    @torch.no_grad()
    def teacher_embeddings(self, batch: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Tensor]:
        """The teacher's embeddings of the batch's ``query``/``doc``/``neg`` texts, one pass each."""
        device = batch["query_input_ids"].device
        teacher = self.teacher
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        return {
            key: teacher(batch[f"{key}_input_ids"], batch[f"{key}_attention_mask"]).embeddings for key in keys
        }

    def forward(
        self,
        batch: dict[str, Any],
        query: Tensor,
        document: Tensor,
        negatives: Tensor | None,
        doc_ids: Tensor | None,
    ) -> DistillOutput:
        """The weighted embedding-matching and score-distillation terms for the student's embeddings."""
        cfg = self.config
        data_scores = batch.get(TEACHER_SCORES_KEY) if cfg.use_data_scores else None
        score_needs_teacher = cfg.score_weight > 0 and data_scores is None
        keys: list[str] = []
        if cfg.embedding_weight > 0 or score_needs_teacher:
            keys += ["query", "doc"]
        if score_needs_teacher and negatives is not None:
            keys.append("neg")
        t = self.teacher_embeddings(batch, tuple(keys)) if keys else {}
        zero = query.new_zeros((), dtype=torch.float32)
        embedding = score = zero
        if self.embedding_loss is not None:
            embedding = self.embedding_loss(torch.cat([query, document]), torch.cat([t["query"], t["doc"]]))
        if cfg.score_weight > 0 and data_scores is not None:
            candidates = document[:, None, :]
            if negatives is not None:
                n = negatives.shape[0] // query.shape[0]
                candidates = torch.cat([candidates, negatives.view(query.shape[0], n, -1)], dim=1)
            score = self.score_loss.from_scores(query, candidates, data_scores.to(query.device))
        elif cfg.score_weight > 0:
            score = self.score_loss(query, document, t["query"], t["doc"], negatives, t.get("neg"), doc_ids)
        total = cfg.embedding_weight * embedding + cfg.score_weight * score
        return DistillOutput(total, {"embedding": embedding.detach(), "score": score.detach()})
