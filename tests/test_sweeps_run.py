"""A tiny sweep run to the end for real: killed midway, resumed, re-run; and the submitit launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_common_loader import load_train_common

from lit_nomic.sweeps.launch import SlurmOptions, submit_slurm
from lit_nomic.sweeps.runner import RunJob, SweepPaths, run_state
from lit_nomic.sweeps.spec import load_sweep
from lit_nomic.training.run_record import read_steps

tc = load_train_common()

BASE = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_steps: {steps}
  log_every_n_steps: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  default_root_dir: runs/base
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{every_n_train_steps: 2, save_last: true, save_top_k: 1}}
    - class_path: lit_nomic.training.callbacks.ExportModel
model:
  model:
    preset: tiny-moe
    tokenizer: all-minilm-l6-v2
    overrides: {{vocab_size: 30522, num_experts: 4, hidden_dropout: 0.0, attention_dropout: 0.0}}
  loss: {{temperature: 0.05}}
  optim: {{lr: 1.0e-3, warmup_steps: 2}}
data:
  tokenizer: all-minilm-l6-v2
  batch_size: 8
  sources:
    - {{name: toy, path: {pairs}, max_query_length: 16, max_document_length: 16}}
"""


def make_sweep(tmp_path: Path, steps: int, seeds: str = "[0]") -> Path:
    pairs = tc.write_toy_pairs(tmp_path / "data" / "pairs.jsonl")
    beir = tc.write_toy_beir(tmp_path / "data" / "beir", pairs)
    (tmp_path / "base.yaml").write_text(BASE.format(steps=steps, pairs=pairs))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"""name: tiny
title: tiny sweep
base: base.yaml
seeds: {seeds}
baseline: a
variants:
  a: {{}}
  b: {{model.model.overrides.top_k: 1}}
eval:
  data: {beir}
  args: {{batch_size: 16}}
"""
    )
    return sweep


def sweep_cli(tmp_path: Path, *args: str, **kwargs) -> subprocess.Popen:  # noqa: ANN003
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "lit_nomic.cli", "sweep", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_tiny_sweep_killed_resumed_and_rerun(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, steps=30)
    spec = load_sweep(sweep)
    runs = spec.runs()
    paths = SweepPaths(tmp_path / "runs" / "sweeps" / "tiny", tmp_path / "results" / "sweeps" / "tiny")
    first = paths.run_dir(runs[0])

    # 1. start the sweep; SIGKILL the whole process group once the first run has a checkpoint
    proc = sweep_cli(tmp_path, "run", "sweep.yaml", start_new_session=True)
    deadline = time.time() + 240
    while not (first / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run_state(paths, runs[0]) == "interrupted" and run_state(paths, runs[1]) == "missing"
    killed_at = max(s["step"] for s in read_steps(first / "train_steps.jsonl"))
    assert killed_at < 30

    # 2. run again: the killed run resumes from its checkpoint, the rest completes
    proc = sweep_cli(tmp_path, "run", "sweep.yaml")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "--ckpt_path=" in (first / "fit.log").read_text()
    steps = [s["step"] for s in read_steps(first / "train_steps.jsonl")]
    assert steps == list(range(1, 31))  # every step once: none lost, repeats replaced
    assert all(run_state(paths, r) == "finished" for r in runs)

    # 3. a second run of the finished sweep starts nothing
    logs = {p: p.stat().st_mtime_ns for p in paths.run_root.rglob("*.log")}
    proc = sweep_cli(tmp_path, "run", "sweep.yaml")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "0 to run" in out, out
    assert {p: p.stat().st_mtime_ns for p in paths.run_root.rglob("*.log")} == logs

    # 4. status and table from the records alone: one row per variant, n=1, no duplicate
    proc = sweep_cli(tmp_path, "status", "sweep.yaml")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "finished: 2" in out, out
    assert all(f"finished    {r.name}" in out for r in runs), out
    proc = sweep_cli(tmp_path, "table", "sweep.yaml")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    md = (paths.records / "table.md").read_text()
    assert md.count("| a (baseline) | 1 |") == 1 and md.count("| b | 1 |") == 1
    proc = sweep_cli(tmp_path, "table", "sweep.yaml", "--output", "tables")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert (tmp_path / "tables" / "table.md").read_text() == md.replace(
        "Regenerate: `lit-nomic sweep table sweep.yaml`",
        "Regenerate: `lit-nomic sweep table sweep.yaml --output tables`",
    )
    record = json.loads((paths.record_dir(runs[1]) / "run.json").read_text())
    assert record["status"] == "finished" and record["parameters"]["total"] > record["parameters"]["active"]
    assert record["train_tokens_per_s"] > 0 and record["encode_docs_per_s"] > 0
    result = next((paths.record_dir(runs[1]) / "eval").rglob("*.json"))
    assert len(json.loads(result.read_text())["per_query"]) == 16  # per-query scores travel with the record


@pytest.mark.slow
def test_submitit_local_executor_runs_a_sweep_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = load_sweep(make_sweep(tmp_path, steps=4))
    paths = SweepPaths.default(spec)
    run = spec.runs()[0]
    outcomes = submit_slurm(
        [RunJob(spec, run, paths)], SlurmOptions(time_min=10), tmp_path / "slurm", cluster="local", wait=True
    )
    assert outcomes[0]["status"] == "finished", outcomes
    assert run_state(paths, run) == "finished"
    assert json.loads((paths.run_dir(run) / "run.json").read_text())["status"] == "finished"


def test_slurm_dry_run_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_sweep(make_sweep(tmp_path, steps=4))
    paths = SweepPaths.default(spec)
    jobs = [RunJob(spec, run, paths) for run in spec.runs()]
    options = SlurmOptions(nodes=2, gpus_per_node=4, partition="gpu", time_min=90, account="proj", qos="high")
    outcomes = submit_slurm(jobs, options, tmp_path / "slurm", dry_run=True)
    assert [o["status"] for o in outcomes] == ["dry-run", "dry-run"]
    script = Path(outcomes[0]["script"]).read_text()
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@90",
    ):
        assert line in script, line
    assert "\nsrun " in script and "submitit" in script
    # Lightning sees the allocation and leaves requeueing to submitit
    assert "--trainer.num_nodes=2" in script and "--trainer.devices=4" in script
    assert '"auto_requeue": false' in script and "SLURMEnvironment" in script
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("run.json"))


