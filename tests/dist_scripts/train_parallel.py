"""Two gloo processes (DDP, then FSDP2) must train like one process on the same global batch.

Run by ``tests/test_training_distributed.py`` as ``python train_parallel.py --out DIR --data PAIRS``.
Lightning's launcher re-runs this script for rank 1 (``LOCAL_RANK=1``), so everything below is
guarded by ``__main__`` and the single-process reference runs only in the launching process.

1. reference: one process, batch ``2B``, ``steps + 2`` steps -> ``reference.jsonl``
2. ``strategy="ddp"``, 2 processes, batch ``B`` each, ``steps`` steps -> ``ddp.jsonl``
3. ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)`` (FSDP2 via
   ``configure_model``), same -> ``fsdp.jsonl``, a sharded checkpoint, and an ``ExportModel`` folder
4. the export gives the trained model's embeddings (``EXPORT max_abs_diff=``), and the
   ``RetrievalEval`` probe run on rank 0 (unsharded copy) equals a direct evaluation (``EVAL``)
5. a second FSDP2 fit resumes from the sharded checkpoint to ``steps + 2`` -> ``fsdp_resume.jsonl``
6. ``export_checkpoint`` of the sharded folder gives the same embeddings (``EXPORT_CKPT max_abs_diff=``)

The MoE aux/z coefficients are 0 here: those losses are computed per rank on local tokens and are
not meant to equal the global-batch value, while InfoNCE (gathered across ranks) and the loss-free
router biases (loads all-reduced) are. The temperature is learned (a replicated parameter under
FSDP2) and gradients are clipped, so both code paths are exercised. Rank 0 prints ``OK`` last.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
import train_common as common
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_nomic.evaluation.beir import load_beir
from lit_nomic.evaluation.retrieval import evaluate_retrieval
from lit_nomic.model.embedder import Embedder
from lit_nomic.training.callbacks import ExportModel, RetrievalEval, probe_subset
from lit_nomic.training.export import export_checkpoint

PER_RANK_BATCH = 4
TEXTS = ["what about protein and enzyme", "a study of ocean reef fish", "volcano", "music and rhythm"]


def build(args: argparse.Namespace, batch_size: int) -> tuple[L.LightningModule, L.LightningDataModule]:
    L.seed_everything(0, verbose=False)
    spec = common.tiny_moe_spec(aux_loss_coef=0.0, z_loss_coef=0.0)
    module = common.make_module(spec, total_steps=args.steps + 2, learn_temperature=True)
    return module, common.make_datamodule(args.data, batch_size=batch_size)


def fit(args: argparse.Namespace, name: str, batch_size: int, steps: int, devices: int, strategy: object,
        callbacks: list, ckpt_path: str | None = None) -> L.LightningModule:  # fmt: skip
    module, datamodule = build(args, batch_size)
    trainer = L.Trainer(
        devices=devices,
        strategy=strategy,  # type: ignore[arg-type]
        max_steps=steps,
        gradient_clip_val=1.0,
        callbacks=[common.LossRecorder(args.out / f"{name}.jsonl"), *callbacks],
        **common.quiet_trainer_kwargs(args.out / name),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module


@torch.no_grad()
def embed(embedder: Embedder) -> torch.Tensor:
    """Embeddings through ``embedder.forward`` (the FSDP2 root: unshards its parameters); every rank calls it."""
    ids, mask = embedder.collate(embedder.tokenize(TEXTS))
    was_training = embedder.training
    embedder.eval()
    out = embedder(ids, mask).embeddings.float().cpu()
    embedder.train(was_training)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    common.prepare_process()
    launcher = "LOCAL_RANK" not in os.environ  # rank 0 before Lightning spawns rank 1
    beir = args.out / "toybeir"
    if launcher:
        common.write_toy_beir(beir, args.data)  # before rank 1 exists: no two writers
        fit(args, "reference", 2 * PER_RANK_BATCH, args.steps + 2, 1, "auto", [])
        print("REFERENCE done", flush=True)

    fit(args, "ddp", PER_RANK_BATCH, args.steps, 2, "ddp", [])
    fsdp = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    ckpt_dir = args.out / "fsdp_ckpt"
    export_dir = args.out / "export"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=args.steps, save_top_k=-1)
    probe = RetrievalEval(
        str(beir), every_n_steps=2, max_queries=8, max_corpus=20, output_dir=str(args.out / "eval")
    )
    callbacks = [checkpoint, probe, ExportModel(str(export_dir))]
    trained = fit(args, "fsdp", PER_RANK_BATCH, args.steps, 2, fsdp, callbacks)
    live = embed(trained.embedder)  # collective under FSDP2
    rank = dist.get_rank()
    sharded = sorted(ckpt_dir.glob(f"*step={args.steps}.ckpt"))
    if rank == 0:
        print(f"SHARDED_CKPT dirs={sum(p.is_dir() for p in sharded)}", flush=True)
        plain = Embedder.from_pretrained(export_dir)
        exported = embed(plain)
        print(f"EXPORT max_abs_diff={(exported - live).abs().max().item():.3e}", flush=True)
        # Rank 0 evaluated an unsharded copy of the FSDP2 model; the others waited.
        subset = probe_subset(load_beir(beir, "test"), 8, 20)
        direct = evaluate_retrieval(plain, subset).metrics["ndcg@10"]
        logged = probe.last_metrics["eval/toybeir/ndcg@10"]
        print(f"EVAL ndcg@10={logged:.6f} abs_diff={abs(logged - direct):.3e}", flush=True)
    else:
        print(f"EVAL rank={rank} metrics={len(probe.last_metrics)}", flush=True)

    fsdp_resume = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    fit(args, "fsdp_resume", PER_RANK_BATCH, args.steps + 2, 2, fsdp_resume, [], ckpt_path=str(sharded[0]))
    if rank == 0:
        folder = export_checkpoint(str(sharded[0]), str(args.out / "export_from_ckpt"))
        from_ckpt = embed(Embedder.from_pretrained(folder))
        print(f"EXPORT_CKPT max_abs_diff={(from_ckpt - live).abs().max().item():.3e}", flush=True)
        print("OK", flush=True)
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
