"""The batch stream: tokenised batches built inside DataLoader workers, and a resumable loader.

Workers. :class:`PlanBatchDataset` is an ``IterableDataset`` whose items are whole batches: worker ``w``
of ``W`` builds steps ``start + w, start + w + W, ...``. PyTorch's DataLoader hands out work to iterable
workers round-robin (worker 0, 1, ..., W-1, 0, ...) and returns results in that order, so the main
process receives steps ``start, start + 1, ...`` in order; when the epoch's step count is not a multiple
of ``W`` the workers that run out first simply stop, which does not disturb the order of the others
(tests/test_data_stream.py checks the sequence against ``num_workers=0``). Tokenisation therefore runs
in the workers and the training process only receives tensors.

Position. :class:`PlanDataLoader` tracks ``(epoch, step)`` of the next batch it will *deliver* (counted
in the main process from each delivered batch's own ``epoch``/``step``, so worker prefetching does not
move it). Each ``iter()`` continues from that position to the end of its epoch; after the last batch of
an epoch the position becomes ``(epoch + 1, 0)``. ``state_dict``/``load_state_dict`` carry it, which is
Lightning 2.x's protocol for resumable loaders: the fit loop stores the loader state in checkpoints and
restores it before it calls ``iter()`` on resume. ``len()`` stays the full epoch length, because on a
mid-epoch resume Lightning counts the restored ``batch_idx`` towards the epoch and expects only the
remaining batches.

Use ``steps_per_epoch`` rather than Lightning's ``limit_train_batches``: a Lightning epoch cut short by
a limit makes the next ``iter()`` continue the same plan epoch (no data is skipped, but plan epochs and
Lightning epochs then drift apart).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lit_nomic.data.collate import PairCollator
from lit_nomic.data.mixture import SourceSpec
from lit_nomic.data.records import PairSource, choose
from lit_nomic.data.sampler import GlobalBatchPlan, SequentialPlan, row_rng

__all__ = ["PlanBatchDataset", "PlanDataLoader"]

log = logging.getLogger(__name__)


class PlanBatchDataset(IterableDataset):
    """This rank's batches of one plan epoch, from ``start`` on; ``batch(epoch, step)`` is pure."""

    def __init__(
        self,
        sources: Sequence[PairSource],
        specs: Sequence[SourceSpec],
        plan: GlobalBatchPlan | SequentialPlan,
        collator: PairCollator,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(sources) != len(specs) or len(sources) != len(plan.sizes):
            raise ValueError(f"{len(sources)} sources, {len(specs)} specs, {len(plan.sizes)} plan entries")
        if plan.global_batch_size % world_size:
            raise ValueError(
                f"global batch {plan.global_batch_size} not divisible by world size {world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} invalid for world size {world_size}")
        self.sources = list(sources)
        self.specs = list(specs)
        self.plan = plan
        self.collator = collator
        self.rank = rank
        self.world_size = world_size
        self.start: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return self.plan.steps_per_epoch

    def batch(self, epoch: int, step: int) -> dict[str, Any]:
        source, rows = self.plan.rank_batch(epoch, step, self.rank, self.world_size)
        spec = self.specs[source]
        reader = self.sources[source]
        seed = self.plan.seed
        pairs = [
            choose(
                reader.record(int(row)),
                spec.num_negatives,
                lambda row=int(row): row_rng(seed, epoch, source, row),
                spec.negatives,
            )
            for row in rows
        ]
        out = self.collator(pairs, spec, source)
        out["epoch"] = epoch
        out["step"] = step
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, first = self.start
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(first + worker, len(self), workers):
            yield self.batch(epoch, step)


class _DeliveryTracker(Iterator[dict[str, Any]]):
    """Wraps the DataLoader iterator and moves the loader's position as batches are handed out."""

    def __init__(self, inner: Iterator[dict[str, Any]], loader: PlanDataLoader) -> None:
        self._inner = inner
        self._loader = loader

    def __iter__(self) -> _DeliveryTracker:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._inner)
        self._loader._delivered(int(batch["epoch"]), int(batch["step"]))
        return batch

    def __len__(self) -> int:
        return len(self._loader)


class PlanDataLoader(DataLoader):
    """A DataLoader over :class:`PlanBatchDataset` with an exact, checkpointable position."""

    def __init__(
        self,
        dataset: PlanBatchDataset,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        position: tuple[int, int] = (0, 0),
        multiprocessing_context: Any = None,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            persistent_workers=False,  # workers must be re-forked to see the position of each new iter()
            multiprocessing_context=multiprocessing_context,
        )
        self._plan_dataset = dataset
        self._position = self._normalise(*position)

    def _normalise(self, epoch: int, step: int) -> tuple[int, int]:
        steps = self._plan_dataset.plan.steps_per_epoch
        if epoch < 0 or step < 0:
            raise ValueError(f"invalid position epoch={epoch} step={step}")
        epoch, step = epoch + step // steps, step % steps
        return epoch, step

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, step) of the next batch this loader will deliver."""
        return self._position

    def _delivered(self, epoch: int, step: int) -> None:
        self._position = self._normalise(epoch, step + 1)

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        self._plan_dataset.start = self._position  # read by workers, which are forked by the next line
        return _DeliveryTracker(super().__iter__(), self)

    def state_dict(self) -> dict[str, Any]:
        epoch, step = self._position
        return {"epoch": epoch, "step": step, "plan": self._plan_dataset.plan.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("plan")
        current = self._plan_dataset.plan.fingerprint()
        if saved is not None and saved != current:
            log.warning(
                "resuming with a different data plan (saved %s, now %s): the position (epoch %s, step %s) is "
                "kept but the batches will differ from the interrupted run",
                saved,
                current,
                state["epoch"],
                state["step"],
            )
        self._position = self._normalise(int(state["epoch"]), int(state["step"]))
