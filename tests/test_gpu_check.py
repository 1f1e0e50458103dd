"""``python -m lit_nomic.bench.gpu_check`` without CUDA: its CPU-safe parts on tiny shapes, one JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lit_nomic.bench import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA mode is the GPU day's own run")
def test_cpu_mode_runs_every_part_and_writes_one_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["ok"] is True
    assert list(report["parts"]) == ["parity", "bench_moe", "bench_train", "fsdp_smoke"]
    parity = report["parts"]["parity"]["results"]
    assert {(r["router"], r["mode"]) for r in parity} >= {
        ("softmax", "bf16-mixed"),
        ("expert_choice", "bf16"),
    }
    row = report["parts"]["bench_moe"]["row"]
    assert {"ours", "dense", "loop", "linear_loop"} <= set(row["times"])
    assert report["parts"]["bench_train"]["rows"][0]["shape"]["preset"] == "tiny-moe"
    assert report["parts"]["fsdp_smoke"]["steps"] == 2
    assert all(p["seconds"] >= 0 for p in report["parts"].values())


def test_smoke_config_is_the_recipe_on_local_devices(tmp_path: Path) -> None:
    recipe = yaml.safe_load(gpu_check.RECIPE.read_text())
    config = yaml.safe_load(gpu_check.smoke_config(tmp_path, cuda=True, steps=20).read_text())
    assert config["trainer"]["max_steps"] == 20 and config["trainer"]["num_nodes"] == 1
    assert config["trainer"]["strategy"] == {
        **recipe["trainer"]["strategy"],
        "init_args": {
            **recipe["trainer"]["strategy"]["init_args"],
            "data_parallel_size": torch.cuda.device_count(),
        },
    }
    assert config["model"]["model"]["preset"] == "nomic-embed-text-v2-moe"  # the recipe's architecture
    assert (
        config["model"]["loss"] == recipe["model"]["loss"]
        and config["model"]["parallel"] == recipe["model"]["parallel"]
    )
    langs = {s["name"] for s in config["data"]["sources"]}
    assert {"synthetic_en", "synthetic_ja", "synthetic_sw"} <= langs
    first = (tmp_path / "pairs" / "zh.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert "首都" in json.loads(first)["query"]


def test_a_failing_part_is_recorded_and_the_rest_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(cuda: bool) -> dict:
        raise RuntimeError("kernel missing")

    monkeypatch.setitem(gpu_check.PARTS, "bench_moe", broken)
    report = gpu_check.run_gpu_check(["bench_moe", "parity"], cuda=False)
    assert report["ok"] is False
    assert report["parts"]["bench_moe"]["error"] == "RuntimeError: kernel missing"
    assert report["parts"]["parity"]["ok"] is True
