"""``lit-nomic sweep plan|run|status|table SWEEP.yaml``.

plan    the expanded runs: name (overrides + config hash) and the exact ``lit-nomic fit`` command
run     run what is not finished (local: here, N at a time; slurm: one submitit job per run)
status  finished / running / failed / interrupted / missing per run, metrics of finished runs
table   mean ± std over seeds, paired significance vs the baseline, Markdown/CSV/LaTeX + PNG
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Literal

from lit_nomic.sweeps.runner import SweepPaths, read_json, run_state
from lit_nomic.sweeps.spec import SweepSpec, check_keys, fit_args, load_sweep


def _load(sweep: str, profile: str | None, check: bool = True) -> SweepSpec:
    spec = load_sweep(sweep, profile)
    if check:
        check_keys(spec)
    return spec


def plan(sweep: str, profile: str | None = None, run_root: str | None = None) -> list[dict]:
    """Print every run of the sweep and its exact ``lit-nomic fit`` command; checks every key.

    Args:
        sweep: the sweep YAML (see sweeps/README.md).
        profile: a named profile of the sweep file (e.g. ``gpu``: the paper-scale variant).
        run_root: folder of the run folders (default ``runs/sweeps/<name>``).
    """
    spec = _load(sweep, profile)
    paths = SweepPaths.default(spec, run_root)
    runs = spec.runs()
    print(
        f"# {spec.name}: {len(runs)} runs ({len(spec.variants)} variants x {len(runs) // max(1, len(spec.variants) * len(spec.seeds))} points x {len(spec.seeds)} seeds)"
        + (f", baseline {spec.baseline}" if spec.baseline else "")
    )
    out = []
    for run in runs:
        command = "lit-nomic fit " + " ".join(shlex.quote(a) for a in fit_args(spec, run, paths.run_dir(run)))
        print(f"{run.name}\n  {command}")
        out.append({"name": run.name, "command": command})
    if spec.eval_data:
        print(
            f"# then per run: lit-nomic eval --model <run>/model --data {spec.eval_data} --output <run>/eval"
        )
    return out


def run(
    sweep: str,
    launcher: Literal["local", "slurm"] = "local",
    parallel: int = 1,
    profile: str | None = None,
    only: list[str] | str | None = None,
    run_root: str | None = None,
    records: str | None = None,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    partition: str | None = None,
    time_min: int | None = None,
    account: str | None = None,
    qos: str | None = None,
    cluster: Literal["slurm", "local", "debug"] = "slurm",
    dry_run: bool = False,
    wait: bool = False,
) -> int:
    """Run every run that is not finished; a second call on a finished sweep starts nothing.

    A run is finished when its record (``results/sweeps/<name>/runs/<run>/run.json``) exists; a killed
    run resumes from its last checkpoint; a failed run is reported with its log and the others go on.

    Args:
        sweep: the sweep YAML.
        launcher: ``local`` (here) or ``slurm`` (one submitit job per run).
        parallel: local runs at a time (torch threads are split between them).
        profile: a named profile of the sweep file.
        only: run names (or group names) to restrict to: ``--only a,b`` or ``--only '[a, b]'``.
        run_root: folder of the run folders (default ``runs/sweeps/<name>``).
        records: folder of the committed records (default ``results/sweeps/<name>``).
        nodes: SLURM nodes per run (default from the sweep's ``slurm:``, else 1).
        gpus_per_node: GPUs (= tasks, started with srun) per node.
        partition: SLURM partition.
        time_min: SLURM time limit per job, minutes (a timeout requeues and resumes).
        account: SLURM account.
        qos: SLURM QOS.
        cluster: submitit cluster: ``slurm``, or ``local``/``debug`` to try the SLURM path without one.
        dry_run: with ``--launcher slurm``: write the sbatch scripts under the run root, submit nothing.
        wait: with ``--launcher slurm``: block until the jobs end.
    """
    from lit_nomic.sweeps.launch import SlurmOptions, run_local, submit_slurm
    from lit_nomic.sweeps.runner import RunJob

    spec = _load(sweep, profile)
    paths = SweepPaths.default(spec, run_root, records)
    if isinstance(only, str):
        only = [name.strip() for name in only.split(",") if name.strip()]
    runs = [r for r in spec.runs() if not only or r.name in only or r.group in only]
    if only and not runs:
        raise ValueError(f"--only {only}: no run of {spec.name} has that name or group")
    states = {r.name: run_state(paths, r) for r in runs}
    todo = [r for r in runs if states[r.name] not in ("finished", "running")]
    # Seed-major order: a sweep stopped part-way has every variant at the first seeds, not all seeds
    # of the first variants.
    todo.sort(key=lambda r: spec.seeds.index(r.seed))
    print(f"{spec.name}: {len(runs)} runs, {len(runs) - len(todo)} finished or running, {len(todo)} to run")
    if not todo:
        return 0
    jobs = [RunJob(spec, r, paths) for r in todo]
    if launcher == "local":
        outcomes = run_local(jobs, parallel)
    else:
        defaults = spec.slurm
        options = SlurmOptions(
            nodes=nodes or defaults.get("nodes", 1),
            gpus_per_node=gpus_per_node if gpus_per_node is not None else defaults.get("gpus_per_node", 0),
            partition=partition or defaults.get("partition"),
            time_min=time_min or defaults.get("time_min", 60),
            account=account or defaults.get("account"),
            qos=qos or defaults.get("qos"),
            cpus_per_task=defaults.get("cpus_per_task"),
            mem_gb=defaults.get("mem_gb"),
            constraint=defaults.get("constraint"),
        )
        outcomes = submit_slurm(
            jobs,
            options,
            paths.run_root / "slurm",
            cluster=None if cluster == "slurm" else cluster,
            dry_run=dry_run,
            wait=wait,
        )
    failed = [o for o in outcomes if o.get("status") == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(o["run"] for o in failed), file=sys.stderr)
        return 1
    return 0


def status(
    sweep: str, profile: str | None = None, run_root: str | None = None, records: str | None = None
) -> dict:
    """Each run as finished / running / failed / interrupted / missing, with metrics when finished.

    Args:
        sweep: the sweep YAML.
        profile: a named profile of the sweep file.
        run_root: folder of the run folders (default ``runs/sweeps/<name>``).
        records: folder of the committed records (default ``results/sweeps/<name>``).
    """
    spec = _load(sweep, profile, check=False)
    paths = SweepPaths.default(spec, run_root, records)
    counts: dict[str, int] = {}
    out = {}
    for r in spec.runs():
        state = run_state(paths, r)
        counts[state] = counts.get(state, 0) + 1
        detail = ""
        if state == "finished":
            detail = "  " + _main_scores(paths.record_dir(r))
        elif state == "failed":
            info = read_json(paths.run_dir(r) / "run.json") or {}
            detail = f"  {info.get('error')} (log: {info.get('log')})"
        else:
            info = read_json(paths.run_dir(r) / "run.json") or {}
            if info.get("job_id"):
                detail = f"  job {info['job_id']} ({info.get('cluster')})"
        print(f"{state:<11} {r.name}{detail}")
        out[r.name] = state
    print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return out


def _main_scores(record_dir: Path) -> str:
    from lit_nomic.sweeps.aggregate import column_of

    parts = []
    for path in sorted((record_dir / "eval").rglob("*.json")):
        result = read_json(path) or {}
        if "dataset" in result and result.get("main_score") is not None:
            parts.append(f"{column_of(result)}={100 * float(result['main_score']):.2f}")
    return " ".join(parts)


def table(
    sweep: str,
    profile: str | None = None,
    records: str | None = None,
    output: str | None = None,
    command: str | None = None,
) -> dict[str, str]:
    """Aggregate the finished records into tables and a plot (mean ± std over seeds, p-values).

    Args:
        sweep: the sweep YAML.
        profile: a named profile of the sweep file.
        records: folder of the records (default ``results/sweeps/<name>``).
        output: folder for table.md/.csv/.tex and table.png (default: the records folder).
        command: the command recorded in the outputs (default: this invocation).
    """
    from lit_nomic.sweeps.aggregate import collect, write_outputs

    spec = _load(sweep, profile, check=False)
    paths = SweepPaths.default(spec, None, records)
    result = collect(spec, paths, spec.runs())
    if not result.rows:
        raise ValueError(f"{spec.name}: no finished run records under {paths.records / 'runs'}")
    options = {"profile": profile, "records": records, "output": output}
    cmd = command or " ".join(
        [f"lit-nomic sweep table {sweep}", *(f"--{k} {v}" for k, v in options.items() if v is not None)]
    )
    written = write_outputs(result, Path(output) if output else paths.records, cmd)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    if result.missing:
        print(f"note: {len(result.missing)} planned run(s) not finished: {', '.join(result.missing)}")
    if result.ignored:
        print(
            f"note: {len(result.ignored)} record(s) not in the current plan ignored: {', '.join(result.ignored)}"
        )
    return {k: str(v) for k, v in written.items()}


def main(argv: list[str]) -> int:
    from jsonargparse import CLI

    from lit_nomic.sweeps.spec import SweepError

    commands = {"plan": plan, "run": run, "status": status, "table": table}
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] not in commands:
        print(f"lit-nomic sweep: unknown subcommand {argv[0]!r} (plan, run, status, table)", file=sys.stderr)
        return 2
    try:
        result = CLI(commands[argv[0]], args=argv[1:], prog=f"lit-nomic sweep {argv[0]}", as_positional=True)
    except (SweepError, ValueError, FileNotFoundError) as err:
        print(f"lit-nomic sweep {argv[0]}: error: {err}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
