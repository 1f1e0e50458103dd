"""Benchmarks: the harness's statistics and interleaving, the quick sweeps end to end, the report.

No timed assertions: the tests check structure, finiteness and the relations that must hold
whatever the machine (ratios equal quotients of the recorded times, FLOP/s equal FLOPs over time,
ours embeds like sentence-transformers).
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_nomic.bench.cli import main
from lit_nomic.bench.moe import MoEShape, default_sweep, grid_sweep, quick_sweep
from lit_nomic.bench.report import render_report, result_files, write_report
from lit_nomic.bench.results import BenchResults, load_results, write_results
from lit_nomic.bench.timing import Check, Row, Stat, machine_info, time_interleaved
from lit_nomic.bench.train import measure_matmul_peak


# ----------------------------------------------------------------------------- harness
def test_stat_from_samples_median_min_quartiles() -> None:
    stat = Stat.from_samples([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (stat.median_ms, stat.min_ms, stat.q1_ms, stat.q3_ms, stat.repeats) == (3.0, 1.0, 2.0, 4.0, 5)
    assert stat.iqr_ms == 2.0
    single = Stat.from_samples([7.5])
    assert single.median_ms == single.q1_ms == single.q3_ms == 7.5 and single.iqr_ms == 0.0
    assert Stat.from_dict(stat.to_dict()) == stat
    with pytest.raises(ValueError, match="at least one sample"):
        Stat.from_samples([])


def test_stat_agrees_with_torch_benchmark_measurement() -> None:
    """The statistics are torch.utils.benchmark's; the sampling is what timing.py keeps (its docstring)."""
    from torch.utils.benchmark.utils.common import Measurement, TaskSpec

    noisy = [float(x) for x in torch.rand(11, generator=torch.Generator().manual_seed(3)) * 10 + 1]
    for samples_ms, flagged in ((noisy, True), ([10.0, 10.1, 10.2, 10.05, 10.15, 10.3], False)):
        stat = Stat.from_samples(samples_ms)
        theirs = Measurement(1, [ms / 1e3 for ms in samples_ms], TaskSpec("pass", "pass"))
        assert stat.median_ms == pytest.approx(theirs.median * 1e3, rel=1e-12)
        assert stat.iqr_ms == pytest.approx(theirs.iqr * 1e3, rel=1e-12)
        assert theirs.has_warnings == flagged == (stat.iqr_ms / stat.median_ms >= 0.10)


def test_time_interleaved_runs_variants_alternately() -> None:
    calls: list[str] = []
    variants = {name: (lambda n=name: calls.append(n)) for name in "ABC"}
    stats = time_interleaved(variants, warmup=2, repeats=3)
    assert calls == list("ABC") * 5  # 2 warm-up rounds, then 3 timed rounds, never A A A
    assert set(stats) == {"A", "B", "C"}
    assert all(s.repeats == 3 and s.median_ms >= 0 for s in stats.values())


def test_time_interleaved_budget_adds_rounds_up_to_the_cap() -> None:
    calls: list[str] = []
    stats = time_interleaved(
        {"A": lambda: calls.append("A")}, warmup=1, repeats=2, max_repeats=7, budget_s=60.0
    )
    assert stats["A"].repeats == 7 and len(calls) == 8
    with pytest.raises(ValueError, match="at least one variant"):
        time_interleaved({})
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_interleaved({"A": lambda: None}, repeats=0)


def test_cpu_clock_ignores_time_spent_off_cpu() -> None:
    stats = time_interleaved({"sleep": lambda: time.sleep(0.02)}, warmup=0, repeats=3, clock="cpu")
    stat = stats["sleep"]
    assert stat.clock == "cpu" and stat.wall_median_ms is not None
    assert stat.wall_median_ms >= 20.0 and stat.median_ms < 10.0  # sleeping is elapsed time, not CPU time
    assert Stat.from_dict(json.loads(json.dumps(stat.to_dict()))) == stat
    with pytest.raises(ValueError, match="clock must be one of wall, cpu"):
        time_interleaved({"A": lambda: None}, clock="gpu")


