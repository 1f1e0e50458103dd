"""ContrastiveDataModule under a real lightning.Trainer: exact mid-epoch resume, state round trips."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lit_nomic.data.datamodule import ContrastiveDataModule
from lit_nomic.data.mixture import SourceSpec
from lit_nomic.data.records import stable_text_hash


class Recorder(L.LightningModule):
    """A bag-of-token-ids linear model that records every batch it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(30522, 8, mode="mean")
        self.head = nn.Linear(16, 1)
        self.seen: list[tuple[Any, ...]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        assert batch["step"] == batch_idx  # Lightning's batch_idx and the plan step agree, also after resume
        self.seen.append(
            (
                self.current_epoch,
                batch["epoch"],
                batch["step"],
                batch["source"],
                tuple(batch["doc_ids"].tolist()),
                tuple(batch["query_input_ids"].flatten().tolist()),
            )
        )
        q = self.bag(batch["query_input_ids"])
        d = self.bag(batch["doc_input_ids"])
        return self.head(torch.cat([q, d], dim=1)).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def write_source(path: Path, name: str, count: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(json.dumps({"query": f"{name} q {i}", "document": f"{name} doc {i % 11}"}) + "\n")


@pytest.fixture(scope="module")
def mixture(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("mixture")
    write_source(root / "a.jsonl", "alpha", 26)
    write_source(root / "b.jsonl", "beta", 15)
    path = root / "mix.yaml"
    path.write_text(
        "sources:\n"
        f"  - {{name: alpha, path: {root / 'a.jsonl'}, max_document_length: 12}}\n"
        f"  - {{name: beta, path: {root / 'b.jsonl'}, query_prefix: 'query: '}}\n"
    )
    return str(path)


def make_dm(mixture: str, minilm_dir: Path, num_workers: int = 0) -> ContrastiveDataModule:
    return ContrastiveDataModule(
        mixture, tokenizer=str(minilm_dir), batch_size=4, num_workers=num_workers, seed=4
    )


def fit(
    dm: ContrastiveDataModule,
    root: Path,
    max_steps: int,
    ckpt_every: int | None = None,
    ckpt: str | None = None,
):
    model = Recorder()
    callbacks = []
    if ckpt_every:
        callbacks.append(
            ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=ckpt_every, save_top_k=-1)
        )
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(ckpt_every),
        callbacks=callbacks,
        default_root_dir=root,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    assert not [w for w in caught if "not resumable" in str(w.message)]
    return model, trainer


TOTAL_STEPS = 20  # 9 steps per epoch (6 + 3 full batches of 4): crosses two epoch boundaries


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, mixture: str, minilm_dir: Path
) -> list[tuple[Any, ...]]:
    """The batches of one uninterrupted run."""
    model, _ = fit(make_dm(mixture, minilm_dir), tmp_path_factory.mktemp("reference"), TOTAL_STEPS)
    return model.seen


def test_uninterrupted_run_walks_the_plan_epoch_by_epoch(reference: list[tuple[Any, ...]]) -> None:
    assert [(s[1], s[2]) for s in reference] == [(i // 9, i % 9) for i in range(TOTAL_STEPS)]
    assert all(s[0] == s[1] for s in reference)  # Lightning epoch == plan epoch
    assert {s[3] for s in reference} == {"alpha", "beta"}


@pytest.mark.parametrize(
    ("stop_at", "num_workers"),
    [(5, 0), (9, 0), (13, 2)],  # mid-epoch 0, exactly at the end of epoch 0, mid-epoch 1 with workers
)
def test_resume_sees_exactly_the_uninterrupted_batches(
    tmp_path: Path,
    mixture: str,
    minilm_dir: Path,
    reference: list[tuple[Any, ...]],
    stop_at: int,
    num_workers: int,
) -> None:
    first, _ = fit(make_dm(mixture, minilm_dir, num_workers), tmp_path, stop_at, ckpt_every=stop_at)
    (ckpt,) = (tmp_path / "ckpt").glob("*.ckpt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    position = saved["ContrastiveDataModule"]
    assert position["epoch"] * 9 + position["step"] == stop_at
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["step"] == position["step"]
    resumed, _ = fit(make_dm(mixture, minilm_dir, num_workers), tmp_path, TOTAL_STEPS, ckpt=str(ckpt))
    assert first.seen + resumed.seen == reference


def test_state_round_trip_without_a_trainer(mixture: str, minilm_dir: Path) -> None:
    dm = make_dm(mixture, minilm_dir)
    assert dm.state_dict() == {"epoch": 0, "step": 0}
    dm.setup("fit")
    loader = dm.train_dataloader()
    iterator = iter(loader)
    batches = [next(iterator) for _ in range(4)]
    state = dm.state_dict()
    assert (state["epoch"], state["step"]) == (0, 4) and state["plan"]["global_batch_size"] == 4
    clone = make_dm(mixture, minilm_dir)
    clone.load_state_dict(state)  # before setup, as Lightning does on restore
    clone.setup("fit")
    nxt = next(iter(clone.train_dataloader()))
    assert (nxt["epoch"], nxt["step"]) == (0, 4)
    assert torch.equal(nxt["doc_ids"], next(iterator)["doc_ids"])
    assert [b["step"] for b in batches] == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="needs 'epoch' and 'step'"):
        clone.load_state_dict({"step": 1})


def test_world_size_builds_each_rank_slice(mixture: str, minilm_dir: Path) -> None:
    whole = make_dm(mixture, minilm_dir)
    whole.batch_size = 4
    whole.build(rank=0, world_size=1)
    halves = []
    for rank in range(2):
        dm = make_dm(mixture, minilm_dir)
        dm.batch_size = 2
        halves.append(dm.build(rank=rank, world_size=2))
    assert whole.plan is not None and halves[0].plan.fingerprint() == whole.plan.fingerprint()
    for step in range(3):
        full = whole.dataset.batch(0, step)
        parts = [h.batch(0, step) for h in halves]
        assert torch.cat([p["doc_ids"] for p in parts]).tolist() == full["doc_ids"].tolist()


def test_constructor_validates(minilm_dir: Path) -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ContrastiveDataModule([SourceSpec("a", "x")], tokenizer=str(minilm_dir), batch_size=0)


def test_jsonargparse_reads_the_signature(tmp_path: Path, minilm_dir: Path) -> None:
    """The CLI builds the datamodule from YAML: inline source entries become SourceSpec dataclasses."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ContrastiveDataModule, "data")
    config = parser.parse_string(
        f"data:\n  tokenizer: {minilm_dir}\n  batch_size: 8\n  weighting: explicit\n  sources:\n"
        "    - {name: scifact, path: beir/scifact, format: beir, weight: 1.0}\n"
        "    - {name: med, path: m.jsonl, query_column: question, num_negatives: 1, weight: 3}\n"
    )
    dm = parser.instantiate_classes(config).data
    assert isinstance(dm, ContrastiveDataModule)
    assert dm.specs[1] == SourceSpec("med", "m.jsonl", query_column="question", num_negatives=1, weight=3)
    assert dm.weights == [1.0, 3.0] and dm.batch_size == 8


class ValRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.val_seen: list[tuple[str, int]] = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.val_seen.append((batch["source"], batch["step"]))
        return self.head(
            torch.cat([self.bag(batch["query_input_ids"]), self.bag(batch["doc_input_ids"])], 1)
        ).sum()


@pytest.mark.parametrize("with_val", [False, True])
def test_validation_is_optional_and_sequential(
    tmp_path: Path, mixture: str, minilm_dir: Path, with_val: bool
) -> None:
    val = [SourceSpec("held", mixture.replace("mix.yaml", "b.jsonl"))] if with_val else None
    dm = ContrastiveDataModule(
        mixture, tokenizer=str(minilm_dir), batch_size=4, steps_per_epoch=3, val_sources=val, val_batch_size=5
    )
    model = ValRecorder()
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    # 15 held-out rows in batches of 5: three sequential batches after the 3-step epoch
    assert model.val_seen == ([("held", 0), ("held", 1), ("held", 2)] if with_val else [])
    assert len(model.seen) == 3


def test_beir_test_split_as_validation(scifact_dir: Path, minilm_dir: Path) -> None:
    spec = SourceSpec("scifact", str(scifact_dir), format="beir", split="test", max_document_length=32)
    dm = ContrastiveDataModule(
        [SourceSpec("scifact-train", str(scifact_dir), format="beir")],
        tokenizer=str(minilm_dir),
        batch_size=16,
        val_sources=[spec],
        val_batches_per_source=2,
    )
    halves = [dm.build_val(rank=r, world_size=2) for r in range(2)]
    assert halves[0].plan.steps_per_epoch == 2  # capped (339 test pairs hold 10 full global batches of 32)
    first = [h.batch(0, 0) for h in halves]
    assert all(b["doc_input_ids"].shape[0] == 16 for b in first)
    source = halves[0].sources[0]
    assert len(source) == 339
    expected = [stable_text_hash(source.record(i).queries[0]) for i in range(32)]
    assert (
        first[0]["query_ids"].tolist() + first[1]["query_ids"].tolist() == expected
    )  # file order, rank slices
