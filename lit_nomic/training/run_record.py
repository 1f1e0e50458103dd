"""``TrainRecord``: a small machine-readable record of a training run, beside its checkpoints.

TensorBoard event files are the place for curves, but they are large, binary and awkward to
aggregate; a sweep needs a few numbers per run (steps, wall time, train tokens/s, the loss curve) in
a file it can commit. Each optimiser step appends one JSON line (so a killed run keeps what it did,
and a resumed run's repeated steps replace the earlier lines); at fit end the summary ``train.json``
is written atomically.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L

from lit_nomic.fileio import atomic_write_json

STEPS_FILE = "train_steps.jsonl"
SUMMARY_FILE = "train.json"


class TrainRecord(L.Callback):
    """Write ``<dirpath>/train_steps.jsonl`` per step and ``<dirpath>/train.json`` at fit end (rank 0).

    Args:
        dirpath: the folder; default: the trainer's ``default_root_dir`` (the run folder).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self._fit_started: float | None = None

    def _folder(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.time()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank != 0:
            return
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"step": trainer.global_step, "time": time.time()}
        for key in ("train/loss", "train/infonce", "train/tokens_per_s", "train/samples_per_s"):
            if key in metrics:
                row[key.split("/", 1)[1]] = float(metrics[key])
        folder = self._folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / STEPS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        folder = self._folder(trainer)
        steps = read_steps(folder / STEPS_FILE)
        atomic_write_json(folder / SUMMARY_FILE, summarise(steps, trainer.global_step, trainer.world_size))


def read_steps(path: Path) -> list[dict[str, Any]]:
    """Step rows in step order; a step repeated after a resume keeps its latest row."""
    if not path.exists():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            continue
        by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def summarise(steps: list[dict[str, Any]], global_step: int, world_size: int) -> dict[str, Any]:
    """Steps, losses and the mean training throughput (steps that report one: not the first after a start)."""
    rates = [r["tokens_per_s"] for r in steps if math.isfinite(r.get("tokens_per_s", math.nan))]
    losses = [r.get("loss") for r in steps]
    return {
        "global_step": global_step,
        "world_size": world_size,
        "steps_recorded": len(steps),
        "train_tokens_per_s": sum(rates) / len(rates) if rates else None,
        "final_loss": losses[-1] if losses else None,
        "loss": losses,
        "wall_s": steps[-1]["time"] - steps[0]["time"] if len(steps) > 1 else None,
    }
