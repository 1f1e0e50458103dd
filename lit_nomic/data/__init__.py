"""Training data: readers (JSONL shards, BEIR, SciTLDR), the mixture spec, the source-homogeneous
resumable plan, tokenising collation and the Lightning datamodule.

Modules: ``formats`` (the reader layer shared with evaluation and curation: JSONL, BEIR folders,
qrels, the BEIR title + text rule), ``records`` (record types, bad-input policy, text hash), ``shards`` (shard discovery, offset
index, ``.gz`` cache), ``jsonl``, ``beir_pairs``, ``scitldr`` (readers), ``mixture`` (``SourceSpec``),
``sampler`` (``GlobalBatchPlan``), ``collate`` (``PairCollator``), ``stream`` (worker dataset and
resumable loader), ``datamodule`` (``ContrastiveDataModule``, imported lazily because it pulls in
Lightning).
"""

from __future__ import annotations

from typing import Any

from lit_nomic.data.beir_pairs import BeirPairs
from lit_nomic.data.jsonl import ColumnExtractor, JsonlPairs
from lit_nomic.data.mixture import MixtureError, SourceSpec, load_mixture, open_source
from lit_nomic.data.records import DataFormatError, PairRecord, TrainingPair, stable_text_hash
from lit_nomic.data.sampler import GlobalBatchPlan
from lit_nomic.data.scitldr import SciTldrPairs

__all__ = [
    "BeirPairs",
    "ColumnExtractor",
    "ContrastiveDataModule",
    "DataFormatError",
    "GlobalBatchPlan",
    "JsonlPairs",
    "MixtureError",
    "PairRecord",
    "SciTldrPairs",
    "SourceSpec",
    "TrainingPair",
    "load_mixture",
    "open_source",
    "stable_text_hash",
]


def __getattr__(name: str) -> Any:
    if name == "ContrastiveDataModule":
        from lit_nomic.data.datamodule import ContrastiveDataModule

        return ContrastiveDataModule
    raise AttributeError(f"module 'lit_nomic.data' has no attribute {name!r}")