@pytest.mark.slow
def test_a_failed_run_is_reported_with_its_log_and_the_others_go_on(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, steps=2)
    # top_k 9 of 4 experts passes the plan-time key check but fails when the model is built
    sweep.write_text(
        sweep.read_text().replace(
            "b: {model.model.overrides.top_k: 1}", "b: {model.model.overrides.top_k: 9}"
        )
    )
    spec = load_sweep(sweep)
    paths = SweepPaths(tmp_path / "runs" / "sweeps" / "tiny", tmp_path / "results" / "sweeps" / "tiny")
    proc = sweep_cli(tmp_path, "run", "sweep.yaml")
    out, _ = proc.communicate(timeout=600)
    good, bad = spec.runs()
    assert proc.returncode == 1, out
    log = paths.run_dir(bad) / "fit.log"
    assert f"failed   {bad.name}: lit-nomic fit exited with 2 (log: {log.relative_to(tmp_path)})" in out, out
    assert "top_k" in log.read_text()
    assert run_state(paths, good) == "finished" and run_state(paths, bad) == "failed"
    proc = sweep_cli(tmp_path, "status", "sweep.yaml")
    out, _ = proc.communicate(timeout=300)
    assert f"failed      {bad.name}  lit-nomic fit exited with 2" in out, out


@pytest.mark.parametrize("only", ["b", "a,b", "[b]"])
def test_only_takes_names_or_groups_comma_separated_or_as_a_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], only: str
) -> None:
    from lit_nomic.sweeps.cli import main

    monkeypatch.chdir(tmp_path)
    make_sweep(tmp_path, steps=4)
    args = ["run", "sweep.yaml", "--launcher", "slurm", "--dry_run", "true", "--only", only]
    assert main(args) == 0
    written = sorted(p.name.split("_s0_")[0] for p in (tmp_path / "runs").rglob("*.sbatch"))
    assert written == (["b"] if only != "a,b" else ["a", "b"])
    assert main(["run", "sweep.yaml", "--only", "c"]) == 2
    assert "--only ['c']: no run of tiny has that name or group" in capsys.readouterr().err