def test_row_ratio_and_checks() -> None:
    row = Row("moe", "r", {"tokens": 4}, "fp32")
    row.times = {"ours": Stat.from_samples([2.0]), "dense": Stat.from_samples([1.0])}
    assert row.ratio("grouped_over_dense", "ours", "dense") == 2.0
    assert not row.check("c", "grouped_over_dense", "<=", 1.1).met
    assert row.check("d", "grouped_over_dense", ">=", 1.5).met
    assert not Check("nan", "x", "<=", 1.0, float("nan")).met
    with pytest.raises(ValueError, match="op must be"):
        Check("bad", "x", "<", 1.0, 0.5)
    assert Row.from_dict(json.loads(json.dumps(row.to_dict()))).to_dict() == row.to_dict()


def test_machine_info_describes_this_process() -> None:
    info = machine_info()
    assert info["torch"] == torch.__version__
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["cpu"] and info["usable_cores"] >= 1
    assert (info["cuda_device"] is None) == (not torch.cuda.is_available())


def test_results_roundtrip_and_validation(tmp_path: Path) -> None:
    row = Row("moe", "r", {"tokens": 4}, "fp32", times={"ours": Stat.from_samples([1.0, 2.0])})
    row.ratios["x"] = 1.0
    path = write_results(tmp_path / "moe.json", BenchResults("moe", "python -m lit_nomic.bench moe", [row]))
    loaded = load_results(path)
    assert loaded.rows[0].to_dict() == row.to_dict() and loaded.command.endswith("moe")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary behind

    row.ratios["x"] = float("inf")
    with pytest.raises(ValueError, match=r"row 0 \(r\): ratios\['x'\] is not finite"):
        write_results(tmp_path / "bad.json", BenchResults("moe", "cmd", [row]))
    data = json.loads(path.read_text())
    del data["rows"][0]["dtype"]
    (tmp_path / "broken.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"broken\.json: rows\[0\] is missing field\(s\) \['dtype'\]"):
        load_results(tmp_path / "broken.json")
    (tmp_path / "garbage.json").write_text("{\n  nope")
    with pytest.raises(ValueError, match=r"garbage\.json: invalid JSON at line 2"):
        load_results(tmp_path / "garbage.json")


# ----------------------------------------------------------------------------- sweeps
def test_moe_shape_active_width_and_validation() -> None:
    fine = MoEShape(4096, 768, 3072, 64, 8, ffn_div=8)
    assert fine.expert_ffn == 384 and fine.active_ffn == 3072  # fine-grained 64x8 keeps the dense FLOPs
    assert fine.active_flops_forward == 4 * 4096 * 768 * 3072
    assert MoEShape(16, 8, 32, 4, 2, num_shared_experts=1).active_ffn == 3 * 32
    config = fine.config()
    assert (config.expert_ffn, config.num_experts, config.top_k, config.moe_layer_indices) == (
        384,
        64,
        8,
        [0],
    )
    with pytest.raises(ValueError, match="top_k=9 exceeds num_experts=8"):
        MoEShape(16, 8, 32, 8, 9)
    with pytest.raises(ValueError, match="dtype='fp8'"):
        MoEShape(16, 8, 32, 8, 2, dtype="fp8")


def test_default_sweep_covers_the_issue_grid() -> None:
    shapes = default_sweep()
    assert {s.tokens for s in shapes} >= {512, 8192}
    assert {s.num_experts for s in shapes} >= {8, 64} and {s.top_k for s in shapes} >= {1, 8}
    assert {(s.hidden, s.ffn) for s in shapes} == {(384, 1536), (768, 3072)}
    assert any(s.num_experts == 64 and s.top_k == 8 and s.ffn_div == 8 for s in shapes)
    assert all(s.dtype == "fp32" for s in shapes)
    assert [s for s in default_sweep("small") if s.dtype == "bf16"] and len(default_sweep("all")) == 2 * len(
        shapes
    )
    grid = grid_sweep([64, 128], 32, 64, [2, 4], [1, 4])
    assert len(grid) == 2 * 3  # (E=2, k=4) is skipped


# ----------------------------------------------------------------------------- quick runs
def _positive_finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def moe_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    assert main(["moe", "--quick", "--device", "cpu", "--threads", "1", "--output", str(out)]) == 0
    return out / "moe.json"


def test_moe_quick_writes_documented_keys(moe_json: Path) -> None:
    data = json.loads(moe_json.read_text())
    assert isinstance(data["reliable"], bool) and isinstance(data["why"], list)
    assert {"load_before", "load_after"} <= set(data["load"])
    assert data["load"]["load_after"]["torch_threads"] == 1
    assert data["benchmark"] == "moe" and data["command"].startswith("python -m lit_nomic.bench moe --quick")
    assert data["machine"]["torch"] == torch.__version__
    assert len(data["rows"]) == len(quick_sweep())
    for row in data["rows"]:
        assert {"tokens", "hidden", "expert_ffn", "active_ffn", "num_experts", "top_k"} <= set(row["shape"])
        assert row["dtype"] == "fp32"
        assert {"ours", "dense", "loop"} <= set(row["times"])
        for stat in row["times"].values():
            assert all(_positive_finite(stat[k]) for k in ("median_ms", "min_ms", "q1_ms", "q3_ms"))
            assert stat["min_ms"] <= stat["median_ms"]
        times = {k: v["median_ms"] for k, v in row["times"].items()}
        assert row["ratios"]["grouped_over_dense"] == pytest.approx(times["ours"] / times["dense"])
        assert row["ratios"]["loop_over_grouped"] == pytest.approx(times["loop"] / times["ours"])
        assert row["ratios"]["linear_loop_over_grouped"] == pytest.approx(
            times["linear_loop"] / times["ours"]
        )
        flops = 3 * 4 * row["shape"]["tokens"] * row["shape"]["hidden"] * row["shape"]["active_ffn"]
        for variant, metrics in row["metrics"].items():
            assert all(_positive_finite(v) for v in metrics.values())
            assert metrics["flops_per_s"] == pytest.approx(flops / (times[variant] / 1e3))
        assert row["metrics"]["ours"]["max_over_mean_expert_load"] >= 1.0
        assert {"not_slower_than_loop", "not_slower_than_linear_loop"} <= {c["name"] for c in row["checks"]}
        if not torch.cuda.is_available():
            assert any("megablocks: skipped" in n for n in row["notes"])
            assert any("cuda_grouped_mm: skipped" in n for n in row["notes"])


@pytest.fixture(scope="module")
def train_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    assert (
        main(
            ["train", "--quick", "--device", "cpu", "--threads", "1", "--clock", "cpu", "--output", str(out)]
        )
        == 0
    )
    return out / "train.json"


def test_train_quick_reports_throughput_and_mfu(train_json: Path) -> None:
    data = json.loads(train_json.read_text())
    assert data["settings"]["peak_flops_per_s"] > 0 and data["settings"]["clock"] == "cpu"
    assert [r["shape"]["preset"] for r in data["rows"]] == ["tiny-dense", "tiny-moe"]
    for row in data["rows"]:
        assert set(row["times"]) == {"plain", "checkpointing"}
        assert all(t["clock"] == "cpu" and t["wall_median_ms"] > 0 for t in row["times"].values())
        shape = row["shape"]
        assert shape["tokens_per_step"] == shape["batch"] * (shape["query_len"] + shape["doc_len"])
        for variant, m in row["metrics"].items():
            assert all(_positive_finite(v) for v in m.values())
            seconds = row["times"][variant]["median_ms"] / 1e3
            assert m["tokens_per_s"] == pytest.approx(shape["tokens_per_step"] / seconds)
            assert m["mfu"] == pytest.approx(
                shape["model_flops_per_step"] / seconds / data["settings"]["peak_flops_per_s"]
            )
        assert _positive_finite(row["ratios"]["checkpointing_time_over_plain"])


def test_matmul_peak_is_positive() -> None:
    peak = measure_matmul_peak(n=64, repeats=2)
    assert peak["peak_flops_per_s"] >= peak["median_flops_per_s"] > 0


@pytest.fixture(scope="module")
def encoder_json(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, minilm_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("bench")
    argv = [
        "encoder",
        "--quick",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--data-root",
        str(shared_data),
        "--model",
        str(minilm_dir),
    ]
    assert main([*argv, "--output", str(out)]) == 0
    return out / "encoder.json"


@pytest.mark.data
def test_encoder_quick_matches_sentence_transformers(encoder_json: Path) -> None:
    data = json.loads(encoder_json.read_text())
    (row,) = data["rows"]
    assert row["shape"]["texts"] == 8 and row["shape"]["max_length"] == 128 and row["shape"]["tokens"] > 8
    assert set(row["times"]) == {"ours", "sentence_transformers", "ours_moe"}
    for m in row["metrics"].values():
        assert all(_positive_finite(v) for v in m.values())
    # Same weights, same texts: the ratio compares like with like only if the embeddings agree.
    assert row["metrics"]["ours"]["min_cosine_vs_sentence_transformers"] > 0.9999
    # Upcycled with identical experts and renormalised top-2 weights, the MoE model embeds as the dense one.
    assert row["metrics"]["ours_moe"]["min_cosine_vs_dense"] > 0.9999
    times = {k: v["median_ms"] for k, v in row["times"].items()}
    assert row["ratios"]["ours_over_sentence_transformers"] == pytest.approx(
        times["sentence_transformers"] / times["ours"]
    )
    assert row["checks"][0]["name"] == "encode_speedup"


# ----------------------------------------------------------------------------- report
def test_report_renders_from_the_quick_runs(moe_json: Path, train_json: Path, tmp_path: Path) -> None:
    for src in (moe_json, train_json):
        (tmp_path / src.name).write_text(src.read_text())
    out = write_report(tmp_path, tmp_path / "benchmarks.md")
    text = out.read_text()
    assert (
        text.startswith("# Benchmarks") and "Regenerate this file: `python -m lit_nomic.bench report" in text
    )
    assert "Command: `python -m lit_nomic.bench moe --quick --device cpu --threads 1 --output" in text
    assert "| shape | ours ms | dense ms | loop ms | linear_loop ms |" in text
    assert "allocator: default" in text and "clock: wall" in text and "torch threads: 1" in text
    assert "Reliability: no flag" in text or "**Unreliable measurements**" in text
    assert "| shape | params (active) | step ms |" in text
    assert "ours never slower than the per-expert loop" in text and "Measured peak:" in text
    for row in load_results(moe_json).rows:
        assert row.name in text
    with pytest.raises(FileNotFoundError, match="no benchmark results"):
        write_report(tmp_path / "empty", tmp_path / "x.md")


@pytest.mark.data
def test_report_includes_encoder_table(encoder_json: Path) -> None:
    text = render_report([load_results(encoder_json)])
    assert "| setting | ours docs/s | ST docs/s | MoE docs/s |" in text
    assert "ours >= 1.5x sentence-transformers encode throughput" in text


def test_cli_help_lists_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("moe", "encoder", "train", "report", "profile"))


_FAULTS_SCRIPT = """
import resource, sys, torch
from lit_nomic.bench.allocator import tune_glibc_malloc

def faults_per_alloc():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        a = torch.empty(64 * 2**20 // 4)  # 64 MiB: above glibc's 32 MiB dynamic mmap cap
        a.fill_(1.0)
        del a
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5

faults_per_alloc()
plain = faults_per_alloc()
assert tune_glibc_malloc()
faults_per_alloc()  # the first tuned allocations grow the heap (and fault) until it holds one block
faults_per_alloc()
print(plain, faults_per_alloc())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc mallopt only")
def test_tune_malloc_stops_page_faults_on_large_tensors() -> None:
    # In a child process: the tuning is process-wide and must not leak into the test session.
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, check=True)
    plain, tuned = map(float, out.stdout.split())
    assert plain > 10_000  # one fault per 4 KiB page of the fresh mmap: 16,384 pages
    assert tuned < plain / 10


def test_tagged_runs_are_kept_side_by_side(moe_json: Path, tmp_path: Path) -> None:
    (tmp_path / "moe.json").write_text(moe_json.read_text())
    assert main(["moe", "--tokens", "64", "--hidden", "32", "--ffn", "64", "--experts", "4", "--threads", "1",
                 "--repeats", "1", "--max-repeats", "1", "--warmup", "0", "--device", "cpu",
                 "--tag", "tuned", "--tune-malloc", "--output", str(tmp_path)]) == 0  # fmt: skip
    assert [p.name for p in result_files(tmp_path, "moe")] == ["moe.json", "moe-tuned.json"]
    tagged = load_results(tmp_path / "moe-tuned.json")
    assert tagged.settings["malloc_tuned"] is True and [r.name for r in tagged.rows] == [
        "custom T=64 D=32 F=64 E=4 k=2 fp32"
    ]
    text = write_report(tmp_path, tmp_path / "b.md").read_text()
    assert text.count("## MoE layer") == 2 and "## MoE layer, forward + backward [tuned]" in text
    assert "glibc malloc tuned" in text and tagged.settings["tag"] == "tuned"
    # Whether the target is met depends on timing, which tests never assert: only that it is reported.
    assert "| ours never slower than the per-expert loop | moe [tuned] | " in text
    with pytest.raises(SystemExit, match="--tag"):
        main(["moe", "--quick", "--tag", "a/b", "--output", str(tmp_path)])


# ----------------------------------------------------------------------------- fair baseline, trust
def test_linear_loop_baseline_computes_the_same_layer() -> None:
    from lit_nomic.bench.moe import LinearLoopMoE
    from lit_nomic.model.moe import MoEFeedForward

    shape = MoEShape(24, 32, 64, 4, 2)
    torch.manual_seed(0)
    ours = MoEFeedForward(shape.config("torch").replace(expert_bias=True)).eval()
    baseline = LinearLoopMoE(ours).eval()
    assert len(baseline.fc1) == 4 and isinstance(baseline.fc1[0], torch.nn.Linear)
    x = torch.randn(24, 32)
    torch.testing.assert_close(baseline(x), ours(x).y, rtol=1e-5, atol=1e-5)
    baseline(x).sum().backward()  # per-expert parameters get their own gradients, no [E, D, F] buffer
    assert baseline.fc1[0].weight.grad.shape == (64 // 1, 32)


def _stat(median: float, iqr: float) -> Stat:
    return Stat(median, median - iqr, median - iqr / 2, median + iqr / 2, 5)


def test_reliability_flags_spread_load_and_oversubscription() -> None:
    from lit_nomic.bench.timing import assess_reliability

    quiet = {"loadavg_1min": 0.2, "usable_cores": 2, "torch_threads": 1}
    good = {"row": {"ours": _stat(10.0, 0.5), "dense": _stat(8.0, 0.4)}}
    assert assess_reliability(good, quiet, quiet) == {"reliable": True, "why": []}
    noisy = {"row": {"ours": _stat(10.0, 3.0), "dense": _stat(8.0, 0.4)}}
    verdict = assess_reliability(noisy, quiet, quiet)
    assert not verdict["reliable"] and verdict["why"] == [
        "row / ours: spread 30% of the median (IQR 3 ms over 5 repetitions) > 10%"
    ]
    busy = {"loadavg_1min": 3.0, "usable_cores": 2, "torch_threads": 1}  # ours + 2 others on 2 cores
    why = assess_reliability(good, quiet, busy)["why"]
    assert why == [
        "machine load 3.00 after the run on 2 usable cores (1 torch thread(s) of ours): other work competed for the cores"
    ]
    # Just after a run the 1-minute average still counts the run itself: 2 threads of ours on 2
    # cores read ~2.0 afterwards on an otherwise idle machine, which is no competing load ...
    alone = {"loadavg_1min": 2.02, "usable_cores": 2, "torch_threads": 2}
    assert assess_reliability(good, quiet | {"torch_threads": 2}, alone)["reliable"]
    # ... while the same reading before the run is other work
    assert not assess_reliability(good, alone, None)["reliable"]
    over = {"loadavg_1min": 0.0, "usable_cores": 2, "torch_threads": 8}
    assert any(
        "oversubscription: 8 torch threads on 2 usable cores" in w
        for w in assess_reliability(good, over, None)["why"]
    )


def test_cli_reports_unreliable_runs_with_a_fake_timer_and_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A jittery clock and a loaded machine (both faked) must reach the JSON, the printout and the report."""
    import itertools

    from lit_nomic.bench import timing

    ticks = itertools.count()
    jitter = itertools.cycle([1.0, 1.0, 3.0, 1.0, 5.0])
    clock = {"t": 0.0}

    def fake_counter() -> float:  # every call advances by an uneven step: a noisy measurement
        next(ticks)
        clock["t"] += next(jitter) / 1e3
        return clock["t"]

    monkeypatch.setattr(timing.time, "perf_counter", fake_counter)
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (7.5, 7.0, 6.0))
    assert main(["moe", "--quick", "--device", "cpu", "--threads", "1", "--output", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "moe.json").read_text())
    assert data["reliable"] is False
    assert any(w.startswith("machine load 7.50 before the run") for w in data["why"])
    assert any("spread" in w for w in data["why"])
    printed = capsys.readouterr().out
    assert (
        "UNRELIABLE measurements (reliable: false):" in printed
        and "threads: 1, clock: wall, allocator: default" in printed
    )
    text = render_report([load_results(tmp_path / "moe.json")])
    assert "**Unreliable measurements**:" in text and "- machine load 7.50 before the run" in text
