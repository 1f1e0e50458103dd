"""Pairs and triplets from JSONL / JSONL.gz shards, read by offset so texts never all sit in memory.

Accepted line shapes (column names configurable)::

    {"query": "...", "document": "..."}                       # a pair
    {"query": "...", "pos": ["...", "..."], "neg": ["..."]}   # FlagEmbedding style: one pos drawn per epoch

A string or a list of strings is accepted for the query and positive columns; a list means
*alternatives*, of which each epoch uses one (drawn from the plan's seed, so resumes agree). The
negative column is read only when ``num_negatives > 0`` and must then hold at least that many
strings; when it holds more, each epoch either draws ``num_negatives`` of them without replacement
(the source's ``negatives: random``, the default) or takes the first ``num_negatives`` in file order
(``negatives: first``), see :func:`lit_nomic.data.records.choose`.

Teacher scores (``teacher_scores=True``, the default): a line written by ``lit-nomic mine`` also has
``pos_score`` (a number, or a list aligned with the positives) and ``neg_scores`` (a list aligned
with ``neg``). They are read when present; a line of a source with ``num_negatives > 0`` must then
have both, with one finite number per text, or it is a bad line (``on_error``). Lines without
either field are read as unscored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit_nomic.data.records import (
    DataFormatError,
    IndexedSource,
    OnError,
    PairRecord,
    SkipReport,
    require_text_list,
)
from lit_nomic.data.shards import (
    LineIndex,
    ShardReader,
    index_jsonl,
    materialize_shard,
    parse_json_line,
    resolve_shards,
)

__all__ = [
    "DOCUMENT_COLUMN_CANDIDATES",
    "ColumnExtractor",
    "IndexedJsonlPairs",
    "JsonlPairs",
    "RecordExtractor",
]

RecordExtractor = Callable[[dict, str], PairRecord]
DOCUMENT_COLUMN_CANDIDATES: tuple[str, ...] = ("document", "pos")
POSITIVE_SCORE_COLUMN = "pos_score"
NEGATIVE_SCORES_COLUMN = "neg_scores"


def _score_list(obj: dict, key: str, where: str, count: int, *, scalar_ok: bool) -> tuple[float, ...]:
    """``count`` finite numbers from field ``key`` (a bare number when ``scalar_ok`` and ``count == 1``)."""
    value = obj[key]
    if scalar_ok and not isinstance(value, list):
        value = [value]
    if not isinstance(value, list):
        raise DataFormatError(where, f"field {key!r} must be a list of numbers, got {type(value).__name__}")
    if len(value) != count:
        raise DataFormatError(where, f"field {key!r} has {len(value)} score(s) for {count} text(s)")
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise DataFormatError(where, f"field {key}[{i}] must be a finite number, got {item!r}")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class ColumnExtractor:
    """Maps one JSON object to a :class:`PairRecord` through configurable column names.

    ``document=None`` accepts either ``document`` or ``pos`` (the two spellings in common datasets).
    ``teacher_scores``: read the miner's ``pos_score`` / ``neg_scores`` when a line has them (module
    docstring); False ignores them.
    """

    query: str = "query"
    document: str | None = None
    negatives: str = "neg"
    num_negatives: int = 0
    teacher_scores: bool = True

    def __call__(self, obj: dict, where: str) -> PairRecord:
        queries = require_text_list(obj, self.query, where)
        doc_key = self.document
        if doc_key is None:
            doc_key = next((k for k in DOCUMENT_COLUMN_CANDIDATES if k in obj), None)
            if doc_key is None:
                raise DataFormatError(where, f"missing field 'document' (or 'pos'); keys: {sorted(obj)[:10]}")
        positives = require_text_list(obj, doc_key, where)
        negatives: tuple[str, ...] = ()
        if self.num_negatives > 0:
            negatives = require_text_list(obj, self.negatives, where, min_items=self.num_negatives)
        pos_scores = neg_scores = None
        if self.teacher_scores:
            pos_scores, neg_scores = self._scores(obj, where, len(positives), negatives)
        return PairRecord(queries, positives, negatives, pos_scores, neg_scores)

    def _scores(
        self, obj: dict, where: str, positives: int, negatives: tuple[str, ...]
    ) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        has_pos = POSITIVE_SCORE_COLUMN in obj
        has_neg = NEGATIVE_SCORES_COLUMN in obj and self.num_negatives > 0
        if not has_pos and not has_neg:
            return None, None
        if self.num_negatives > 0 and has_pos != has_neg:
            missing = NEGATIVE_SCORES_COLUMN if has_pos else POSITIVE_SCORE_COLUMN
            present = POSITIVE_SCORE_COLUMN if has_pos else NEGATIVE_SCORES_COLUMN
            raise DataFormatError(
                where, f"missing field {missing!r} (teacher scores need it with {present!r})"
            )
        pos = _score_list(obj, POSITIVE_SCORE_COLUMN, where, positives, scalar_ok=True)
        neg = (
            _score_list(obj, NEGATIVE_SCORES_COLUMN, where, len(negatives), scalar_ok=False)
            if has_neg
            else None
        )
        return pos, neg


class IndexedJsonlPairs(IndexedSource):
    """Any JSONL layout with one record per line, given an extractor; indexes on construction."""

    def __init__(
        self,
        name: str,
        path: str | os.PathLike,
        extractor: RecordExtractor,
        *,
        root: str | os.PathLike | None = None,
        on_error: OnError = "raise",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.name = name
        self.extractor = extractor
        self.shards: list[Path] = resolve_shards(path, root)
        read_paths = [materialize_shard(p, cache_dir) for p in self.shards]
        self._report = SkipReport(name)
        indexes: list[LineIndex] = [
            index_jsonl(shard, rp, extractor, on_error, self._report)
            for shard, rp in zip(self.shards, read_paths, strict=True)
        ]
        counts = np.array([len(ix) for ix in indexes], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._offsets = np.concatenate([ix.offsets for ix in indexes]) if indexes else np.zeros(0, np.int64)
        self._lengths = np.concatenate([ix.lengths for ix in indexes]) if indexes else np.zeros(0, np.int32)
        self._reader = ShardReader(read_paths)
        self._report.log(len(self))
        if len(self) == 0:
            raise DataFormatError(
                ", ".join(str(s) for s in self.shards[:3]),
                f"source {name!r} has no usable records ({self._report.skipped} skipped)",
            )

    def __len__(self) -> int:
        return int(self._starts[-1])

    def record(self, index: int) -> PairRecord:
        self._check_row(index)
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        offset = int(self._offsets[index])
        raw = self._reader.read(shard, offset, int(self._lengths[index]))
        where = f"{self.shards[shard]} @ byte {offset}"
        return self.extractor(parse_json_line(raw, where), where)


class JsonlPairs(IndexedJsonlPairs):
    """Query/document(/negatives) columns from JSONL shards (a file, a folder of shards, or a glob)."""

    def __init__(
        self,
        name: str,
        path: str | os.PathLike,
        columns: ColumnExtractor | None = None,
        *,
        root: str | os.PathLike | None = None,
        on_error: OnError = "raise",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(
            name, path, columns or ColumnExtractor(), root=root, on_error=on_error, cache_dir=cache_dir
        )
