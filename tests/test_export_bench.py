"""lit-nomic bench export on a tiny slice: four variants timed side by side, their agreement and nDCG@10."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_nomic.bench.cli import main
from lit_nomic.bench.export import VARIANTS

pytest.importorskip("onnxruntime")


def test_bench_export_quick(
    tmp_path: Path, scifact_dir: Path, minilm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["export", "--quick", "--warmup", "0", "--repeats", "1", "--threads", "1", "--output", str(tmp_path)]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "int8/ST" in printed and "int8 points lost" in printed
    result = json.loads((tmp_path / "export.json").read_text())
    (row,) = result["rows"]
    assert set(row["times"]) == set(VARIANTS)
    assert row["shape"]["texts"] == 8 and row["shape"]["batch_size"] == 4 and row["shape"]["threads"] == 1
    metrics = row["metrics"]
    assert all(metrics[v]["docs_per_s"] > 0 for v in VARIANTS)
    # same weights everywhere: fp32 variants embed as ours, int8 within its documented bound
    assert metrics["onnx_fp32"]["min_cosine_vs_ours"] > 0.9999
    assert metrics["sentence_transformers"]["min_cosine_vs_ours"] > 0.9999
    assert metrics["onnx_int8"]["min_cosine_vs_ours"] >= 0.97
    scores = {v: metrics[v]["ndcg@10"] for v in VARIANTS}
    assert 0.0 < scores["ours"] <= 1.0
    assert scores["onnx_fp32"] == pytest.approx(scores["ours"], abs=1e-6)
    assert scores["sentence_transformers"] == pytest.approx(scores["ours"], abs=1e-6)
    assert row["shape"]["eval_queries"] == 5
    assert {"ours_over_sentence_transformers", "onnx_int8_over_onnx_fp32"} <= set(row["ratios"])
    # the two targets are checked on the row: int8 speed and its nDCG@10 cost, side by side
    lost = 100 * (scores["sentence_transformers"] - scores["onnx_int8"])
    assert row["ratios"]["onnx_int8_ndcg10_points_lost"] == pytest.approx(lost)
    checks = {c["name"]: c for c in row["checks"]}
    assert set(checks) == {"int8_quality", "int8_speed"}
    assert checks["int8_quality"]["met"] == (lost <= 0.5)
    assert result["command"].startswith("python -m lit_nomic.bench export --quick")
