"""Distillation training mode: a frozen teacher (e.g. the upcycled MoE) teaches a dense student.

Selected in YAML by a ``model.distill`` block on the usual :class:`~lit_nomic.training.module.ContrastiveModule`
(no separate LightningModule: the student, data, optimiser, logging, checkpoints and parallelism are
the contrastive run's)::

    model:
      model: {init_from: all-minilm-l6-v2}        # the student
      distill:
        teacher: {init_from: runs/ablation-minilm/model}
        teacher_sharding: auto                    # or replicate (see Parallelism)
        teacher_cache: null                       # or a folder (see Teacher-embedding cache)
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
``parameters()`` (never in the optimiser) and not wrapped by DDP. It follows the student to its
device at the first batch.

Parallelism: the teacher is laid out like the student (``teacher_sharding: auto``, the default).
Under DDP, and in one process, every rank builds the same teacher from the same spec: it is
*replicated*. Under FSDP2 (``ModelParallelStrategy``) ``ContrastiveModule.configure_model`` hands the
student's data-parallel mesh to :meth:`Distiller.shard_teacher`, which applies ``fully_shard`` to the
teacher's blocks and then its root, as :func:`~lit_nomic.training.parallel.apply_fsdp2` does for the
student (same mesh, same parameter dtype): each rank keeps ``1/world`` of the teacher's weights, and
every teacher forward all-gathers one block at a time and frees it again right after (also the root:
``reshard_after_forward`` is forced on, since the teacher never runs backward). The teacher stays
out of the student's ``state_dict`` and optimiser, frozen, in eval mode and under ``no_grad``.
``teacher_sharding: replicate`` keeps a whole teacher on every rank under FSDP2 too (a small teacher
whose all-gathers cost more than its memory). A sharded teacher's forward is a collective: every
rank runs it the same number of times per step (the data plan draws each global batch from one
source, so every rank has the same text groups; the cache below decides collectively).

Teacher-embedding cache: ``teacher_cache: <folder>`` (:mod:`lit_nomic.training.teacher_cache`)
stores each text's teacher embedding, keyed by the hash of its token ids, in files of the teacher's
identity (config + weights hash, and dtype); from the second epoch on a batch whose texts are all
cached skips the teacher's forward, per text group (queries, documents, negatives). A folder made by
another teacher, or a corrupt file, is an error naming it (nothing is rebuilt silently). Each rank
writes only the files of what it computed; under a sharded teacher a group is skipped only when it is
cached on every rank (one small all-reduce), since the forward is a collective. A group with any
miss runs the teacher on the whole group, as without a cache, so the first epoch's losses are the
uncached ones and later epochs reuse those values bit for bit.

Student and teacher must share the tokenizer: a batch is tokenised once by the data module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lit_nomic.model.build import ModelSpec, build_embedder
from lit_nomic.model.embedder import Embedder
from lit_nomic.model.weights import state_dict_hash
from lit_nomic.objectives.embedding_match import EmbeddingMatchLoss
from lit_nomic.objectives.score_kl import ScoreDistillationLoss
from lit_nomic.training.teacher_cache import TeacherCache, text_keys

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
        teacher_sharding: ``auto`` lays the teacher out like the student (FSDP2-sharded on the
            student's mesh, else replicated); ``replicate`` keeps a whole teacher on every rank.
        teacher_cache: a folder of cached teacher embeddings, read and extended by the run (None:
            the teacher runs on every batch).
    """

    teacher: ModelSpec
    infonce_weight: float = 1.0
    embedding_weight: float = 1.0
    embedding_metric: Literal["cosine", "mse"] = "cosine"
    score_weight: float = 1.0
    score_temperature: float = 0.05
    use_data_scores: bool = True
    gather_across_ranks: bool = True
    teacher_sharding: Literal["auto", "replicate"] = "auto"
    teacher_cache: str | None = None

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
        if self.teacher_sharding not in ("auto", "replicate"):
            raise ValueError(
                f"distill.teacher_sharding must be 'auto' or 'replicate', got {self.teacher_sharding!r}"
            )


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
    FSDP2; None means WORLD. So is the teacher's sharding (:meth:`shard_teacher`).
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
        # The teacher's FSDP2 group once sharded (its forward is then a collective).
        self._teacher_group: Any = None
        self.cache: TeacherCache | None = None
        if config.teacher_cache is not None:
            # The weights are hashed before any sharding, while every rank still holds all of them.
            fingerprint = state_dict_hash(teacher.encoder.state_dict(), teacher.config, length=32)
            self.cache = TeacherCache(config.teacher_cache, fingerprint, teacher.embedding_dim)

    @property
    def teacher(self) -> Embedder:
        return self._teacher[0]

    @property
    def teacher_sharded(self) -> bool:
        return self._teacher_group is not None

    def shard_teacher(self, mesh: Any, param_dtype: torch.dtype = torch.float32) -> bool:
        """Shard the frozen teacher with FSDP2 on the student's data-parallel ``mesh`` (blocks, then root).

        Called by ``ContrastiveModule.configure_model`` right after the student is sharded, with the
        student's parameter dtype. Returns False (and leaves the teacher whole on every rank) for
        ``teacher_sharding: replicate``. The teacher is resharded after every forward, root included:
        it never runs backward, so nothing would reuse the gathered weights.
        """
        if self.config.teacher_sharding == "replicate" or self.teacher_sharded:
            return False
        from lit_nomic.training.parallel import apply_fsdp2

        teacher = self.teacher
        apply_fsdp2(
            teacher,
            teacher.encoder.blocks,
            mesh,
            param_dtype=param_dtype,
            reduce_dtype=torch.float32,  # no gradients: only the policy needs one
            reshard_after_forward=True,
        )
        teacher.eval()
        self._teacher_group = mesh.get_group()
        return True

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
        """The teacher's embeddings of the batch's ``query``/``doc``/``neg`` texts, one pass each.

        With a cache, a text group whose every text is cached (on every rank, under a sharded
        teacher) is read instead of computed; what is computed is added to the cache.
        """
        device = batch["query_input_ids"].device
        teacher = self.teacher
        if next(teacher.parameters()).device != device:
            teacher.to(device)

        def run(key: str) -> Tensor:
            return teacher(batch[f"{key}_input_ids"], batch[f"{key}_attention_mask"]).embeddings

        if self.cache is None:
            return {key: run(key) for key in keys}
        digests = {key: text_keys(batch[f"{key}_input_ids"], batch[f"{key}_attention_mask"]) for key in keys}
        cached = {key: self.cache.lookup(digests[key]) for key in keys}
        missing = [cached[key] is None for key in keys]
        if self.teacher_sharded and keys and dist.get_world_size(self._teacher_group) > 1:
            # The sharded forward is a collective: run a group wherever any rank misses it.
            flags = torch.tensor(missing, dtype=torch.int32, device=device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._teacher_group)
            missing = [bool(f) for f in flags.tolist()]
        out: dict[str, Tensor] = {}
        new_keys: list[bytes] = []
        new_rows: list[Tensor] = []
        for key, miss in zip(keys, missing, strict=True):
            hit = cached[key]
            computed = run(key) if miss else None
            if hit is not None:  # also when only another rank missed: the cached values stay the reference
                out[key] = hit.to(device)
            else:
                assert computed is not None
                out[key] = computed
                new_keys += digests[key]
                new_rows.append(computed)
        if new_rows:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            self.cache.add(new_keys, torch.cat(new_rows), rank=rank)
        return out

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
