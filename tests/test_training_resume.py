"""A CPU run killed right after a checkpoint and resumed repeats the uninterrupted loss sequence.

The run (see ``dist_scripts/train_resume.py``) uses dropout, router jitter and loss-free balancing, so
it only matches when the checkpoint restores the data position, the router biases and the random
draws. Two resume points: step 4, the end of a data epoch (``steps_per_epoch=4``), and ``last``
(step 6, mid-epoch). A save-RNG-at-checkpoint/restore-at-``on_train_start`` scheme passes the
mid-epoch case and fails the epoch-boundary one (the next epoch's DataLoader ``iter()`` draws a seed
from the global generator after the snapshot), which is why steps are reseeded instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import lit_nomic.training.module  # noqa: F401  (allow-lists the config classes for weights_only loading)

DIST_SCRIPTS = Path(__file__).parent / "dist_scripts"
SCRIPT = DIST_SCRIPTS / "train_resume.py"
REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS, KILL_AT, EPOCH = 8, 6, 4
# Every run reproduces the same float32 operations on this CPU; 1e-6 only absorbs a last-bit
# difference should two processes ever pick different kernels.
TOLERANCE = 1e-6


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _args(phase: str, out: Path, data: Path) -> list[str]:
    args = ["--phase", phase, "--out", str(out), "--data", str(data), "--steps", str(STEPS)]
    return args + ["--every", "2", "--kill-at", str(KILL_AT), "--epoch", str(EPOCH)]


def _run(phase: str, out: Path, data: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPT), *_args(phase, out, data)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO_ROOT)


def _losses(path: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"{path.name}: steps logged twice or out of order: {steps}"
    return {r["step"]: r["loss"] for r in rows}


def _report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"


def _load(name: str) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DIST_SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    common = _load("train_common")
    out = tmp_path_factory.mktemp("resume")
    data = common.write_toy_pairs(out / "pairs.jsonl")
    killed = _run("killed", out, data)
    # A real kill: os._exit(1) right after the checkpoint, no teardown.
    assert killed.returncode == 1, _report(killed)
    assert f"KILLED step={KILL_AT}" in killed.stdout, _report(killed)
    # The uninterrupted run and both resumes run here (a fresh process per run would only add
    # interpreter start-up): same code, same single intra-op thread as the killed process.
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PL_GLOBAL_SEED", "0")  # seed_everything writes it; restored afterwards
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TOKENIZERS_PARALLELISM", "false")
        try:
            code = _load("train_resume").main(_args("verify", out, data))
        finally:
            torch.set_num_threads(threads)
    assert code == 0
    return out


def test_killed_run_stopped_at_the_checkpoint(resumed_runs: Path) -> None:
    killed = _losses(resumed_runs / "killed.jsonl")
    assert sorted(killed) == list(range(1, KILL_AT + 1))
    names = {p.name for p in (resumed_runs / "killed_ckpt").glob("*.ckpt")}
    # (the resume from "last" later adds step 8 to the same folder)
    assert {"epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=1-step=6.ckpt", "last.ckpt"} <= names


@pytest.mark.parametrize("resume, first", [("resume_last", KILL_AT + 1), ("resume_epoch", EPOCH + 1)])
def test_resumed_losses_equal_uninterrupted(resumed_runs: Path, resume: str, first: int) -> None:
    full = _losses(resumed_runs / "full.jsonl")
    killed = _losses(resumed_runs / "killed.jsonl")
    resumed = _losses(resumed_runs / f"{resume}.jsonl")
    assert sorted(full) == list(range(1, STEPS + 1))
    assert sorted(resumed) == list(range(first, STEPS + 1))
    for step in range(1, KILL_AT + 1):
        assert abs(killed[step] - full[step]) <= TOLERANCE, (step, killed[step], full[step])
    for step in range(first, STEPS + 1):
        assert abs(resumed[step] - full[step]) <= TOLERANCE, (resume, step, resumed[step], full[step])
    # The sequence is not flat: equality above is not trivially satisfied.
    assert len({round(v, 4) for v in full.values()}) == STEPS


def test_router_biases_survive_the_checkpoint(resumed_runs: Path) -> None:
    # last.ckpt now belongs to the resumed run (step 8): read the killed run's own step-6 checkpoint.
    ckpt_path = resumed_runs / "killed_ckpt" / f"epoch=1-step={KILL_AT}.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    biases = {k: v for k, v in ckpt["state_dict"].items() if k.endswith("selection_bias")}
    assert sorted(biases) == [
        "embedder.encoder.blocks.1.ffn.selection_bias",
        "embedder.encoder.blocks.3.ffn.selection_bias",
    ]
    # 6 updates of +-0.01 each: the biases moved, so a resume that dropped them would route differently.
    assert any(bool(v.abs().sum() > 0) for v in biases.values())
    for value in biases.values():
        steps = value / 0.01
        assert torch.allclose(steps, steps.round(), atol=1e-4) and bool(steps.abs().max() <= KILL_AT)
    # The data position (epoch 1, step 2 of a 4-step epoch: the next batch after step 6) and our
    # metadata travel with it too, on the datamodule and on the fit loop's loader.
    assert (ckpt["ContrastiveDataModule"]["epoch"], ckpt["ContrastiveDataModule"]["step"]) == (1, 2)
    loader_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (loader_state["epoch"], loader_state["step"]) == (1, 2)
    assert ckpt["lit_nomic"]["encoder_config"]["loss_free_balancing"] is True
    final = json.loads((resumed_runs / "biases.json").read_text())
    assert final["resume_last"] == final["full"] and final["resume_epoch"] == final["full"]
