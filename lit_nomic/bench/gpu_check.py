"""The first-GPU-day check, one command, one JSON:

    python -m lit_nomic.bench.gpu_check --output gpu_check.json

On a CUDA machine (sized for < 8 minutes on one H100/H200) it runs, each part timed and recorded
even when another fails:

1. ``parity``: ``tests/test_gpu_backends.py`` (every MoE backend against the fp32 per-expert
   reference in bf16 and bf16-mixed, flash-attn against SDPA), as a pytest subprocess;
2. ``bench_moe``: one MoE layer fwd+bwd at the Nomic Embed v2 shape (T=8192, D=768, F=3072, 8
   experts top-2) in bf16: ours against megablocks (when installed), CUDA grouped_mm, the stacked
   per-expert loop, the ``nn.Linear``-per-expert loop (contrastors / HF fallback) and dense;
3. ``bench_train``: ``bench train --preset nomic-embed-text-v2-moe`` (bf16, MFU against the
   measured bf16 matmul peak);
4. ``fsdp_smoke``: 20 optimiser steps of ``experiments/nomic-v2-pretrain.yaml`` under FSDP2
   (ModelParallelStrategy, bf16 parameters, fp32 reduction) on every local GPU, on synthetic
   multilingual pairs, random init (no download), through ``lit-nomic fit``.

Without CUDA every part runs its CPU-safe form on tiny shapes (parity in-process, the ``tiny-moe``
preset, 2 FSDP2 steps on CPU/gloo), which is what CI runs; the JSON says ``"device": "cpu"``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE = REPO_ROOT / "experiments" / "nomic-v2-pretrain.yaml"
PACKAGED_TOKENIZER = "all-minilm-l6-v2"  # offline; its ids fit in any vocabulary we train

_LANG_PAIRS = {
    "en": ("what is the capital of {x}", "{x} is a country; its capital city hosts the government."),
    "de": ("was ist die hauptstadt von {x}", "{x} ist ein Land; seine Hauptstadt ist Sitz der Regierung."),
    "fr": ("quelle est la capitale de {x}", "{x} est un pays ; sa capitale accueille le gouvernement."),
    "es": ("cual es la capital de {x}", "{x} es un pais; su capital alberga el gobierno."),
    "ja": ("{x}の首都はどこですか", "{x}は国であり、その首都には政府がある。"),
    "ru": ("какая столица {x}", "{x} это страна; в её столице находится правительство."),
    "zh": ("{x}的首都是什么", "{x}是一个国家，它的首都是政府所在地。"),
    "sw": ("mji mkuu wa {x} ni upi", "{x} ni nchi; mji mkuu wake una serikali."),
}


def write_synthetic_pairs(folder: Path, per_language: int = 64) -> dict[str, Path]:
    """One JSONL shard of query/document pairs per language under ``folder/<lang>.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = {}
    for lang, (q, d) in _LANG_PAIRS.items():
        path = folder / f"{lang}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for i in range(per_language):
                x = f"land{i}"
                handle.write(
                    json.dumps({"query": q.format(x=x), "document": d.format(x=x)}, ensure_ascii=False) + "\n"
                )
        shards[lang] = path
    return shards


def smoke_config(out: Path, cuda: bool, steps: int) -> Path:
    """The pretraining recipe, reduced to a smoke run: local devices, synthetic data, no downloads."""
    import yaml

    config = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    shards = write_synthetic_pairs(out / "pairs")
    devices = torch.cuda.device_count() if cuda else 1
    trainer = config["trainer"]  # the recipe stops after 2 epochs; the smoke after `steps` steps
    trainer.update(
        accelerator="gpu" if cuda else "cpu", devices=devices, num_nodes=1, max_steps=steps, max_epochs=-1,
        log_every_n_steps=1, default_root_dir=str(out / "run"), callbacks=[], enable_checkpointing=False,
    )  # fmt: skip
    trainer["strategy"]["init_args"]["data_parallel_size"] = devices
    model = config["model"]
    model["model"].update(init_from=None, tokenizer=PACKAGED_TOKENIZER, name="gpu-check-smoke")
    model["optim"]["warmup_steps"] = 2
    if not cuda:
        model["model"]["preset"] = "tiny-moe"
        model["model"]["overrides"] = {"vocab_size": 30522}  # the packaged BERT tokenizer's ids
        model["parallel"] = {"param_dtype": "float32", "reduce_dtype": "float32"}
    data = config["data"]
    length_q, length_d = (32, 256) if cuda else (8, 16)
    data.update(tokenizer=PACKAGED_TOKENIZER, batch_size=64 if cuda else 4, num_workers=0, pin_memory=False)
    data["sources"] = [
        {
            "name": f"synthetic_{lang}",
            "path": str(path),
            "max_query_length": length_q,
            "max_document_length": length_d,
        }
        for lang, path in shards.items()
    ]
    path = out / "smoke.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- parts
