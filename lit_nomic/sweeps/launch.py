"""Launchers: run a sweep's missing runs here (``local``) or as SLURM jobs through submitit (``slurm``).

``local`` needs nothing installed: up to ``parallel`` runs at a time, each a chain of subprocesses,
torch threads split between them. A failed run is reported with its log and does not stop the others.

``slurm`` uses submitit (the standard Python path to SLURM, not a scheduler of our own): one job per
run, ``nodes`` x ``gpus_per_node`` tasks started with ``srun`` (one task per GPU, as Lightning
expects under SLURM), ``#SBATCH --requeue``. On timeout or preemption submitit calls
:meth:`RunJob.checkpoint`, which requeues the same job; it resumes from ``last.ckpt``. Lightning's own
SLURM auto-requeue is switched off (``SLURMEnvironment(auto_requeue=False)``) so the two never both
requeue. Submission returns at once (the sweep is not held hostage by a blocking launcher); job ids are
kept in each run folder, and ``sweep status`` shows them. ``--dry-run`` writes the sbatch scripts
without a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_nomic.fileio import atomic_write_json, atomic_write_text
from lit_nomic.sweeps.runner import RUN_JSON, RunJob, read_json
from lit_nomic.sweeps.spec import cli_value

SLURM_PLUGIN = {
    "class_path": "lightning.fabric.plugins.environments.SLURMEnvironment",
    "init_args": {"auto_requeue": False},
}


def run_local(
    jobs: Sequence[RunJob], parallel: int = 1, report: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Run ``jobs`` here, ``parallel`` at a time; returns each job's outcome (never raises for a failed run)."""
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    if parallel > 1:
        threads = str(max(1, (os.cpu_count() or 1) // parallel))
        for job in jobs:
            job.env.setdefault("OMP_NUM_THREADS", threads)

    def one(job: RunJob) -> dict[str, Any]:
        report(f"start    {job.run.name}")
        try:
            outcome = job()
        except Exception as err:  # a bug in one run must not stop the others
            outcome = {"run": job.run.name, "status": "failed", "error": f"{type(err).__name__}: {err}"}
        line = f"{outcome['status']:<8} {job.run.name}"
        if outcome["status"] == "failed":
            line += f": {outcome.get('error')} (log: {outcome.get('log', 'n/a')})"
        report(line)
        return outcome

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(one, jobs))


@dataclass
class SlurmOptions:
    """SLURM resources of one run (command line over the sweep file's ``slurm:`` section)."""

    nodes: int = 1
    gpus_per_node: int = 0
    partition: str | None = None
    time_min: int = 60
    account: str | None = None
    qos: str | None = None
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    constraint: str | None = None

    @property
    def tasks_per_node(self) -> int:
        return max(1, self.gpus_per_node)

    def execution_overrides(self, on_slurm: bool) -> dict[str, Any]:
        """What ``fit`` must be told so that Lightning's world matches the allocation."""
        out: dict[str, Any] = {"trainer.num_nodes": self.nodes}
        if self.gpus_per_node:
            out.update({"trainer.accelerator": "gpu", "trainer.devices": self.gpus_per_node})
        if on_slurm:
            out["trainer.plugins"] = SLURM_PLUGIN
        return out

    def sbatch_parameters(self, job_name: str) -> dict[str, Any]:
        """``SlurmExecutor.update_parameters`` keywords: the ``#SBATCH`` lines of one run's job."""
        params: dict[str, Any] = {
            "job_name": job_name,
            "nodes": self.nodes,
            "ntasks_per_node": self.tasks_per_node,
            "time": self.time_min,
            "additional_parameters": {"requeue": True},
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        for key in ("partition", "account", "qos", "cpus_per_task", "constraint"):
            if getattr(self, key):
                params[key] = getattr(self, key)
        if self.mem_gb:
            params["mem"] = f"{self.mem_gb}GB"
        return params


def submit_slurm(
    jobs: Sequence[RunJob],
    options: SlurmOptions,
    folder: Path,
    *,
    cluster: str | None = None,
    dry_run: bool = False,
    wait: bool = False,
    report: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Submit one submitit job per run (``cluster``: None = SLURM, or submitit's ``local``/``debug``).

    ``dry_run`` writes ``<folder>/<run>.sbatch`` (the script submitit would submit) and the exact
    ``fit`` command per run, and submits nothing. ``wait`` blocks until every job ends (tests, debug).
    """
    import submitit

    on_slurm = cluster in (None, "slurm")
    for job in jobs:
        job.execution_overrides = {**options.execution_overrides(on_slurm), **job.execution_overrides}
    if dry_run:
        return [_write_dry_run(job, options, folder, report) for job in jobs]
    if on_slurm:
        executor: Any = submitit.SlurmExecutor(folder=str(folder / "%j"))
    else:  # submitit's local/debug executors: one process per job on this machine
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
        executor.update_parameters(timeout_min=options.time_min)
    outcomes = []
    submitted = []
    for job in jobs:
        if on_slurm:
            executor.update_parameters(**options.sbatch_parameters(f"{job.sweep.name}:{job.run.name}"))
        handle = executor.submit(job)
        run_dir = job.paths.run_dir(job.run)
        status = {"status": "submitted", "job_id": str(handle.job_id), "cluster": cluster or "slurm"}
        atomic_write_json(run_dir / RUN_JSON, {**(read_json(run_dir / RUN_JSON) or {}), **status})
        report(f"submitted {job.run.name}: job {handle.job_id}")
        submitted.append((job, handle))
        outcomes.append({"run": job.run.name, "status": "submitted", "job_id": str(handle.job_id)})
    if wait:
        outcomes = []
        for job, handle in submitted:
            try:
                outcomes.append(handle.result())
            except Exception as err:  # submitit re-raises the job's failure here
                outcomes.append({"run": job.run.name, "status": "failed", "error": str(err).splitlines()[-1]})
    return outcomes


def _write_dry_run(job: RunJob, options: SlurmOptions, folder: Path, report: Callable[[str], None]) -> dict:
    """The sbatch script submitit would submit for ``job`` (its own template), written for inspection."""
    import shlex
    import sys

    from submitit.slurm.slurm import _make_sbatch_string

    from lit_nomic.sweeps.spec import fit_args

    native = options.sbatch_parameters(f"{job.sweep.name}:{job.run.name}")
    job_folder = folder / "%j"
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(job_folder))}"
    script = _make_sbatch_string(command=command, folder=str(job_folder), **native)
    run_dir = job.paths.run_dir(job.run)
    fit = ["lit-nomic", "fit", *fit_args(job.sweep, job.run, run_dir)]
    fit += [f"--{k}={cli_value(v)}" for k, v in job.execution_overrides.items()]
    path = folder / f"{job.run.name}.sbatch"
    text = script + "\n# each task runs (then task 0 evaluates and records):\n# " + shlex.join(fit) + "\n"
    atomic_write_text(path, text)
    report(f"wrote {path}")
    return {"run": job.run.name, "status": "dry-run", "script": str(path)}
