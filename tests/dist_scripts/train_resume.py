"""Kill a CPU training run right after a checkpoint, resume it, and record every step's loss.

Two phases (see ``tests/test_training_resume.py``, which runs the first as a separate process and
the second in its own process through :func:`main`):

``--phase killed``  trains a tiny MoE (dropout, router jitter and loss-free balancing all on, so that
    RNG state and router biases matter) for up to ``--steps`` steps with
    ``ModelCheckpoint(every_n_train_steps=--every)`` and dies with ``os._exit(1)`` right after the
    checkpoint of step ``--kill-at`` is written: no clean shutdown, no teardown.
``--phase verify``  runs the uninterrupted ``--steps`` run (``full.jsonl``), then resumes from the
    step-``--epoch-ckpt`` checkpoint (``resume_epoch.jsonl``: an epoch boundary with
    ``steps_per_epoch=--epoch``) and from ``ckpt_path="last"`` (``resume_last.jsonl``: mid-epoch) to
    ``--steps``; the final router biases of each run go to ``biases.json``.

Prints ``KILLED step=<k>`` / ``VERIFIED runs=3`` as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import train_common as common
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint


class KillAfterCheckpoint(Checkpoint):
    """Dies right after ModelCheckpoint wrote step ``kill_at``.

    A ``Checkpoint`` subclass because Lightning runs checkpoint callbacks after all others, in list
    order: placed after the ModelCheckpoint, this runs once the checkpoint file exists.
    """

    def __init__(self, kill_at: int, dirpath: Path) -> None:
        self.kill_at = kill_at
        self.dirpath = Path(dirpath)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.kill_at:
            written = sorted(p.name for p in self.dirpath.glob(f"*step={self.kill_at}.ckpt"))
            if not written or not (self.dirpath / "last.ckpt").is_file():
                print(f"FAIL no checkpoint of step {self.kill_at} in {self.dirpath}", flush=True)
                os._exit(2)
            print(f"KILLED step={self.kill_at}", flush=True)
            os._exit(1)


def run(
    args: argparse.Namespace, log_name: str, ckpt_dir: Path, ckpt_path: str | None, callbacks: list
) -> Any:
    L.seed_everything(0, verbose=False)
    module = common.make_module(common.tiny_moe_spec(dropout=0.1, jitter=0.05))
    datamodule = common.make_datamodule(args.data, batch_size=8, steps_per_epoch=args.epoch)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, every_n_train_steps=args.every, save_top_k=-1, save_last=True
    )
    trainer = L.Trainer(
        max_steps=args.steps,
        callbacks=[common.LossRecorder(args.out / log_name), checkpoint, *callbacks],
        **common.quiet_trainer_kwargs(args.out),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=("killed", "verify"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--kill-at", type=int, default=6)
    parser.add_argument("--epoch", type=int, default=4, help="steps_per_epoch of the data plan")
    args = parser.parse_args(argv)
    common.prepare_process()
    killed_dir = args.out / "killed_ckpt"
    if args.phase == "killed":
        run(args, "killed.jsonl", killed_dir, None, [KillAfterCheckpoint(args.kill_at, killed_dir)])
        print("FAIL the run was not killed", flush=True)
        return 3
    biases: dict[str, Any] = {}
    biases["full"] = common.selection_biases(run(args, "full.jsonl", args.out / "full_ckpt", None, []))
    epoch_ckpt = next(killed_dir.glob(f"*step={args.epoch}.ckpt"))
    resumed = run(args, "resume_epoch.jsonl", args.out / "epoch_ckpt", str(epoch_ckpt), [])
    biases["resume_epoch"] = common.selection_biases(resumed)
    # ckpt_path="last" looks in the ModelCheckpoint's dirpath: the killed run's folder.
    biases["resume_last"] = common.selection_biases(run(args, "resume_last.jsonl", killed_dir, "last", []))
    (args.out / "biases.json").write_text(json.dumps(biases, indent=1))
    print("VERIFIED runs=3", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
