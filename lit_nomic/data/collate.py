"""Turn the texts of one (rank's share of a) global batch into the trainer's tensor contract.

Batch keys (LongTensors are padded to the longest row of *this* batch, never to the max length):

* ``query_input_ids`` / ``query_attention_mask``: ``[B, Lq]``, query prefix applied, ``Lq <= max_query_length``
* ``doc_input_ids`` / ``doc_attention_mask``: ``[B, Ld]``, document prefix applied, ``Ld <= max_document_length``
* ``neg_input_ids`` / ``neg_attention_mask``: ``[B*n, Ln]`` only when the source has ``num_negatives = n > 0``;
  the negatives of row ``i`` are rows ``i*n .. (i+1)*n - 1``; document prefix and length
* ``doc_ids``: int64 ``[B]``, :func:`~lit_nomic.data.records.stable_text_hash` of the positive's text.
  Equal ids mean the same document appears twice in the global batch: the loss must not score it as a
  negative for the other row (``lit_nomic.objectives.infonce.false_negative_mask`` masks those logits).
  Batches are *not* re-drawn to avoid duplicates: that would make the plan depend on text content and
  break the pure (seed, epoch, step) -> batch mapping that exact resume relies on.
* ``query_ids``: int64 ``[B]``, the same hash of the query text. Equal query ids flag a query that has
  several positives in the batch (BEIR qrels with several relevant documents), whose other positives
  are false negatives too; exposed for losses that want to mask them as well.
* ``teacher_scores``: float32 ``[B, 1 + n]``, only when the source has ``num_negatives = n > 0`` and
  *every* row of the batch carries the mining teacher's scores (``pos_score`` / ``neg_scores``, read by
  :class:`~lit_nomic.data.jsonl.ColumnExtractor`): row ``i`` holds the score of its positive, then
  those of its negatives in the order of ``neg_input_ids`` rows ``i*n .. (i+1)*n - 1`` (the negatives
  :func:`~lit_nomic.data.records.choose` picked, under ``negatives: random`` or ``first``). This is
  what :class:`~lit_nomic.training.distill.Distiller` distils when present. A batch in which only some
  rows are scored gets no ``teacher_scores`` (the distiller then runs its own teacher for that batch)
  and the collator logs a warning once per source; a source without negatives gets none either,
  since a KL over the positive alone is always zero.
* ``source`` (str), ``source_index`` (int); the stream adds ``epoch`` and ``step`` (ints).

Token type ids are omitted (all zeros for every model we train).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lit_nomic.data.mixture import SourceSpec
from lit_nomic.data.records import TrainingPair, stable_text_hash
from lit_nomic.data.tokenizer import load_tokenizer, resolve_tokenizer

__all__ = ["TEACHER_SCORES_KEY", "PairCollator", "load_tokenizer", "resolve_tokenizer"]

log = logging.getLogger(__name__)

TEACHER_SCORES_KEY = "teacher_scores"  # what lit_nomic.training.distill reads


class PairCollator:
    """Tokenises the chosen texts of one batch with the source's prefixes and length limits."""

    def __init__(
        self, tokenizer: str | os.PathLike | PreTrainedTokenizerBase, root: str | os.PathLike | None = None
    ):
        if isinstance(tokenizer, PreTrainedTokenizerBase):
            self.tokenizer = tokenizer
        else:
            self.tokenizer = load_tokenizer(tokenizer, root, shared=True)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                f"tokenizer {self.tokenizer.name_or_path!r} has no pad token; dynamic padding needs one"
            )
        self._warned_partial_scores: set[str] = set()

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), int64, padded to the longest text after truncation."""
        out = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        return out["input_ids"].long(), out["attention_mask"].long()

    def __call__(self, pairs: Sequence[TrainingPair], spec: SourceSpec, source_index: int) -> dict[str, Any]:
        if not pairs:
            raise ValueError(f"source {spec.name!r}: empty batch")
        n = spec.num_negatives
        q_ids, q_mask = self.encode([spec.query_prefix + p.query for p in pairs], spec.max_query_length)
        d_ids, d_mask = self.encode(
            [spec.document_prefix + p.document for p in pairs], spec.max_document_length
        )
        batch: dict[str, Any] = {
            "query_input_ids": q_ids,
            "query_attention_mask": q_mask,
            "doc_input_ids": d_ids,
            "doc_attention_mask": d_mask,
        }
        if n > 0:
            negatives = [spec.document_prefix + neg for p in pairs for neg in p.negatives]
            if len(negatives) != n * len(pairs):
                raise ValueError(f"source {spec.name!r}: every row needs exactly {n} negatives")
            batch["neg_input_ids"], batch["neg_attention_mask"] = self.encode(
                negatives, spec.max_document_length
            )
            scores = self.teacher_scores(pairs, spec)
            if scores is not None:
                batch[TEACHER_SCORES_KEY] = scores
        batch["doc_ids"] = torch.tensor([stable_text_hash(p.document) for p in pairs], dtype=torch.int64)
        batch["query_ids"] = torch.tensor([stable_text_hash(p.query) for p in pairs], dtype=torch.int64)
        batch["source"] = spec.name
        batch["source_index"] = source_index
        return batch

    def teacher_scores(self, pairs: Sequence[TrainingPair], spec: SourceSpec) -> torch.Tensor | None:
        """``[B, 1 + n]`` float32 when every row is scored; None (warned once per source) when only some are."""
        scored = sum(p.scores is not None for p in pairs)
        if scored == 0:
            return None
        if scored < len(pairs):
            if spec.name not in self._warned_partial_scores:
                self._warned_partial_scores.add(spec.name)
                log.warning(
                    "source %r: %d of %d rows of a batch carry teacher scores (pos_score/neg_scores); such "
                    "batches get no 'teacher_scores' (logged once per source)",
                    spec.name,
                    scored,
                    len(pairs),
                )
            return None
        width = 1 + spec.num_negatives
        if any(len(p.scores) != width for p in pairs):  # type: ignore[arg-type]
            raise ValueError(f"source {spec.name!r}: every scored row needs {width} teacher scores")
        return torch.tensor([list(p.scores) for p in pairs], dtype=torch.float32)  # type: ignore[arg-type]
