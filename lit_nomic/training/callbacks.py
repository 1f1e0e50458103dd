"""Callbacks: export a ``from_pretrained`` folder, retrieval evaluation during/after training, and a
progress bar that counts steps when training is bounded by ``max_steps``.

Output folders left unset (None) are derived from the trainer's ``default_root_dir`` (the run folder):
``<root>/model`` for the export and ``<root>/eval`` for fit-end results.

Both need the *unsharded* model. Under FSDP2 the full state dict is gathered collectively on every
rank, then rank 0 alone loads it into a plain copy and works on that while the others wait at a
barrier; single-process and DDP runs use the live module directly (on rank 0).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.utilities import rank_zero_info

from lit_nomic.evaluation import (
    RetrievalDataset,
    TaskSpec,
    evaluate,
    format_table,
    load_beir,
    probe_subset,
    resolve_data,
)
from lit_nomic.fileio import atomic_write_text
from lit_nomic.model.embedder import Embedder
from lit_nomic.model.encoder import Encoder
from lit_nomic.training.parallel import full_state_dict, is_sharded

log = logging.getLogger(__name__)

# Logged to the experiment logger as eval/<dataset>/<metric>.
LOGGED_METRICS = ("ndcg@10", "recall@100")


def unsharded_embedder(pl_module: Any) -> Embedder | None:
    """A plain (unsharded) embedder on rank 0, None elsewhere. Collective under FSDP2: call on every rank."""
    embedder: Embedder = pl_module.embedder
    if not is_sharded(embedder):
        return embedder if pl_module.global_rank == 0 else None
    state = full_state_dict(embedder)
    if pl_module.global_rank != 0:
        return None
    encoder = Encoder(embedder.encoder.config)
    prefix = "encoder."
    encoder.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    plain = Embedder(encoder, embedder.tokenizer, embedder.name, embedder.max_seq_length)
    return plain.to(pl_module.device)


def _barrier(trainer: L.Trainer) -> None:
    if trainer.world_size > 1:
        trainer.strategy.barrier()


def run_subdir(trainer: L.Trainer, dirpath: str | None, name: str) -> Path:
    """``dirpath`` when given, else ``<trainer.default_root_dir>/<name>``."""
    return Path(dirpath) if dirpath is not None else Path(trainer.default_root_dir) / name


class ExportModel(L.Callback):
    """Write a ``from_pretrained`` folder (config.json, model.safetensors, tokenizer) at the end of fit.

    Args:
        dirpath: the folder to write; None = ``<trainer.default_root_dir>/model``.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        embedder = unsharded_embedder(pl_module)
        if embedder is not None:
            target = embedder.save_pretrained(run_subdir(trainer, self.dirpath, "model"))
            rank_zero_info(f"exported model to {target}")
        _barrier(trainer)


