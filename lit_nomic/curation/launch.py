"""Run a curation command's independent units N at a time: here, or as a SLURM job array.

``filter`` chunks and ``mine`` corpus shards are independent units that ``--shard i/n`` already splits
over workers sharing one output folder (each unit is written atomically with a marker, so a killed
worker loses at most the unit in progress). This module starts those workers for the user:

- ``local``: ``n`` subprocesses of the same command with ``--shard i/n``, torch threads split between
  them and, when CUDA devices are visible, one device each (round-robin); each logs to
  ``OUTPUT/workers/<command>-shard-<i>-of-<n>.log``.
- ``slurm``: a submitit job array of ``n`` one-task jobs (the same executor and options as sweeps),
  and one merge job that depends on the whole array (``afterok``). ``dry_run`` writes two plain sbatch
  scripts instead (``OUTPUT/workers/<command>-array.sbatch`` and ``-merge.sbatch``) that run as they
  are: ``sbatch --dependency=afterok:$(sbatch --parsable A) M``.

The workers read their arguments from ``OUTPUT/workers/<command>.yaml`` (the command's own
``--config`` file), so every worker provably runs the same settings; the folder's ``settings.json``
check refuses a worker that does not. When every worker has succeeded, the command runs once more
without a shard: all units are done, so it only merges (filter: the report and mixture; mine: the
search and the triplets). A second launch after a kill re-runs only the unfinished units.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from lit_nomic.curation.common import CurationError
from lit_nomic.fileio import atomic_write_text
from lit_nomic.sweeps.launch import SlurmOptions

Launcher = Literal["local", "slurm"]

# Arguments of the commands that say how to run, not what: never written into the workers' config.
LAUNCH_ARGS = frozenset({"workers", "launcher", "slurm", "dry_run", "shard"})


def worker_config(command: str, args: Mapping[str, Any]) -> Path:
    """Write the command's arguments (without the launch ones) as its ``--config`` file; return it."""
    settings = {k: v for k, v in args.items() if k not in LAUNCH_ARGS}
    path = Path(str(settings["output"])) / "workers" / f"{command}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(settings, sort_keys=True, allow_unicode=True))
    return path


def worker_argv(command: str, config: Path, shard: str | None = None) -> list[str]:
    """The command line of one worker (``shard`` None: the final merge)."""
    argv = [sys.executable, "-m", "lit_nomic.cli", command, "--config", str(config)]
    return argv + (["--shard", shard] if shard is not None else [])


def _device_env(i: int, workers: int) -> dict[str, str]:
    """Worker ``i``'s thread count and (when CUDA devices are visible) its one device."""
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices: list[str] = []
    if visible is not None:
        devices = [d for d in visible.split(",") if d.strip()]
    else:
        try:
            import torch

            devices = [str(d) for d in range(torch.cuda.device_count())]
        except Exception:  # no torch CUDA runtime: CPU workers
            devices = []
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = devices[i % len(devices)]
    return env


def run_local_workers(
    command: str, config: Path, workers: int, report: Callable[[str], None] = print
) -> list[str]:
    """Run ``workers`` shard workers here at once; return one line per failed worker (empty: all ok)."""
    logs = config.parent
    procs = []
    try:
        for i in range(workers):
            log = logs / f"{command}-shard-{i}-of-{workers}.log"
            with open(log, "w", encoding="utf-8") as handle:
                proc = subprocess.Popen(
                    worker_argv(command, config, f"{i}/{workers}"),
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **_device_env(i, workers)},
                )
            procs.append((i, proc, log))
            report(f"{command}: started worker {i}/{workers} (log: {log})")
        failed = []
        for i, proc, log in procs:
            if proc.wait() != 0:
                failed.append(f"worker {i}/{workers} exited with {proc.returncode} (log: {log})")
        return failed
    finally:  # a killed launcher takes its workers with it; a re-launch resumes their units
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()


def _array_parameters(options: SlurmOptions, job_name: str, workers: int) -> dict[str, Any]:
    """sbatch keywords of one array task: one process, at most one GPU (a worker uses one device)."""
    params = options.sbatch_parameters(job_name)
    params.update(nodes=1, ntasks_per_node=1, array_parallelism=workers)
    if options.gpus_per_node:
        params["gpus_per_node"] = 1
    return params


