"""Curation units N at a time: local shard workers, a submitit job array, the SLURM scripts, failures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lit_nomic.curation.common import CurationError
from lit_nomic.curation.launch import launch_workers, submit_slurm_workers, worker_config, write_slurm_scripts
from lit_nomic.sweeps.launch import SlurmOptions


@pytest.fixture(scope="module")
def medquad_pairs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 30 MedQuAD pairs (real text, columns question/answer)."""
    lines = (shared_data / "medquad" / "medquad_qa.jsonl").read_text(encoding="utf-8").splitlines()[:30]
    path = tmp_path_factory.mktemp("medquad") / "medquad30.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _args(minilm_dir: Path, data: Path, out: Path) -> list[str]:
    return ["--model", str(minilm_dir), "--data", str(data), "--output", str(out),
            "--query_column", "question", "--document_column", "answer", "--chunk_size", "10",
            "--search", "torch", "--batch_size", "16"]  # fmt: skip


def _decisions(out: Path) -> tuple[list[str], dict[str, str], dict[str, bytes]]:
    """Kept ids, every pair's rank and the kept-pair shards (scores may differ in the last digit)."""
    ranks = {}
    for tsv in sorted((out / "chunks").rglob("*.ranks.tsv")):
        for line in tsv.read_text(encoding="utf-8").splitlines()[1:]:
            pid, rank, _, _ = line.split("\t")
            ranks[pid] = rank
    shards = {p.name: p.read_bytes() for p in sorted((out / "chunks").rglob("chunk-*.jsonl"))}
    return (out / "kept_ids.txt").read_text().split(), ranks, shards


@pytest.fixture(scope="module")
def single_run(minilm_dir: Path, medquad_pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lit_nomic.cli import main

    out = tmp_path_factory.mktemp("single") / "out"
    main(["filter", *_args(minilm_dir, medquad_pairs, out)])
    return out


def test_local_workers_give_the_single_process_output(
    minilm_dir: Path, medquad_pairs: Path, single_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from lit_nomic.cli import main

    out = tmp_path / "workers"
    main(["filter", *_args(minilm_dir, medquad_pairs, out), "--workers", "2"])
    assert "kept" in capsys.readouterr().out
    assert _decisions(out) == _decisions(single_run)
    report, one = (json.loads((d / "report.json").read_text()) for d in (out, single_run))
    assert report["total"] == one["total"] and report["total"]["pairs"] == 30
    logs = sorted(p.name for p in (out / "workers").glob("*.log"))
    assert logs == ["filter-shard-0-of-2.log", "filter-shard-1-of-2.log"]
    # a second launch finds every unit done and only merges again
    main(["filter", *_args(minilm_dir, medquad_pairs, out), "--workers", "2"])
    assert _decisions(out) == _decisions(single_run)


def test_submitit_job_array_then_merge(
    minilm_dir: Path, medquad_pairs: Path, single_run: Path, tmp_path: Path
) -> None:
    """The SLURM path through submitit's local executor: one array task per shard, then the merge."""
    from lit_nomic.cli import main

    out = tmp_path / "array"
    args = {"model": str(minilm_dir), "data": str(medquad_pairs), "output": str(out), "query_column": "question",
            "document_column": "answer", "chunk_size": 10, "search": "torch", "batch_size": 16}  # fmt: skip
    config = worker_config("filter", {**args, "workers": 3, "launcher": "slurm"})
    assert "workers" not in config.read_text() and "launcher" not in config.read_text()
    assert submit_slurm_workers("filter", config, 3, SlurmOptions(time_min=10), cluster="local") == []
    assert len(list((out / "chunks").rglob("chunk-*.json"))) == 3  # every chunk done by some worker
    main(["filter", "--config", str(config)])  # the merge job's command
    assert _decisions(out) == _decisions(single_run)


def test_slurm_scripts_run_one_shard_per_array_task(tmp_path: Path) -> None:
    config = worker_config("mine", {"model": "m", "data": "beir/scifact", "output": str(tmp_path / "o")})
    options = SlurmOptions(gpus_per_node=8, partition="gpu", account="lab", qos="high", time_min=120)
    array, merge = write_slurm_scripts("mine", config, 4, options)
    a, m = array.read_text(), merge.read_text()
    assert "#SBATCH --array=0-3%4" in a and "#SBATCH --requeue" in a
    assert "#SBATCH --ntasks-per-node=1" in a and "#SBATCH --gpus-per-node=1" in a  # one GPU per worker
    assert "#SBATCH --partition=gpu" in a and "#SBATCH --account=lab" in a and "#SBATCH --qos=high" in a
    assert re.search(
        r"srun .*lit_nomic\.cli mine --config \S+mine\.yaml --shard \"\$\{SLURM_ARRAY_TASK_ID\}/4\"", a
    )
    assert "--array" not in m and "--gpus-per-node" not in m and "--shard" not in m
    assert f"sbatch --dependency=afterok:$(sbatch --parsable {array}) {merge}" in m


def test_failed_worker_names_its_log_and_shard_excludes_workers(tmp_path: Path) -> None:
    args = {
        "model": str(tmp_path / "no-such-model"),
        "data": str(tmp_path / "none.jsonl"),
        "output": str(tmp_path / "o"),
    }
    with pytest.raises(
        CurationError, match=r"worker 0/2 exited with \d+ \(log: .*filter-shard-0-of-2\.log\)"
    ):
        launch_workers("filter", args, 2, "local", None, False, report=lambda s: None)
    assert "error" in (tmp_path / "o" / "workers" / "filter-shard-0-of-2.log").read_text().lower()
    with pytest.raises(CurationError, match="--shard and --workers"):
        launch_workers("filter", {**args, "shard": "0/2"}, 2, "local", None, False)
    with pytest.raises(CurationError, match="--workers must be >= 1"):
        launch_workers("filter", args, 0, "local", None, False)
