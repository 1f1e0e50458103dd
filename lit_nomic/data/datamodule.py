"""``ContrastiveDataModule``: the mixture, the plan and the resumable loader behind one LightningDataModule.

Resume. Lightning checkpoints call ``state_dict()`` on the datamodule *and* on every dataloader that
has ``state_dict``/``load_state_dict`` (the fit loop's ``combined_loader`` entry); on restore it calls
``load_state_dict`` on the datamodule before ``train_dataloader()`` and on the loader before ``iter()``.
Both carry the same position, the ``(epoch, step)`` of the next batch the loader will deliver, so the
resumed run's first batch is the one an uninterrupted run would have trained on next:

* checkpoint in ``on_train_batch_end`` after batch ``k-1`` (``ModelCheckpoint(every_n_train_steps)``):
  position ``(e, k)``; Lightning restores ``batch_idx = k`` and our loader yields steps ``k..N-1``.
  Lightning prefetches no batch here because the loader has a length, so the position is exact.
* checkpoint at the end of an epoch: position ``(e + 1, 0)``, and Lightning starts epoch ``e + 1``.

``tests/test_data_datamodule.py`` runs a real ``lightning.Trainer`` for k steps, resumes to n and
compares every batch with an uninterrupted n-step run.

Distributed. ``setup`` reads rank and world size from the trainer; the plan is computed for the global
batch ``batch_size * world_size`` identically on every rank, and each rank builds only its slice.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from lit_nomic.data.collate import PairCollator
from lit_nomic.data.mixture import SourceSpec, Weighting, explicit_weights, load_mixture, open_source
from lit_nomic.data.records import OnError, PairSource
from lit_nomic.data.sampler import GlobalBatchPlan, SequentialPlan
from lit_nomic.data.stream import PlanBatchDataset, PlanDataLoader

__all__ = ["ContrastiveDataModule"]

log = logging.getLogger(__name__)


class ContrastiveDataModule(L.LightningDataModule):
    """Source-homogeneous contrastive batches from a mixture of pair/triplet sources.

    Args:
        sources: the mixture, as a list of :class:`SourceSpec` or the path of a YAML/JSON mixture file;
            ``per_language`` entries become one source (so one batch language) per language.
        tokenizer: a tokenizer folder (as given, or relative to the data root) or a cached Hub id.
        batch_size: per-rank batch size; the global batch is ``batch_size * world_size``.
        num_workers: DataLoader workers; each builds and tokenises whole batches.
        seed: the plan seed (>= 0); with the mixture and the global batch size it fixes every batch.
        data_root: the data root (default ``$LIT_NOMIC_DATA`` or ``../shared/data``).
        weighting: ``size`` (proportional to rows; one exact pass per epoch), ``uniform``, or
            ``explicit`` (each source's ``weight``).
        steps_per_epoch: fixed epoch length; default: the number of full global batches in all sources.
        on_error: ``raise`` on the first bad line, or ``skip`` bad lines (counted and logged per source).
        cache_dir: where ``.jsonl.gz`` shards are decompressed (default ``$LIT_NOMIC_CACHE`` or ~/.cache).
        pin_memory: pin batch tensors (CUDA training).
        prefetch_factor: batches each worker prepares ahead (DataLoader default when None).
        val_sources: optional held-out sources (list or mixture file), e.g. a BEIR folder with
            ``split: test``; validated in file order, one source per global batch, never shuffled.
        val_batch_size: per-rank validation batch size (default: ``batch_size``).
        val_batches_per_source: cap on validation batches per source (default: all full batches).
    """

    def __init__(
        self,
        sources: list[SourceSpec] | str,
        tokenizer: str,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        data_root: str | None = None,
        weighting: Weighting = "size",
        steps_per_epoch: int | None = None,
        on_error: OnError = "raise",
        cache_dir: str | None = None,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        val_sources: list[SourceSpec] | str | None = None,
        val_batch_size: int | None = None,
        val_batches_per_source: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.specs: list[SourceSpec] = load_mixture(sources, root=data_root)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.data_root = data_root
        self.weighting: Weighting = weighting
        self.steps_per_epoch = steps_per_epoch
        self.on_error: OnError = on_error
        self.cache_dir = cache_dir
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.weights = explicit_weights(self.specs, weighting)
        self.val_specs: list[SourceSpec] = (
            load_mixture(val_sources, root=data_root) if val_sources is not None else []
        )
        self.val_batch_size = val_batch_size or batch_size
        self.val_batches_per_source = val_batches_per_source
        self.val_dataset: PlanBatchDataset | None = None
        self.sources: list[PairSource] | None = None
        self.plan: GlobalBatchPlan | None = None
        self.dataset: PlanBatchDataset | None = None
        self._loader: PlanDataLoader | None = None
        self._position: tuple[int, int] = (0, 0)
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ build
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.dataset is None:
            self.build(*self._rank_and_world())
        if stage in (None, "fit", "validate") and self.val_specs and self.val_dataset is None:
            self.build_val(*self._rank_and_world())

    def build(self, rank: int = 0, world_size: int = 1) -> PlanBatchDataset:
        """Index every source, compute the plan and the collator (also usable without a Trainer)."""
        if self.sources is None:
            self.sources = [open_source(s, self.data_root, self.on_error, self.cache_dir) for s in self.specs]
        self.plan = GlobalBatchPlan(
            [len(s) for s in self.sources],
            self.batch_size * world_size,
            seed=self.seed,
            weighting=self.weighting,
            weights=self.weights,
            steps_per_epoch=self.steps_per_epoch,
            names=[s.name for s in self.specs],
        )
        collator = PairCollator(self.tokenizer, self.data_root)
        self.dataset = PlanBatchDataset(
            self.sources, self.specs, self.plan, collator, rank=rank, world_size=world_size
        )
        if rank == 0:
            for i, (spec, source) in enumerate(zip(self.specs, self.sources, strict=True)):
                log.info(
                    "source %r: %d pairs (%d skipped), p=%.4f, %d global batches per pass",
                    spec.name,
                    len(source),
                    source.skip_report.skipped,
                    self.plan.probabilities[i],
                    self.plan.batches_per_pass[i],
                )
            log.info(
                "plan: global batch %d (%d x %d ranks), %d steps per epoch, weighting=%s",
                self.plan.global_batch_size,
                self.batch_size,
                world_size,
                self.plan.steps_per_epoch,
                self.weighting,
            )
        return self.dataset

    def build_val(self, rank: int = 0, world_size: int = 1) -> PlanBatchDataset:
        """The held-out stream: same batch builder, sequential plan, epoch 0 choices every time."""
        sources = [open_source(s, self.data_root, self.on_error, self.cache_dir) for s in self.val_specs]
        plan = SequentialPlan(
            [len(s) for s in sources],
            self.val_batch_size * world_size,
            names=[s.name for s in self.val_specs],
            max_batches_per_source=self.val_batches_per_source,
        )
        collator = PairCollator(self.tokenizer, self.data_root)
        self.val_dataset = PlanBatchDataset(
            sources, self.val_specs, plan, collator, rank=rank, world_size=world_size
        )
        return self.val_dataset

    def val_dataloader(self) -> DataLoader | list:
        """An empty list (no validation) unless ``val_sources`` were given."""
        if not self.val_specs:
            return []
        if self.val_dataset is None:
            self.build_val(*self._rank_and_world())
        return DataLoader(
            self.val_dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> PlanDataLoader:
        if self.dataset is None:
            self.build(*self._rank_and_world())
        assert self.dataset is not None
        position = self._loader.position if self._loader is not None else self._position
        self._loader = PlanDataLoader(
            self.dataset,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor,
            position=position,
        )
        if self._pending_state is not None:
            self._loader.load_state_dict(self._pending_state)
            self._pending_state = None
        return self._loader

    # ------------------------------------------------------------------ state
    @property
    def position(self) -> tuple[int, int]:
        """(epoch, step) of the next training batch."""
        return self._loader.position if self._loader is not None else self._position

    def state_dict(self) -> dict[str, Any]:
        if self._loader is not None:
            return self._loader.state_dict()
        epoch, step = self._position
        state: dict[str, Any] = {"epoch": epoch, "step": step}
        if self.plan is not None:
            state["plan"] = self.plan.fingerprint()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "epoch" not in state_dict or "step" not in state_dict:
            raise KeyError(f"ContrastiveDataModule state needs 'epoch' and 'step', got {sorted(state_dict)}")
        self._position = (int(state_dict["epoch"]), int(state_dict["step"]))
        if self._loader is not None:
            self._loader.load_state_dict(state_dict)
        else:
            self._pending_state = dict(state_dict)
