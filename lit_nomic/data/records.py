"""Training records, the bad-input policy, and the stable text hash shared by every reader.

A record keeps *alternatives* (several phrasings of the query, several positives) and a *pool* of hard
negatives exactly as the file lists them; which alternative and which negatives a batch uses is decided
later by :func:`choose`, from a seed that depends only on (seed, epoch, source, row). Keeping that choice
out of the readers is what lets the whole training stream stay a pure function of (seed, epoch, step).

Negatives are chosen in one of two ways (:data:`NEGATIVE_SELECTIONS`, a source's ``negatives`` field):
``random`` draws ``n`` of the pool without replacement, anew each epoch; ``first`` takes the first ``n``
in file order every epoch (contrastors' ``sample_negatives: false``: a miner writes its list best first).

Teacher scores. A record may carry the mining teacher's cosine scores (``lit-nomic mine`` writes
``pos_score`` / ``neg_scores``), aligned with its positives and its negative pool; :func:`choose` then
hands on the scores of exactly the positive and the negatives it picked, so a batch's
``teacher_scores`` always describe the texts the batch encodes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

__all__ = [
    "NEGATIVE_SELECTIONS",
    "ON_ERROR_CHOICES",
    "DataFormatError",
    "IndexedSource",
    "NegativeSelection",
    "OnError",
    "PairRecord",
    "PairSource",
    "SkipReport",
    "TrainingPair",
    "choose",
    "require_text",
    "require_text_list",
    "stable_text_hash",
]

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
ON_ERROR_CHOICES: tuple[str, ...] = ("raise", "skip")
NegativeSelection = Literal["random", "first"]
NEGATIVE_SELECTIONS: tuple[str, ...] = ("random", "first")


class DataFormatError(ValueError):
    """A bad line in a data file; the message always starts with ``file:line``."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class PairRecord:
    """One training example as stored: query alternatives, positive alternatives, negative pool.

    ``positive_scores`` / ``negative_scores``: the mining teacher's scores, one per positive / per
    negative of the pool, or None when the file has none.
    """

    queries: tuple[str, ...]
    positives: tuple[str, ...]
    negatives: tuple[str, ...] = ()
    positive_scores: tuple[float, ...] | None = None
    negative_scores: tuple[float, ...] | None = None


@dataclass(frozen=True)
class TrainingPair:
    """The texts one batch row actually uses (prefixes not yet applied).

    ``scores``: the teacher's scores of ``document`` then of each of ``negatives`` (in that order), when
    the record carries them; None otherwise.
    """

    query: str
    document: str
    negatives: tuple[str, ...] = ()
    scores: tuple[float, ...] | None = None


class PairSource(Protocol):
    """What the sampler and the batch builder need from a reader: a size and random access by row."""

    name: str

    def __len__(self) -> int: ...

    def record(self, index: int) -> PairRecord: ...

    @property
    def skip_report(self) -> SkipReport: ...


@dataclass
class SkipReport:
    """Lines a reader dropped under ``on_error: skip``: a count plus the first few reasons, never silent."""

    source: str
    skipped: int = 0
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def add(self, error: DataFormatError) -> None:
        self.skipped += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error))

    def log(self, kept: int) -> None:
        """One warning line per source with skipped input, so a run's log shows what was dropped."""
        if self.skipped:
            log.warning(
                "source %r: skipped %d bad record(s), kept %d; first: %s",
                self.source,
                self.skipped,
                kept,
                " | ".join(self.examples),
            )


class IndexedSource:
    """What the offset-indexed readers share: the skip report and the row-range check of ``record``."""

    name: str
    _report: SkipReport

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def skip_report(self) -> SkipReport:
        return self._report

    @property
    def skipped(self) -> int:
        return self._report.skipped

    def _check_row(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"source {self.name!r}: row {index} out of range [0, {len(self)})")


def handle_bad_line(error: DataFormatError, on_error: OnError, report: SkipReport) -> None:
    """Raise or count one bad line according to the policy."""
    if on_error == "raise":
        raise error
    report.add(error)


