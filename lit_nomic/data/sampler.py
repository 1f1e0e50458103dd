"""Source-homogeneous global batches as a pure function of (seed, epoch, step).

Why homogeneous: contrastive models learn shortcuts when one batch mixes sources (telling a medical
answer from a code snippet is easy and teaches nothing), so Nomic Embed / contrastors draw one source
per optimiser step for the whole *global* batch (per-rank batch x world size).

Why a pure function: every rank computes the same plan without communication, DataLoader workers can
produce any step independently, and resuming needs nothing but the position ``(epoch, step)``: the
restored run recomputes the very same next batch.

The plan
--------
* ``B_g`` = global batch size; source ``s`` has ``n_s`` rows and ``b_s = n_s // B_g`` full batches per
  pass (a source with ``b_s = 0`` is an error: it cannot fill one global batch).
* **Which source at each step** (the *schedule* of epoch ``e``), drawn from an RNG seeded by
  ``(seed, e)`` and indexed by step:

  - ``weighting="size"`` without ``steps_per_epoch``: an epoch is exactly one pass over every source:
    the multiset {s repeated b_s times} in a seeded random order. Sources are thus drawn proportionally
    to their size *without replacement*, and every full batch of every source is seen once per epoch
    (the ``n_s mod B_g`` left-over rows differ per epoch because the row order does).
  - otherwise each step draws a source i.i.d. from the weights (uniform, size-proportional or the
    spec's explicit weights). The epoch length is ``steps_per_epoch`` or, by default, ``sum_s b_s``
    steps (as many optimiser steps as one pass over all data).

* **Which rows**: the k-th time source ``s`` is drawn in epoch ``e`` it serves batch ``j = k mod b_s`` of
  pass ``p = k // b_s`` of a permutation seeded by ``(seed, e, s, p)``: rows ``perm[j*B_g:(j+1)*B_g]``.
  Passes beyond the first only happen when a source is drawn more often than it has batches (up-weighted
  small sources); each such pass is a fresh shuffle.
* **Which rank**: rank ``r`` of ``W`` takes rows ``[r*B, (r+1)*B)`` of the global batch, ``B = B_g / W``.

Seeds go through :class:`numpy.random.SeedSequence` with distinct stream tags, so the schedule, the
permutations and the per-row choices (:func:`lit_nomic.data.records.choose`) never share randomness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from lit_nomic.data.mixture import WEIGHTINGS, Weighting
from lit_nomic.data.records import CHOICE_STREAM

__all__ = ["GlobalBatchPlan", "SequentialPlan", "rank_slice", "row_rng"]

SCHEDULE_STREAM = 1
PERMUTATION_STREAM = 2


def rank_slice(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rows ``[rank*B, (rank+1)*B)`` of a global batch of ``B * world_size`` rows."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} invalid for world size {world_size}")
    if rows.shape[0] % world_size:
        raise ValueError(f"global batch {rows.shape[0]} not divisible by world size {world_size}")
    per_rank = rows.shape[0] // world_size
    return rows[rank * per_rank : (rank + 1) * per_rank]


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(entropy)))


def row_rng(seed: int, epoch: int, source: int, row: int) -> np.random.Generator:
    """The generator for a row's per-epoch choices (query/positive alternative, negatives)."""
    return _rng(seed, epoch, CHOICE_STREAM, source, row)