def write_slurm_scripts(command: str, config: Path, workers: int, options: SlurmOptions) -> tuple[Path, Path]:
    """Two plain sbatch scripts (the array and the merge) that run without submitit; returns their paths."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = config.parent / "slurm"
    name = f"lit-nomic-{command}"
    params = _array_parameters(options, name, workers)
    params.pop("array_parallelism")
    shard_argv = worker_argv(command, config)
    array_cmd = shlex.join(shard_argv) + f' --shard "${{SLURM_ARRAY_TASK_ID}}/{workers}"'
    array = _make_sbatch_string(
        command=array_cmd, folder=str(folder / "%j"), map_count=workers, array_parallelism=workers, **params
    )
    merge_params = {**params, "job_name": f"{name}-merge"}
    merge_params.pop("gpus_per_node", None)
    merge = _make_sbatch_string(command=shlex.join(shard_argv), folder=str(folder / "%j"), **merge_params)
    paths = config.parent / f"{command}-array.sbatch", config.parent / f"{command}-merge.sbatch"
    note = f"# submit: sbatch --dependency=afterok:$(sbatch --parsable {paths[0]}) {paths[1]}\n"
    for path, text in zip(paths, (array, merge), strict=True):
        atomic_write_text(path, text + note)
    return paths


def submit_slurm_workers(
    command: str,
    config: Path,
    workers: int,
    options: SlurmOptions,
    *,
    cluster: str | None = None,
    wait: bool = False,
    report: Callable[[str], None] = print,
) -> list[str]:
    """Submit the shard workers as one submitit job array and the merge as a job depending on it.

    ``cluster``: None = SLURM; submitit's ``local``/``debug`` run the array on this machine (tests),
    and the merge then runs after it here. Returns the failed workers when ``wait``, else ``[]``.
    """
    import submitit
    from submitit.helpers import CommandFunction

    folder = config.parent / "submitit" / "%j"
    params = _array_parameters(options, f"lit-nomic-{command}", workers)
    shards = [f"{i}/{workers}" for i in range(workers)]
    run = CommandFunction([*worker_argv(command, config), "--shard"], verbose=False)
    if cluster in (None, "slurm"):
        executor: Any = submitit.SlurmExecutor(folder=str(folder))
        executor.update_parameters(**params)
        jobs = executor.map_array(run, shards)
        array_id = str(jobs[0].job_id).split("_")[0]
        merge_params = {k: v for k, v in params.items() if k not in ("array_parallelism", "gpus_per_node")}
        merge_params["job_name"] = f"lit-nomic-{command}-merge"
        merge_params["additional_parameters"] = {
            **params["additional_parameters"],
            "dependency": f"afterok:{array_id}",
        }
        executor.update_parameters(**merge_params)
        merge_job = executor.submit(CommandFunction(worker_argv(command, config), verbose=False))
        report(f"{command}: submitted array {array_id} ({workers} workers) and merge job {merge_job.job_id}")
    else:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        executor.update_parameters(timeout_min=options.time_min)
        jobs = executor.map_array(run, shards)
        report(f"{command}: started {workers} workers through submitit's {cluster} executor")
        wait = True
    if not wait:
        return []
    failed = []
    for shard, job in zip(shards, jobs, strict=True):
        try:
            job.result()
        except Exception as err:  # submitit re-raises the worker's failure with its stderr
            last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            failed.append(f"worker {shard} failed: {last} (logs: {job.paths.folder})")
    return failed


def launch_workers(
    command: str,
    args: Mapping[str, Any],
    workers: int,
    launcher: Launcher,
    slurm: SlurmOptions | None,
    dry_run: bool,
    report: Callable[[str], None] = print,
) -> bool:
    """Start the shard workers of ``command``; True when the caller should now merge here.

    Raises CurationError when a worker failed (naming its log); a re-launch resumes its units.
    """
    if workers < 1:
        raise CurationError(f"--workers must be >= 1, got {workers}")
    if args.get("shard"):
        raise CurationError(
            "--shard and --workers/--launcher exclude each other: the launcher assigns shards"
        )
    if launcher not in ("local", "slurm"):
        raise CurationError(f"--launcher must be local or slurm, got {launcher!r}")
    config = worker_config(command, args)
    options = slurm or SlurmOptions()
    if launcher == "slurm":
        if dry_run:
            array, merge = write_slurm_scripts(command, config, workers, options)
            report(f"{command}: wrote {array} and {merge} (submit: see their last line)")
            return False
        submit_slurm_workers(command, config, workers, options, report=report)
        return False
    if dry_run:
        for i in range(workers):
            report(shlex.join(worker_argv(command, config, f"{i}/{workers}")))
        report(shlex.join(worker_argv(command, config)) + "   # merge, after every worker")
        return False
    failed = run_local_workers(command, config, workers, report)
    if failed:
        raise CurationError(f"{command}: " + "; ".join(failed) + "; re-run the same command to resume")
    return True
