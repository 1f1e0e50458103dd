"""Execute one sweep run to the end: fit (resuming when interrupted), evaluate, record.

A run is *finished* exactly when its record's ``run.json`` says so; that file is written last and
atomically, after the evaluation JSONs it points to. Everything before it is redone or resumed:

1. ``lit-nomic fit`` into the run folder, with ``--ckpt_path <run>/checkpoints/last.ckpt`` when a
   killed attempt left one (Lightning restores the step, the data position and the RNG streams);
   skipped when the exported model and ``train.json`` are already there.
2. ``lit-nomic eval`` of the exported model on the sweep's evaluation suite, into ``<run>/eval``.
3. The record: ``config.yaml``, ``train.json``, the evaluation JSONs (with per-query scores) and
   ``run.json`` copied under ``results/sweeps/<sweep>/runs/<run>/``: small files meant to be committed,
   from which ``sweep table`` and ``sweep status`` work on any clone.

Each step is a subprocess (``python -m lit_nomic.cli``), so a run cannot leak memory or torch
threads into the next, and its output goes to ``<run>/fit.log`` / ``<run>/eval.log``. A file lock on
``<run>/.lock`` keeps two launchers from running the same run at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_nomic.fileio import atomic_write_json
from lit_nomic.sweeps.spec import RunSpec, SweepSpec, cli_value, fit_args

RUN_JSON = "run.json"
LOCK = ".lock"
TRAIN_RECORD_CALLBACK = "lit_nomic.training.run_record.TrainRecord"


@dataclass
class SweepPaths:
    """Where a sweep's runs (large, outside git) and records (small, committed) live."""

    run_root: Path
    records: Path

    @classmethod
    def default(cls, sweep: SweepSpec, run_root: str | None = None, records: str | None = None) -> SweepPaths:
        return cls(
            Path(run_root) if run_root else Path("runs") / "sweeps" / sweep.name,
            Path(records) if records else Path("results") / "sweeps" / sweep.name,
        )

    def run_dir(self, run: RunSpec) -> Path:
        return self.run_root / run.name

    def record_dir(self, run: RunSpec) -> Path:
        return self.records / "runs" / run.name


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_finished(paths: SweepPaths, run: RunSpec) -> bool:
    record = read_json(paths.record_dir(run) / RUN_JSON)
    return bool(
        record and record.get("status") == "finished" and record.get("config_hash") == run.config_hash
    )


def is_locked(run_dir: Path) -> bool:
    """True while another process holds the run's lock (a live run)."""
    lock = run_dir / LOCK
    if not lock.exists():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


@contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """Hold ``<run>/.lock`` for the block; yields False (without waiting) when another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_state(paths: SweepPaths, run: RunSpec) -> str:
    """finished | running | failed | interrupted (resumable) | missing."""
    if is_finished(paths, run):
        return "finished"
    run_dir = paths.run_dir(run)
    if is_locked(run_dir):
        return "running"
    status = read_json(run_dir / RUN_JSON) or {}
    if status.get("status") == "failed":
        return "failed"
    if (run_dir / "checkpoints").exists() or (run_dir / "model").exists():
        return "interrupted"
    return "missing"


@dataclass
class RunJob:
    """One run, as a picklable callable: the local launcher calls it, submitit ships it to SLURM.

    ``execution_overrides`` are launcher facts (devices, nodes, the SLURM plugin) that are passed to
    ``fit`` but are not part of the run's identity.
    """

    sweep: SweepSpec
    run: RunSpec
    paths: SweepPaths
    execution_overrides: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable

    def __call__(self) -> dict[str, Any]:
        run_dir = self.paths.run_dir(self.run)
        if is_finished(self.paths, self.run):
            return {"run": self.run.name, "status": "finished", "skipped": True}
        if not _is_rank_zero():
            # Non-zero SLURM tasks only join the distributed fit (and skip it exactly when rank 0
            # does: a requeued job whose fit had finished); rank 0 evaluates and records.
            if not _fit_done(run_dir):
                self._fit(run_dir)
            return {"run": self.run.name, "status": "fit-rank"}
        with run_lock(run_dir) as acquired:
            if not acquired:
                return {"run": self.run.name, "status": "running", "skipped": True}
            return self._execute(run_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on timeout/preemption: requeue this same job; it resumes from last.ckpt."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)

    # -- steps -------------------------------------------------------------------------------------

    def _execute(self, run_dir: Path) -> dict[str, Any]:
        started = time.time()
        status: dict[str, Any] = {
            "status": "running",
            "run": self.run.name,
            "sweep": self.sweep.name,
            "config_hash": self.run.config_hash,
            "started": _now(),
            "pid": os.getpid(),
        }
        atomic_write_json(run_dir / RUN_JSON, status)
        fit_s = eval_s = 0.0
        try:
            if not _fit_done(run_dir):
                t0 = time.time()
                self._fit(run_dir)
                fit_s = time.time() - t0
            t0 = time.time()
            self._evaluate(run_dir)
            eval_s = time.time() - t0
        except RunFailed as err:
            status.update(status="failed", error=str(err), log=str(err.log), ended=_now())
            atomic_write_json(run_dir / RUN_JSON, status)
            return {"run": self.run.name, "status": "failed", "error": str(err), "log": str(err.log)}
        record = self._record(run_dir, status, fit_s, eval_s, time.time() - started)
        return {"run": self.run.name, "status": "finished", "record": record}

    def _fit(self, run_dir: Path) -> None:
        args = ["fit", *fit_args(self.sweep, self.run, run_dir)]
        args += [f"--{k}={cli_value(v)}" for k, v in self.execution_overrides.items()]
        args.append(f"--trainer.callbacks+={TRAIN_RECORD_CALLBACK}")
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.exists():
            args.append(f"--ckpt_path={last}")
        self._call(args, run_dir / "fit.log")
        if not _fit_done(run_dir) and _is_rank_zero():
            raise RunFailed("fit ended without an exported model and train.json", run_dir / "fit.log")

    def _evaluate(self, run_dir: Path) -> None:
        data = self.sweep.eval_data
        if data is None:
            raise RunFailed("the sweep has no eval.data", run_dir / "eval.log")
        eval_dir = run_dir / "eval"
        if eval_dir.exists():  # a killed evaluation: start it again from clean
            shutil.rmtree(eval_dir)
        args = ["eval", "--model", str(run_dir / "model"), "--data", data, "--output", str(eval_dir)]
        args += ["--name", self.run.name, "--cache_dir", str(run_dir / "embedding-cache")]
        if self.sweep.eval.get("split"):
            args += ["--split", str(self.sweep.eval["split"])]
        for key, value in (self.sweep.eval.get("args") or {}).items():
            args += [f"--{key}", cli_value(value)]
        self._call(args, run_dir / "eval.log")
        if not list(eval_dir.rglob("*.json")):
            raise RunFailed("evaluation wrote no result JSON", run_dir / "eval.log")

    def _call(self, args: list[str], log: Path) -> None:
        env = {**os.environ, **self.env}
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"\n=== {_now()} lit-nomic {' '.join(args)}\n")
            handle.flush()
            proc = subprocess.run(
                [self.python, "-m", "lit_nomic.cli", *args], stdout=handle, stderr=subprocess.STDOUT, env=env
            )
        if proc.returncode != 0:
            raise RunFailed(f"lit-nomic {args[0]} exited with {proc.returncode}", log)

    def _record(
        self, run_dir: Path, status: dict[str, Any], fit_s: float, eval_s: float, total_s: float
    ) -> Path:
        """Copy the small artefacts into the committed record folder; ``run.json`` last."""
        from lit_nomic.evaluation.results import git_commit

        record = self.paths.record_dir(self.run)
        staging = record.with_name(record.name + ".partial")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        for name in ("config.yaml", "train.json"):
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, staging / name)
        shutil.copytree(run_dir / "eval", staging / "eval")
        train = read_json(run_dir / "train.json") or {}
        summary = {
            **status,
            "status": "finished",
            "ended": _now(),
            "variant": self.run.variant,
            "group": self.run.group,
            "point": self.run.point,
            "seed": self.run.seed,
            "overrides": self.run.overrides,
            "execution_overrides": self.execution_overrides,
            "git_commit": git_commit(),
            "parameters": _parameter_counts(run_dir / "model"),
            "train_tokens_per_s": train.get("train_tokens_per_s"),
            "global_step": train.get("global_step"),
            "encode_docs_per_s": _encode_docs_per_s(run_dir / "eval"),
            "timings_s": {"fit": round(fit_s, 1), "eval": round(eval_s, 1), "total": round(total_s, 1)},
        }
        summary.pop("pid", None)
        atomic_write_json(staging / RUN_JSON, summary)
        if record.exists():
            shutil.rmtree(record)
        os.replace(staging, record)
        atomic_write_json(run_dir / RUN_JSON, summary)
        return record


class RunFailed(RuntimeError):
    def __init__(self, message: str, log: Path) -> None:
        super().__init__(message)
        self.log = log


def _fit_done(run_dir: Path) -> bool:
    return (run_dir / "model" / "config.json").exists() and (run_dir / "train.json").exists()


def _is_rank_zero() -> bool:
    return os.environ.get("SLURM_PROCID", "0") == "0"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _parameter_counts(model_dir: Path) -> dict[str, int] | None:
    from lit_nomic.config import EncoderConfig
    from lit_nomic.model.params import count_parameters

    config = model_dir / "config.json"
    if not config.exists():
        return None
    counts = count_parameters(EncoderConfig.load(config))
    return {k: int(counts[k]) for k in ("total", "active", "flops_per_token_forward")}


def _encode_docs_per_s(eval_dir: Path) -> float | None:
    """Documents per second while encoding the largest retrieval corpus of the evaluation."""
    best: tuple[int, float] | None = None
    for path in eval_dir.rglob("*.json"):
        result = read_json(path) or {}
        docs = (result.get("counts") or {}).get("num_documents")
        seconds = (result.get("timings") or {}).get("encode_corpus_s")
        if docs and seconds and (best is None or docs > best[0]):
            best = (int(docs), float(seconds))
    return best[0] / best[1] if best else None