class GlobalBatchPlan:
    """Maps (epoch, step) to (source index, global-batch rows), deterministically.

    Tables for the most recent epochs and permutations are memoised per process; they are derived data,
    so a plan may be pickled to workers and rebuilt anywhere.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        global_batch_size: int,
        *,
        seed: int = 0,
        weighting: Weighting = "size",
        weights: Sequence[float] | None = None,
        steps_per_epoch: int | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if not sizes:
            raise ValueError("the plan needs at least one source")
        self.names = list(names) if names is not None else [f"source{i}" for i in range(len(sizes))]
        if len(self.names) != len(sizes):
            raise ValueError(f"{len(self.names)} names for {len(sizes)} sources")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {steps_per_epoch}")
        self.sizes = np.array([int(n) for n in sizes], dtype=np.int64)
        self.global_batch_size = int(global_batch_size)
        self.seed = seed
        self.weighting = weighting
        self.batches_per_pass = self.sizes // self.global_batch_size
        for name, size, count in zip(self.names, self.sizes, self.batches_per_pass, strict=True):
            if count == 0:
                raise ValueError(
                    f"source {name!r} has {size} rows, fewer than one global batch of "
                    f"{self.global_batch_size} (per-rank batch x world size); lower the batch size or drop it"
                )
        if weighting == "explicit":
            if weights is None or len(weights) != len(sizes):
                raise ValueError("weighting='explicit' needs one weight per source")
            raw = np.array(weights, dtype=np.float64)
            if not np.all(np.isfinite(raw)) or np.any(raw <= 0):
                raise ValueError(f"explicit weights must be finite and > 0, got {list(weights)}")
        elif weighting == "uniform":
            raw = np.ones(len(sizes))
        else:
            raw = self.sizes.astype(np.float64)
        self.probabilities = raw / raw.sum()
        self.exact_pass = weighting == "size" and steps_per_epoch is None
        self.steps_per_epoch = int(steps_per_epoch or self.batches_per_pass.sum())
        self._tables: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._perms: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()

    # ----------------------------------------------------------------- schedule
    def schedule(self, epoch: int) -> np.ndarray:
        """The source index of every step of ``epoch`` (int64, length ``steps_per_epoch``)."""
        return self._epoch_tables(epoch)[0]

    def _epoch_tables(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        cached = self._tables.get(epoch)
        if cached is not None:
            self._tables.move_to_end(epoch)
            return cached
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        rng = _rng(self.seed, epoch, SCHEDULE_STREAM)
        if self.exact_pass:
            multiset = np.repeat(np.arange(len(self.sizes), dtype=np.int64), self.batches_per_pass)
            schedule = rng.permutation(multiset)
        else:
            schedule = rng.choice(len(self.sizes), size=self.steps_per_epoch, p=self.probabilities).astype(
                np.int64
            )
        occurrence = np.empty_like(schedule)
        for source in range(len(self.sizes)):
            where = np.flatnonzero(schedule == source)
            occurrence[where] = np.arange(where.shape[0])
        self._tables[epoch] = (schedule, occurrence)
        while len(self._tables) > 2:
            self._tables.popitem(last=False)
        return schedule, occurrence

    def _permutation(self, epoch: int, source: int, pass_index: int) -> np.ndarray:
        key = (epoch, source, pass_index)
        perm = self._perms.get(key)
        if perm is None:
            dtype = np.int32 if self.sizes[source] < 2**31 else np.int64
            perm = np.arange(self.sizes[source], dtype=dtype)
            _rng(self.seed, epoch, PERMUTATION_STREAM, source, pass_index).shuffle(perm)
            self._perms[key] = perm
            while len(self._perms) > len(self.sizes) + 2:
                self._perms.popitem(last=False)
        else:
            self._perms.move_to_end(key)
        return perm

    # ------------------------------------------------------------------- lookup
    def global_batch(self, epoch: int, step: int) -> tuple[int, np.ndarray]:
        """(source index, the ``global_batch_size`` row indices of that source) at (epoch, step)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside the epoch [0, {self.steps_per_epoch})")
        schedule, occurrence = self._epoch_tables(epoch)
        source = int(schedule[step])
        pass_index, batch = divmod(int(occurrence[step]), int(self.batches_per_pass[source]))
        perm = self._permutation(epoch, source, pass_index)
        g = self.global_batch_size
        return source, perm[batch * g : (batch + 1) * g].astype(np.int64)

    def rank_batch(self, epoch: int, step: int, rank: int, world_size: int) -> tuple[int, np.ndarray]:
        """Rank ``rank``'s slice ``[rank*B, (rank+1)*B)`` of the global batch."""
        source, rows = self.global_batch(epoch, step)
        return source, rank_slice(rows, rank, world_size)

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a saved (epoch, step) to mean the same batches after a restore."""
        return {
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "weighting": self.weighting,
            "steps_per_epoch": self.steps_per_epoch,
            "sources": [[n, int(s)] for n, s in zip(self.names, self.sizes, strict=True)],
            "probabilities": [round(float(p), 12) for p in self.probabilities],
        }


class SequentialPlan:
    """Evaluation batches: every source in file order, one source per global batch, no shuffling.

    Same interface as :class:`GlobalBatchPlan` (one "epoch" that is always the same), so validation
    reuses the training batch builder and stays source-homogeneous and rank-sliced like training.
    Only full global batches are used; ``max_batches_per_source`` caps the cost of large sources.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        global_batch_size: int,
        *,
        names: Sequence[str] | None = None,
        max_batches_per_source: int | None = None,
    ) -> None:
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if max_batches_per_source is not None and max_batches_per_source < 1:
            raise ValueError(f"max_batches_per_source must be >= 1 or None, got {max_batches_per_source}")
        self.names = list(names) if names is not None else [f"source{i}" for i in range(len(sizes))]
        self.sizes = np.array([int(n) for n in sizes], dtype=np.int64)
        self.global_batch_size = int(global_batch_size)
        self.seed = 0
        self._steps: list[tuple[int, int]] = []
        for source, (name, size) in enumerate(zip(self.names, self.sizes, strict=True)):
            count = int(size) // self.global_batch_size
            if count == 0:
                raise ValueError(
                    f"validation source {name!r} has {size} rows, fewer than one global batch of "
                    f"{self.global_batch_size}"
                )
            if max_batches_per_source is not None:
                count = min(count, max_batches_per_source)
            self._steps.extend((source, j) for j in range(count))
        self.steps_per_epoch = len(self._steps)

    def global_batch(self, epoch: int, step: int) -> tuple[int, np.ndarray]:
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside [0, {self.steps_per_epoch})")
        source, j = self._steps[step]
        g = self.global_batch_size
        return source, np.arange(j * g, (j + 1) * g, dtype=np.int64)

    def rank_batch(self, epoch: int, step: int, rank: int, world_size: int) -> tuple[int, np.ndarray]:
        source, rows = self.global_batch(epoch, step)
        return source, rank_slice(rows, rank, world_size)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "sequential": True,
            "global_batch_size": self.global_batch_size,
            "sources": [[n, int(s)] for n, s in zip(self.names, self.sizes, strict=True)],
        }