class RetrievalEval(L.Callback):
    """nDCG@10 (and the rest) on a BEIR-format set every ``every_n_steps`` steps and/or at fit end.

    Like NanoBEIR, ``max_queries``/``max_corpus`` make a cheap in-training probe (:func:`probe_subset`).
    At fit end the same set (the full one unless limited) is evaluated once more and written to
    ``output_dir``: one result JSON per dataset/split (the evaluation package's schema) and a Markdown
    table. Every evaluation goes through :func:`lit_nomic.evaluation.evaluate`: without limits the
    fit-end one by name, so ``data`` may then be any suite it accepts; probes (the subset, loaded once)
    need a BEIR folder.

    Args:
        data: a named suite (``scifact``) or a dataset folder, as given or under the data root.
        split: the qrels split to score.
        every_n_steps: probe every n optimiser steps (0 = never).
        at_fit_end: evaluate once more when fit ends, and write the results.
        max_queries: keep the first n judged queries.
        max_corpus: keep the relevant documents plus the first others up to this many.
        batch_size: texts per forward pass while encoding.
        output_dir: where fit-end results go; None = ``<trainer.default_root_dir>/eval``.
        save_results: write the fit-end results (False: only log them).
        data_root: the data root (default ``$LIT_NOMIC_DATA`` or ``../shared/data``).
    """

    def __init__(
        self,
        data: str = "beir/scifact",
        split: str = "test",
        every_n_steps: int = 0,
        at_fit_end: bool = True,
        max_queries: int | None = None,
        max_corpus: int | None = None,
        batch_size: int = 64,
        output_dir: str | None = None,
        save_results: bool = True,
        data_root: str | None = None,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data = data
        self.split = split
        self.every_n_steps = every_n_steps
        self.at_fit_end = at_fit_end
        self.max_queries = max_queries
        self.max_corpus = max_corpus
        self.batch_size = batch_size
        self.output_dir = output_dir
        self.save_results = save_results
        self.data_root = data_root
        self._results_dir: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_results: list[dict[str, Any]] = []
        self._spec: TaskSpec | None = None
        self._dataset: RetrievalDataset | None = None
        self._last_probe_step = -1

    @property
    def limited(self) -> bool:
        return self.max_queries is not None or self.max_corpus is not None

    # ------------------------------------------------------------------ data
    def _resolve(self) -> TaskSpec:
        if self._spec is None:
            specs = resolve_data(self.data, self.split, None, self.data_root)
            if len(specs) != 1:
                raise ValueError(f"RetrievalEval(data={self.data!r}) names {len(specs)} datasets; give one")
            self._spec = specs[0]
        return self._spec

    def dataset(self) -> RetrievalDataset:
        """The (probe subset of the) BEIR split, loaded once."""
        if self._dataset is None:
            spec = self._resolve()
            if spec.kind != "beir":
                raise ValueError(
                    f"RetrievalEval(data={self.data!r}) is a {spec.kind} dataset; in-training probes "
                    "(every_n_steps, max_queries, max_corpus) need a BEIR folder"
                )
            full = load_beir(spec.path, spec.split, name=spec.name)
            self._dataset = probe_subset(full, self.max_queries, self.max_corpus)
        return self._dataset

    @property
    def name(self) -> str:
        return self._resolve().name

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._results_dir = run_subdir(trainer, self.output_dir, "eval") if self.save_results else None
        # Fail before the first step, not after hours of training, when the data is missing or malformed.
        if stage == "fit" and trainer.global_rank == 0:
            if self.every_n_steps > 0 or self.limited:
                self.dataset()
            else:
                self._resolve()

    # ------------------------------------------------------------------ hooks
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        # With gradient accumulation several micro-batches end at the same optimiser step: probe once.
        if (
            self.every_n_steps > 0
            and step > 0
            and step % self.every_n_steps == 0
            and step != self._last_probe_step
        ):
            self._last_probe_step = step
            self._run(trainer, pl_module, final=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_fit_end:
            self._run(trainer, pl_module, final=True)

    # ------------------------------------------------------------------ evaluation
    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, final: bool) -> None:
        clock = getattr(pl_module, "throughput_clock", None)
        if clock is not None:
            clock.pause()
        try:
            embedder = unsharded_embedder(pl_module)
            if embedder is not None:
                self._evaluate_rank_zero(trainer, embedder, final)
            _barrier(trainer)
        finally:
            if clock is not None:
                clock.resume()

    def _evaluate_rank_zero(self, trainer: L.Trainer, embedder: Embedder, final: bool) -> None:
        start = time.perf_counter()
        was_training = embedder.training
        try:
            out_dir = self._results_dir
            write = final and out_dir is not None
            if write and not self.limited:
                results = evaluate(
                    embedder,
                    self.data,
                    split=self.split,
                    output_dir=str(out_dir),
                    batch_size=self.batch_size,
                    data_root=self.data_root,
                )
            else:  # a probe: the subset loaded once, the step recorded with the result
                results = evaluate(
                    embedder,
                    self.dataset(),
                    output_dir=str(out_dir) if write else None,
                    batch_size=self.batch_size,
                    data_root=self.data_root,
                    extra={"global_step": trainer.global_step},
                )
        finally:
            embedder.train(was_training)
        self.last_results = results
        metrics: dict[str, float] = {}
        for result in results:
            key = self.name if len(results) == 1 else _result_label(result)
            for metric in LOGGED_METRICS:
                if metric in result["metrics"]:
                    metrics[f"eval/{key}/{metric}"] = float(result["metrics"][metric])
        self.last_metrics = metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if write:
            self._write_table(results, trainer.global_step, out_dir)  # type: ignore[arg-type]
        summary = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        rank_zero_info(
            f"[{self.data} {self.split}] step {trainer.global_step}: {summary} ({time.perf_counter() - start:.1f}s)"
        )

    def _write_table(self, results: list[dict[str, Any]], step: int, out_dir: Path) -> Path:
        title = f"# {self.data} ({self.split}) after {step} training steps\n\n"
        detail = [
            "",
            "| dataset | " + " | ".join(LOGGED_METRICS) + " |",
            "|---|" + "---:|" * len(LOGGED_METRICS),
        ]
        for r in results:
            cells = [f"{100 * r['metrics'][m]:.2f}" if m in r["metrics"] else "–" for m in LOGGED_METRICS]
            detail.append(f"| {_result_label(r)} | " + " | ".join(cells) + " |")
        text = title + format_table(results) + "\n".join(detail) + "\n"
        path = Path(out_dir) / f"{_slug(self.name)}-{_slug(self.split)}.md"
        return atomic_write_text(path, text)


def _result_label(result: dict[str, Any]) -> str:
    language = result.get("language")
    return f"{result['dataset']}-{language}" if language else str(result["dataset"])


def _slug(value: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in value) or "x"


def _train_description(trainer: L.Trainer, current_epoch: int) -> str:
    """``Epoch N`` (``Epoch N/M`` when max_epochs bounds the run); Lightning's own reads "Epoch 0/-2"
    when only ``max_steps`` does (max_epochs = -1). The bar's count then shows the steps."""
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0:
        return f"Epoch {current_epoch}"
    return f"Epoch {current_epoch}/{max_epochs - 1}"


class StepRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar with a description that makes sense for step-bounded runs."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = _train_description(self.trainer, current_epoch)
        if len(self.validation_description) > len(description):
            description = f"{description:{len(self.validation_description)}}"
        return description


def step_progress_bar() -> ProgressBar:
    """The training progress bar of ``lit-nomic fit``: rich when installed, else tqdm (whose description
    has no "/max_epochs")."""
    return StepRichProgressBar() if _RICH_AVAILABLE else TQDMProgressBar()
