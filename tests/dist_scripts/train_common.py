"""Shared pieces of the training test scripts: a toy pair set, a tiny MoE module, a loss recorder.

Kept importable without side effects, because Lightning's DDP launcher re-runs the calling script
in every child process and the test files import it too.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lit_nomic.data.datamodule import ContrastiveDataModule
from lit_nomic.data.mixture import SourceSpec
from lit_nomic.model.build import ModelSpec
from lit_nomic.training.module import ContrastiveModule, LossConfig
from lit_nomic.training.optim import OptimConfig

TOKENIZER = "all-minilm-l6-v2"  # packaged BERT tokenizer (offline); tiny presets then need vocab 30522

_TOPICS = [
    ["protein", "enzyme", "amino", "fold"],
    ["virus", "infection", "vaccine", "immune"],
    ["planet", "orbit", "star", "telescope"],
    ["ocean", "coral", "reef", "fish"],
    ["brain", "neuron", "memory", "sleep"],
    ["heart", "blood", "artery", "pressure"],
    ["forest", "tree", "soil", "rain"],
    ["battery", "lithium", "charge", "energy"],
    ["market", "price", "trade", "bank"],
    ["music", "piano", "song", "rhythm"],
    ["river", "flood", "bridge", "water"],
    ["cancer", "tumor", "cell", "therapy"],
    ["robot", "sensor", "motor", "control"],
    ["wheat", "farm", "harvest", "crop"],
    ["volcano", "lava", "ash", "rock"],
    ["language", "grammar", "word", "speech"],
]


def write_toy_pairs(path: Path, count: int = 96, seed: int = 0) -> Path:
    """Query/document pairs that share topic words: learnable in a few dozen steps by a tiny encoder."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            topic = _TOPICS[i % len(_TOPICS)]
            a, b, c = rng.sample(topic, 3)
            query = f"what about {a} and {b}"
            document = f"a study of {a} {b} {c} number {i}"
            handle.write(json.dumps({"query": query, "document": document}) + "\n")
    return path


def write_toy_beir(folder: Path, pairs: Path, docs: int = 40, queries: int = 16) -> Path:
    """A BEIR folder from the first toy pairs: query ``q{i}`` is judged relevant to document ``d{i}``."""
    rows = [json.loads(line) for line in pairs.read_text().splitlines()][:docs]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for i, row in enumerate(rows):
            handle.write(json.dumps({"_id": f"d{i}", "title": "", "text": row["document"]}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as handle:
        for i, row in enumerate(rows[:queries]):
            handle.write(json.dumps({"_id": f"q{i}", "text": row["query"]}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(queries)]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def tiny_moe_spec(dropout: float = 0.0, jitter: float = 0.0, **overrides: Any) -> ModelSpec:
    """tiny-moe (4 layers, MoE in blocks 1 and 3, 4 experts top-2) with loss-free balancing switched on."""
    values: dict[str, Any] = {
        "vocab_size": 30522,
        "loss_free_balancing": True,
        "loss_free_update_rate": 0.01,
        "hidden_dropout": dropout,
        "attention_dropout": dropout,
        "router_jitter": jitter,
        "aux_loss_coef": 0.01,
        "z_loss_coef": 0.001,
        "matryoshka_dims": [],
    }
    values.update(overrides)
    return ModelSpec(preset="tiny-moe", tokenizer=TOKENIZER, overrides=values)


def make_module(
    spec: ModelSpec, lr: float = 1e-3, total_steps: int | None = None, **loss: Any
) -> ContrastiveModule:
    return ContrastiveModule(
        model=spec,
        loss=LossConfig(temperature=0.05, **loss),
        optim=OptimConfig(lr=lr, warmup_steps=2, schedule="cosine", total_steps=total_steps),
    )


def make_datamodule(data: Path, batch_size: int, steps_per_epoch: int | None = None) -> ContrastiveDataModule:
    source = SourceSpec(
        name="toy",
        path=str(data),
        query_prefix="",
        document_prefix="",
        max_query_length=32,
        max_document_length=32,
    )
    return ContrastiveDataModule(
        sources=[source], tokenizer=TOKENIZER, batch_size=batch_size, steps_per_epoch=steps_per_epoch
    )


class LossRecorder(L.Callback):
    """Append every optimiser step's loss to a JSONL file (rank 0), opened and closed per line so
    that a process killed with ``os._exit`` leaves every line it reported.

    Under data parallelism the per-rank contrastive losses are averaged over ranks first: the mean of
    the per-rank InfoNCE values is the loss of the global batch.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any
    ) -> None:
        values = torch.stack([outputs["loss"].detach().float(), outputs["infonce"].float()]).cpu().double()
        if trainer.world_size > 1:
            torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
            values /= trainer.world_size
        if trainer.global_rank != 0:
            return
        record = {"step": trainer.global_step, "loss": values[0].item(), "infonce": values[1].item()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def selection_biases(module: ContrastiveModule) -> dict[str, list[float]]:
    return {
        name: buf.detach().cpu().tolist()
        for name, buf in module.embedder.encoder.named_buffers()
        if name.endswith("selection_bias")
    }


def quiet_trainer_kwargs(root: Path) -> dict[str, Any]:
    return dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
    )


def prepare_process() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)
