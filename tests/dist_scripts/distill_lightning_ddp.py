"""Lightning on 2 gloo processes (DDP, or FSDP2) must train a distilled student like one process.

Run by ``tests/test_distill.py`` as ``python distill_lightning_ddp.py --out DIR --data PAIRS
[--strategy ddp|fsdp2]``. Lightning's launcher re-runs this script for rank 1 (``LOCAL_RANK=1``), so
the single-process reference runs only in the launching process.

1. reference: one process, batch ``2B``, ``steps`` steps -> ``reference.jsonl``
2. ``strategy="ddp"``, or ``ModelParallelStrategy(data_parallel_size=2)`` (FSDP2: student *and*
   teacher sharded by ``configure_model``), 2 processes, batch ``B`` each, ``steps`` steps ->
   ``<strategy>.jsonl``

The student is a tiny dense encoder, the teacher a wider tiny MoE (so the learned projection, a
synchronised parameter, is trained too); loss = InfoNCE + embedding matching + in-batch score KL.
Every logged loss is the mean over ranks (``train_common.LossRecorder``), i.e. the global-batch loss.

Under FSDP2 the distributed run also caches the teacher's embeddings (``teacher_cache``, a folder
shared by both ranks): with ``steps`` over two epochs of a small pair file the second epoch is served
from the cache, and its losses must still equal the uncached reference. Each rank then prints
``TEACHER rank=<r> sharded=<bool> forwards=<n> cached=<entries>``.
Rank 0 prints ``OK steps=<n> max_loss_diff=<x>`` last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import lightning as L
import torch.distributed as dist
import train_common as common
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_nomic.model.build import ModelSpec
from lit_nomic.training.distill import DistillConfig
from lit_nomic.training.module import ContrastiveModule, LossConfig
from lit_nomic.training.optim import OptimConfig
from lit_nomic.training.parallel import is_sharded

PER_RANK_BATCH = 4


def fit(
    args: argparse.Namespace,
    name: str,
    batch_size: int,
    devices: int,
    strategy: object,
    cache: Path | None = None,
) -> tuple[ContrastiveModule, list[int]]:
    """The trained module and how many times its teacher ran a forward on this rank."""
    L.seed_everything(0, verbose=False)
    spec = lambda preset, **o: ModelSpec(  # noqa: E731
        preset=preset, tokenizer=common.TOKENIZER, overrides={"vocab_size": 30522, "aux_loss_coef": 0.0, **o}
    )
    module = ContrastiveModule(
        model=spec("tiny-dense"),
        loss=LossConfig(temperature=0.05),
        optim=OptimConfig(lr=1e-3, warmup_steps=1, total_steps=args.steps),
        distill=DistillConfig(
            teacher=spec("tiny-moe", hidden_size=96),
            score_weight=0.5,
            teacher_cache=str(cache) if cache is not None else None,
        ),
    )
    forwards = [0]
    module.distiller.teacher.register_forward_hook(  # type: ignore[union-attr]
        lambda *_: forwards.__setitem__(0, forwards[0] + 1)
    )
    trainer = L.Trainer(
        devices=devices,
        strategy=strategy,  # type: ignore[arg-type]
        max_steps=args.steps,
        gradient_clip_val=1.0,
        callbacks=[common.LossRecorder(args.out / f"{name}.jsonl")],
        **common.quiet_trainer_kwargs(args.out / name),
    )
    trainer.fit(module, datamodule=common.make_datamodule(args.data, batch_size=batch_size))
    return module, forwards


def losses(path: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--strategy", choices=["ddp", "fsdp2"], default="ddp")
    args = parser.parse_args()
    common.prepare_process()
    if "LOCAL_RANK" not in os.environ:  # the launching process, before Lightning starts rank 1
        fit(args, "reference", 2 * PER_RANK_BATCH, 1, "auto")
    if args.strategy == "ddp":
        fit(args, "ddp", PER_RANK_BATCH, 2, "ddp")
    else:
        fsdp = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        module, forwards = fit(args, "fsdp2", PER_RANK_BATCH, 2, fsdp, cache=args.out / "teacher_cache")
        distiller = module.distiller
        assert distiller is not None and distiller.cache is not None
        print(
            f"TEACHER rank={dist.get_rank()} sharded={is_sharded(distiller.teacher)} "
            f"forwards={forwards[0]} cached={len(distiller.cache)}",
            flush=True,
        )
    if dist.get_rank() == 0:
        ref, run = losses(args.out / "reference.jsonl"), losses(args.out / f"{args.strategy}.jsonl")
        if sorted(ref) != sorted(run) or len(run) != args.steps:
            print(f"FAIL steps differ: {sorted(ref)} vs {sorted(run)}", flush=True)
            return 1
        worst = max(abs(ref[s] - run[s]) for s in ref)
        print(f"OK steps={len(run)} max_loss_diff={worst:.3e}", flush=True)
    dist.barrier()
    return 0


if __name__ == "__main__":
    try:
        code = main()
    finally:
        # gloo processes that exit without this intermittently abort (exit code 134).
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    sys.exit(code)