def part_parity(cuda: bool) -> dict[str, Any]:
    if cuda:
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(REPO_ROOT / "tests" / "test_gpu_backends.py"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=240)
        tail = (proc.stdout + proc.stderr)[-4000:]
        summary = [
            line for line in tail.splitlines() if " passed" in line or " failed" in line or " error" in line
        ]
        return {
            "ok": proc.returncode == 0,
            "returncode": proc.returncode,
            "summary": summary[-1:],
            "tail": tail,
        }
    from lit_nomic.bench.parity import moe_parity

    results = [
        moe_parity("torch", router, mode, device="cpu", tokens=48, hidden=32, ffn=64, experts=4).to_dict()
        for router in ("softmax", "expert_choice")
        for mode in ("fp32", "bf16", "bf16-mixed")
    ]
    return {"ok": all(r["ok"] for r in results), "results": results}


def part_bench_moe(cuda: bool) -> dict[str, Any]:
    from lit_nomic.bench.moe import MoEShape, run_moe_row

    if cuda:
        shape = MoEShape(8192, 768, 3072, 8, 2, dtype="bf16")
        row = run_moe_row(shape, "cuda", warmup=2, repeats=10, max_repeats=30, budget_s=20.0)
    else:
        shape = MoEShape(64, 32, 64, 4, 2, dtype="fp32")
        row = run_moe_row(shape, "cpu", warmup=1, repeats=2, max_repeats=2, budget_s=0.0)
    return {"ok": True, "row": row.to_dict()}


def part_bench_train(cuda: bool) -> dict[str, Any]:
    from lit_nomic.bench.train import TrainShape, run_train_benchmark

    if cuda:
        shapes = [TrainShape("nomic-embed-text-v2-moe", 64, 32, 256, "bf16")]
        rows, peak = run_train_benchmark(
            shapes, "cuda", peak_n=8192, repeats=5, max_repeats=10, budget_s=30.0
        )
    else:
        shapes = [TrainShape("tiny-moe", 4, 8, 16, "fp32")]
        rows, peak = run_train_benchmark(shapes, "cpu", peak_n=128, repeats=1, max_repeats=1, budget_s=0.0)
    return {"ok": True, "peak": peak, "rows": [r.to_dict() for r in rows]}


def part_fsdp_smoke(cuda: bool, steps: int | None = None) -> dict[str, Any]:
    steps = steps or (20 if cuda else 2)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        config = smoke_config(Path(tmp), cuda, steps)
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        cmd = [sys.executable, "-m", "lit_nomic.cli", "fit", "-c", str(config)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=360)
        tail = (proc.stdout + proc.stderr)[-4000:]
    return {"ok": proc.returncode == 0, "returncode": proc.returncode, "steps": steps, "tail": tail}


PARTS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "parity": part_parity,
    "bench_moe": part_bench_moe,
    "bench_train": part_bench_train,
    "fsdp_smoke": part_fsdp_smoke,
}


def run_gpu_check(parts: list[str] | None = None, cuda: bool | None = None) -> dict[str, Any]:
    from lit_nomic.bench.timing import machine_info

    cuda = torch.cuda.is_available() if cuda is None else cuda
    report: dict[str, Any] = {"device": "cuda" if cuda else "cpu", "machine": machine_info(), "parts": {}}
    for name in parts or list(PARTS):
        start = time.perf_counter()
        try:
            result = PARTS[name](cuda)
        except Exception as err:  # one broken part must not hide the others
            result = {
                "ok": False,
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-3000:],
            }
        result["seconds"] = round(time.perf_counter() - start, 1)
        report["parts"][name] = result
        print(f"[gpu_check] {name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s)", flush=True)
    report["ok"] = all(p["ok"] for p in report["parts"].values())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lit_nomic.bench.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--output", default="gpu_check.json", help="the JSON report (default: gpu_check.json)"
    )
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), help="run only these parts")
    args = parser.parse_args(argv)
    report = run_gpu_check(args.parts)
    Path(args.output).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"[gpu_check] {'all ok' if report['ok'] else 'FAILURES'}; wrote {args.output}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