def require_text(obj: dict, key: str, where: str) -> str:
    """A non-empty string field; empty or whitespace-only text is an error (it would train on nothing)."""
    if key not in obj:
        raise DataFormatError(where, f"missing field {key!r} (keys: {sorted(obj)[:10]})")
    value = obj[key]
    if not isinstance(value, str):
        raise DataFormatError(where, f"field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataFormatError(where, f"field {key!r} is empty")
    return value


def require_text_list(obj: dict, key: str, where: str, min_items: int = 1) -> tuple[str, ...]:
    """A string or a list of non-empty strings (alternatives / a negative pool)."""
    if key not in obj:
        raise DataFormatError(where, f"missing field {key!r} (keys: {sorted(obj)[:10]})")
    value = obj[key]
    if isinstance(value, str):
        if not value.strip():
            raise DataFormatError(where, f"field {key!r} is empty")
        value = [value]
    if not isinstance(value, list):
        raise DataFormatError(
            where, f"field {key!r} must be a string or a list of strings, got {type(value).__name__}"
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DataFormatError(where, f"field {key}[{i}] must be a string, got {type(item).__name__}")
        if not item.strip():
            raise DataFormatError(where, f"field {key}[{i}] is empty")
    if len(value) < min_items:
        raise DataFormatError(where, f"field {key!r} has {len(value)} item(s), need at least {min_items}")
    return tuple(value)


def stable_text_hash(text: str) -> int:
    """A signed 64-bit id of a text, identical in every process and run (unlike ``hash``).

    Equal ids mark identical positives in a global batch, which InfoNCE must not treat as negatives.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


# Stream tags keep the RNGs of the schedule, the permutations and the per-row choices independent.
CHOICE_STREAM = 3


def choose(
    record: PairRecord,
    num_negatives: int,
    rng_for_row: Callable[[], np.random.Generator],
    selection: NegativeSelection = "random",
) -> TrainingPair:
    """Pick one query, one positive and ``num_negatives`` negatives.

    ``selection="random"`` draws the negatives without replacement from the row's generator;
    ``"first"`` takes ``record.negatives[:num_negatives]`` (the query and positive alternatives are
    still drawn). The generator is only built when there is a real choice (most rows have one query,
    one positive and exactly enough negatives), which keeps batch assembly cheap; the order of draws
    (query, positive, negatives) is fixed, so ``random`` gives the same picks as before ``first``
    existed. When the record carries teacher scores, the pair carries those of its picks.
    """
    if selection not in NEGATIVE_SELECTIONS:
        raise ValueError(f"negatives must be one of {NEGATIVE_SELECTIONS}, got {selection!r}")
    if num_negatives > len(record.negatives):
        raise ValueError(f"record has {len(record.negatives)} negatives, need {num_negatives}")
    draw_negatives = selection == "random" and len(record.negatives) > num_negatives
    needs_rng = len(record.queries) > 1 or len(record.positives) > 1 or draw_negatives
    if not needs_rng:
        return _pair(record, 0, 0, range(num_negatives))
    rng = rng_for_row()
    query = int(rng.integers(len(record.queries)))
    positive = int(rng.integers(len(record.positives)))
    picks: Sequence[int] = range(num_negatives)
    if num_negatives and selection == "random":  # also when exactly n: a built RNG always permutes them
        picks = [int(i) for i in rng.choice(len(record.negatives), size=num_negatives, replace=False)]
    return _pair(record, query, positive, picks)


def _pair(record: PairRecord, query: int, positive: int, negatives: Sequence[int]) -> TrainingPair:
    scores = None
    if record.positive_scores is not None and (not negatives or record.negative_scores is not None):
        neg_scores = record.negative_scores or ()
        scores = (record.positive_scores[positive], *(neg_scores[i] for i in negatives))
    return TrainingPair(
        record.queries[query],
        record.positives[positive],
        tuple(record.negatives[i] for i in negatives),
        scores,
    )
