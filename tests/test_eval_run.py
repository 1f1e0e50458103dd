"""``evaluate()`` end to end over real data with the lexical encoder, and data resolution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lexical_encoder import HashingEncoder

from lit_nomic.evaluation.report import build_table
from lit_nomic.evaluation.results import load_results
from lit_nomic.evaluation.run import evaluate, format_table
from lit_nomic.evaluation.suites import detect_kind, resolve_data


class PromptedHashingEncoder(HashingEncoder):
    """Declares mteb-style task prompts, like Nomic models do for STS."""

    prompts = {"STS": "classification: "}


def test_evaluate_yaml_suite(tmp_path: Path, shared_data: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "datasets:\n"
        "  - name: scifact\n    max_docs: 300\n    max_queries: 40\n"
        "  - name: stsb_multi_mt\n    languages: [en]\n"
        "  - name: tatoeba\n    languages: [ina, ang]\n"
        "  - name: xquad_r\n    languages: [de]\n",
        encoding="utf-8",
    )
    enc = PromptedHashingEncoder(
        dim=2048, name="bow", query_prefix="search_query: ", document_prefix="search_document: "
    )
    out_dir, cache_dir = tmp_path / "out", tmp_path / "cache"
    results = evaluate(enc, str(suite), output_dir=out_dir, cache_dir=cache_dir, data_root=shared_data)
    keys = [(r["dataset"], r["language"], r["task_type"]) for r in results]
    assert keys == [
        ("scifact-sub300", None, "retrieval"),
        ("stsb_multi_mt", "en", "sts"),
        ("tatoeba", "ina-eng", "bitext"),
        ("tatoeba", "ang-eng", "bitext"),
        ("xquad_r", "de", "retrieval"),
        ("xquad_r_cross", "de-en", "retrieval"),
    ]
    by_key = {(r["dataset"], r["language"]): r for r in results}
    sci = by_key[("scifact-sub300", None)]
    assert sci["query_prefix"] == "search_query: " and sci["document_prefix"] == "search_document: "
    assert sci["counts"]["num_documents"] == 300 and sci["counts"]["num_evaluated_queries"] == 40
    assert set(sci["metrics"]) >= {"ndcg@10", "recall@100", "map@10", "mrr@10", "precision@1"}
    assert by_key[("stsb_multi_mt", "en")]["prefix"] == "classification: "
    assert by_key[("stsb_multi_mt", "en")]["counts"]["num_pairs"] == 1379
    # lexical matching: German questions find German paragraphs, not English ones
    assert by_key[("xquad_r", "de")]["main_score"] > by_key[("xquad_r_cross", "de-en")]["main_score"] + 0.2
    assert by_key[("stsb_multi_mt", "en")]["main_score"] > 0.3

    on_disk = load_results(out_dir)
    assert sorted(r["_path"] for r in on_disk) == sorted(r["_path"] for r in results)
    assert json.loads(Path(results[0]["_path"]).read_text())["model_hash"] == "hashing-bow-v1-d2048"
    cached = sorted(p.name for p in cache_dir.glob("*.npy"))
    assert len(cached) == 2 + 1 + 4 + 3  # STS: unique sentences; xquad_r: de questions, de and en paragraphs

    text = format_table(results)
    assert "| bow | tatoeba | **avg (2)** |" in text
    assert "| bow | scifact-sub300 | – | test |  | ndcg@10 |" in text
    table = build_table(on_disk)
    assert table.columns == [
        "scifact-sub300",
        "stsb_multi_mt",
        "tatoeba",
        "xquad_r",
        "xquad_r_cross",
        "Average",
    ]

    again = evaluate(
        enc, str(suite), output_dir=out_dir, cache_dir=cache_dir, data_root=shared_data, matryoshka_dim=256
    )
    assert all(r["matryoshka_dim"] == 256 and r["counts"]["embedding_dim"] == 256 for r in again)
    assert len(load_results(out_dir)) == 12
    assert sorted(p.name for p in cache_dir.glob("*.npy")) == cached  # nothing re-encoded


def test_evaluate_named_beir_folder(tmp_path: Path, scifact_dir: Path) -> None:
    enc = HashingEncoder(dim=512)
    results = evaluate(enc, str(scifact_dir), split="test", output_dir=tmp_path, top_k=10)
    (r,) = results
    assert (
        r["dataset"] == "scifact"
        and r["counts"]["num_documents"] == 5183
        and r["counts"]["num_queries"] == 300
    )
    assert r["metrics"]["recall@1000"] == r["metrics"]["recall@10"]  # only 10 retrieved
    assert 0.2 < r["metrics"]["ndcg@10"] < 0.9


def test_resolve_data_and_errors(tmp_path: Path, shared_data: Path) -> None:
    specs = resolve_data("scifact", data_root=shared_data)
    assert [(s.kind, s.name, s.split) for s in specs] == [("beir", "scifact", "test")]
    assert detect_kind(shared_data / "xquad_r") == "xquad_r"
    assert detect_kind(shared_data / "stsb_multi_mt") == "sts"
    assert detect_kind(shared_data / "tatoeba_laser") == "bitext"
    with pytest.raises(ValueError, match=r"'xquad_r' \(xquad_r\) only has a 'test' split, got split='dev'"):
        resolve_data("xquad_r", split="dev", data_root=shared_data)
    with pytest.raises(FileNotFoundError, match="dataset 'nope' is neither a named suite"):
        resolve_data("nope", data_root=shared_data)
    with pytest.raises(ValueError, match="unrecognised dataset layout"):
        detect_kind(tmp_path)
    suite = tmp_path / "s.yaml"
    suite.write_text("datasets:\n  - scifact\n  - name: tatoeba\n    granularity: sentence\n")
    with pytest.raises(
        ValueError, match=r"s\.yaml: datasets\[1\]: unknown option\(s\) \['granularity'\] for a bitext"
    ):
        resolve_data(str(suite), data_root=shared_data)
    suite.write_text("datasets:\n  - 42\n")
    with pytest.raises(ValueError, match=r"datasets\[0\]: expected a name or a mapping, got int"):
        resolve_data(str(suite), data_root=shared_data)
    suite.write_text("sets: [scifact]\n")
    with pytest.raises(ValueError, match="expected a non-empty 'datasets' list"):
        resolve_data(str(suite), data_root=shared_data)
    with pytest.raises(ValueError, match=r"stsb_multi_mt: languages \['xx'\] not available"):
        evaluate(
            HashingEncoder(dim=8),
            "stsb_multi_mt",
            output_dir=tmp_path,
            languages=["xx"],
            data_root=shared_data,
        )


def test_package_root_exports_the_evaluation_entry_points_lazily() -> None:
    code = (
        "import sys, lit_nomic\n"
        "assert 'torch' not in sys.modules and 'lit_nomic.evaluation' not in sys.modules\n"
        "from lit_nomic import evaluate, load_results, write_report, TextEncoder, OptimConfig, ModelSpec\n"
        "from lit_nomic.evaluation import run, report, results, encoders\n"
        "assert evaluate is run.evaluate and write_report is report.write_report\n"
        "assert load_results is results.load_results and TextEncoder is encoders.TextEncoder\n"
        "print([n for n in lit_nomic.__all__ if getattr(lit_nomic, n) is None])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"  # every public name resolves
