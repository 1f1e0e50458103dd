"""The batch stream: worker round-robin order, position tracking, loader-level resume, rank slices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_nomic.data.collate import PairCollator
from lit_nomic.data.jsonl import ColumnExtractor, JsonlPairs
from lit_nomic.data.mixture import SourceSpec
from lit_nomic.data.records import stable_text_hash
from lit_nomic.data.sampler import GlobalBatchPlan
from lit_nomic.data.stream import PlanBatchDataset, PlanDataLoader


def write_source(path: Path, name: str, count: int, negatives: int = 0) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            row = {"query": f"{name} question {i}", "pos": [f"{name} answer {i}", f"{name} alt {i}"]}
            if negatives:
                row["neg"] = [f"{name} wrong {i}.{j}" for j in range(negatives + 1)]
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def collator(minilm_dir: Path) -> PairCollator:
    return PairCollator(str(minilm_dir))


@pytest.fixture()
def setup(tmp_path: Path, collator: PairCollator) -> tuple[list, list[SourceSpec], PairCollator]:
    specs = [
        SourceSpec("alpha", str(tmp_path / "a.jsonl"), max_document_length=16),
        SourceSpec(
            "beta", str(tmp_path / "b.jsonl"), num_negatives=2, query_prefix="q: ", document_prefix="d: "
        ),
    ]
    write_source(tmp_path / "a.jsonl", "alpha", 26)
    write_source(tmp_path / "b.jsonl", "beta", 15, negatives=2)
    sources = [
        JsonlPairs("alpha", specs[0].path),
        JsonlPairs("beta", specs[1].path, ColumnExtractor(num_negatives=2)),
    ]
    return sources, specs, collator


def signature(batch: dict) -> tuple:
    return (
        batch["epoch"],
        batch["step"],
        batch["source"],
        tuple(batch["doc_ids"].tolist()),
        tuple(batch["query_input_ids"].flatten().tolist()),
        tuple(batch["neg_input_ids"].flatten().tolist()) if "neg_input_ids" in batch else (),
    )


def make_loader(setup, num_workers: int = 0, position: tuple[int, int] = (0, 0), **plan_kw) -> PlanDataLoader:
    sources, specs, collator = setup
    plan = GlobalBatchPlan([len(s) for s in sources], 4, seed=9, names=[s.name for s in specs], **plan_kw)
    dataset = PlanBatchDataset(sources, specs, plan, collator)
    return PlanDataLoader(dataset, num_workers=num_workers, position=position)


def test_batches_follow_the_plan_and_the_sources(setup) -> None:
    loader = make_loader(setup)
    plan = loader.dataset.plan
    assert len(loader) == plan.steps_per_epoch == 6 + 3
    sources, specs, _ = setup
    for batch in loader:
        source, rows = plan.global_batch(batch["epoch"], batch["step"])
        assert batch["source"] == specs[source].name and batch["source_index"] == source
        name = specs[source].name
        # each row's query and positive come from the same record; one positive alternative is used
        expected_q = [f"{name} question {int(r)}" for r in rows]
        assert batch["query_ids"].tolist() == [stable_text_hash(q) for q in expected_q]
        docs = batch["doc_ids"].tolist()
        for doc_id, row in zip(docs, rows, strict=True):
            assert doc_id in (
                stable_text_hash(f"{name} answer {int(row)}"),
                stable_text_hash(f"{name} alt {int(row)}"),
            )
        if name == "beta":
            assert batch["neg_input_ids"].shape[0] == 8
        else:
            assert "neg_input_ids" not in batch
    assert loader.position == (1, 0)


def test_two_workers_deliver_steps_in_order(setup) -> None:
    # 9 steps per epoch with 2 workers: worker 0 makes 5, worker 1 makes 4; order must still be 0..8
    single = make_loader(setup, 0)
    reference = [signature(b) for _ in range(2) for b in single]
    parallel = make_loader(setup, 2)
    got = [signature(b) for _ in range(2) for b in parallel]
    assert [(s[0], s[1]) for s in got] == [(e, s) for e in range(2) for s in range(9)]
    assert got == reference
    # resuming mid-epoch with workers: odd remaining count (9 - 4 = 5) still arrives in order
    resumed = make_loader(setup, 2, position=(1, 4))
    assert [signature(b) for b in resumed] == reference[9 + 4 :]


def test_loader_state_resumes_at_the_next_batch(setup) -> None:
    first = make_loader(setup)
    stream = [signature(b) for _ in range(3) for b in first]  # three full epochs
    interrupted = make_loader(setup)
    iterator = iter(interrupted)
    seen = [signature(next(iterator)) for _ in range(5)]
    state = interrupted.state_dict()
    assert (state["epoch"], state["step"]) == (0, 5)
    restored = make_loader(setup)
    restored.load_state_dict(state)
    rest = [signature(b) for _ in range(3) for b in restored]
    assert seen + rest[: len(stream) - 5] == stream


def test_ranks_split_the_global_batch(setup) -> None:
    sources, specs, collator = setup
    plan = GlobalBatchPlan([len(s) for s in sources], 4, seed=9)
    ranks = [PlanBatchDataset(sources, specs, plan, collator, rank=r, world_size=2) for r in range(2)]
    whole = PlanBatchDataset(sources, specs, plan, collator)
    for step in range(plan.steps_per_epoch):
        parts = [r.batch(0, step) for r in ranks]
        full = whole.batch(0, step)
        assert parts[0]["source"] == parts[1]["source"] == full["source"]
        assert torch.cat([p["doc_ids"] for p in parts]).tolist() == full["doc_ids"].tolist()
        assert all(p["query_input_ids"].shape[0] == 2 for p in parts)


def test_alternatives_change_between_epochs_but_not_between_runs(setup) -> None:
    one, two = make_loader(setup), make_loader(setup)
    a = [signature(b) for _ in range(2) for b in one]
    assert a == [signature(b) for _ in range(2) for b in two]
    # which positive alternative ("answer" or "alt") a row uses is redrawn per epoch
    kind = {}
    for name, count in (("alpha", 26), ("beta", 15)):
        for i in range(count):
            kind[stable_text_hash(f"{name} answer {i}")] = (name, i, "answer")
            kind[stable_text_hash(f"{name} alt {i}")] = (name, i, "alt")
    picks: dict[int, dict[tuple[str, int], str]] = {0: {}, 1: {}}
    for sig in a:
        for doc_id in sig[3]:
            name, row, which = kind[doc_id]
            picks[sig[0]][(name, row)] = which
    common = picks[0].keys() & picks[1].keys()
    assert len(common) > 20
    changed = sum(picks[0][k] != picks[1][k] for k in common)
    assert 0 < changed < len(common)
