"""Our evaluators agree with mteb's own on the same encoder and the same local data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from beir_writer import write_beir

pytest.importorskip("mteb")

from lexical_encoder import HashingEncoder  # noqa: E402

from lit_nomic.evaluation import mteb_adapter as ma  # noqa: E402
from lit_nomic.evaluation.beir import load_beir  # noqa: E402
from lit_nomic.evaluation.encoders import MemoizingEncoder  # noqa: E402
from lit_nomic.evaluation.pairs import (  # noqa: E402
    evaluate_bitext,
    evaluate_sts,
    load_stsb_multi_mt,
    load_tatoeba,
)
from lit_nomic.evaluation.retrieval import evaluate_retrieval  # noqa: E402
from lit_nomic.evaluation.retrieval_data import subsample  # noqa: E402


class CountingHashingEncoder(HashingEncoder):
    prompts = {"STS": "sts: "}

    def __init__(self) -> None:
        super().__init__(dim=1024, name="bow", query_prefix="q: ", document_prefix="d: ")
        self.seen: list[str] = []

    def encode(
        self, texts: list[str], prefix: str = "", batch_size: int = 64, show_progress: bool = False
    ) -> torch.Tensor:
        self.seen.extend(prefix + t for t in texts)
        return super().encode(texts, prefix, batch_size, show_progress)


def test_mteb_agrees_with_ours(tmp_path: Path, shared_data: Path) -> None:
    scifact = subsample(load_beir(shared_data / "beir" / "scifact"), 200, max_queries=30, seed=1)
    folder = write_beir(scifact, tmp_path / "scifact_sub")
    base = CountingHashingEncoder()
    enc = MemoizingEncoder(base)
    ours_ret = evaluate_retrieval(enc, load_beir(folder))
    ours_sts, _, _ = evaluate_sts(
        enc, load_stsb_multi_mt(shared_data / "stsb_multi_mt", "en"), prefix="sts: "
    )
    ours_bitext, _, _ = evaluate_bitext(enc, load_tatoeba(shared_data / "tatoeba_laser", "ina"))
    seen_before = len(base.seen)

    tasks = [
        ma.offline_retrieval_task(folder),
        ma.offline_sts_task(shared_data / "stsb_multi_mt", ["en"]),
        ma.offline_tatoeba_task(shared_data / "tatoeba_laser", ["ina"]),
    ]
    result = ma.run_mteb(enc, tasks, tmp_path / "mteb")
    scores = ma.main_scores(result)
    # mteb rounds retrieval scores to 5 decimals
    assert scores["SciFact"]["default"] == pytest.approx(ours_ret.metrics["ndcg@10"], abs=1e-5)
    # mteb takes cosines in float32; near-tied pairs may swap ranks
    assert scores["STSBenchmarkMultilingualSTS"]["en"] == pytest.approx(ours_sts["spearman"], abs=2e-3)
    assert scores["Tatoeba"]["ina-eng"] == pytest.approx(ours_bitext["f1"], abs=1e-9)
    # mteb built the same texts with the same prefixes: everything came from the memo
    assert len(base.seen) == seen_before and enc.hits > 0

    run_dir = next((tmp_path / "mteb" / "results" / "lit-nomic__bow").iterdir())
    assert {p.name for p in run_dir.glob("*.json")} >= {
        "SciFact.json",
        "STSBenchmarkMultilingualSTS.json",
        "Tatoeba.json",
    }
    saved = json.loads((run_dir / "SciFact.json").read_text())
    assert saved["scores"]["test"][0]["ndcg_at_10"] == scores["SciFact"]["default"]
    assert saved["dataset_revision"].startswith("local-")  # no claim of a Hub revision never loaded


def test_overwrite_always_reruns(tmp_path: Path, shared_data: Path) -> None:
    enc = CountingHashingEncoder()
    task = lambda: ma.offline_tatoeba_task(shared_data / "tatoeba_laser", ["ang"])  # noqa: E731
    ma.run_mteb(enc, [task()], tmp_path)
    first = len(enc.seen)
    ma.run_mteb(enc, [task()], tmp_path)
    assert len(enc.seen) == 2 * first  # a cached result is never silently reused
    ma.run_mteb(enc, [task()], tmp_path, overwrite_strategy="only-missing")
    assert len(enc.seen) == 2 * first  # ... unless explicitly asked for


def test_prefix_resolution() -> None:
    adapter = ma.MtebEncoder(CountingHashingEncoder())
    assert adapter.mteb_model_meta.name == "lit-nomic/bow"
    assert adapter.prefix_for("SciFact", "Retrieval", ma.PromptType.query) == "q: "
    assert adapter.prefix_for("SciFact", "Retrieval", ma.PromptType.document) == "d: "
    assert adapter.prefix_for("STSBenchmarkMultilingualSTS", "STS", None) == "sts: "
    assert adapter.prefix_for("Tatoeba", "BitextMining", None) == ""
