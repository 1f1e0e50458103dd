"""The timing harness every benchmark shares: interleaved repetitions, robust statistics, machine facts.

Why interleave: on a shared 2-core machine the background load drifts over seconds. Timing all
repetitions of A, then all of B, lets that drift land on one variant and shows up as a fake speed-up.
Running A B C A B C ... puts every variant under the same noise, so the *ratio* of medians is stable
even when the absolute times are not, and ratios are what these benchmarks report.

Thread count is deliberately left as the process has it: the numbers describe the machine as users
run it.

Why not ``torch.utils.benchmark.Timer`` (read in torch 2.13): its statistics are ours (``Measurement``
median and IQR are linear-interpolated quantiles, as ``Stat``'s; ``tests/test_bench.py`` checks the
numbers agree), and its timer synchronises the accelerator as ``device_sync`` does, but its sampling
does not do this job:

* a ``Timer`` measures one statement to completion (``blocked_autorange``, ``adaptive_autorange``),
  so variants cannot be interleaved, and the drift described above lands on one of them;
* a ``blocked_autorange`` sample is the mean of a block of calls sized to hide timer overhead, so its
  IQR is the spread of block means, not of single repetitions; ``adaptive_autorange`` repeats until
  IQR/median < 10%, which on a loaded machine means until ``max_run_time``, where we take a fixed
  number of rounds (or a budget) and report the spread;
* warm-up is its block-size search, not a count; there is no CPU-time clock (a custom ``timer``
  would drop the accelerator synchronisation, and ``clock="cpu"`` records both clocks per repetition);
* it sets torch's thread count to ``num_threads`` (default 1) while measuring;
* its only reliability signal is ``Measurement.has_warnings`` (IQR/median >= 10%, our
  ``SPREAD_LIMIT``); :func:`assess_reliability` also flags the machine's load average and thread
  oversubscription, which is what tells a loaded 2-core machine from a noisy kernel.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

__all__ = [
    "CLOCKS",
    "Check",
    "Row",
    "Stat",
    "device_sync",
    "machine_info",
    "time_interleaved",
]


CLOCKS = ("wall", "cpu")


@dataclass(frozen=True)
class Stat:
    """Summary of one variant's repetitions; the median is the headline, min and IQR show the spread.

    ``clock`` says what was measured: ``wall`` (elapsed time) or ``cpu`` (CPU time of this process,
    all its threads). With ``cpu``, ``wall_median_ms`` keeps the elapsed median beside it, so the
    gap between the two shows how much the machine's other load stretched the run.
    """

    median_ms: float
    min_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int
    clock: str = "wall"
    wall_median_ms: float | None = None

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"Stat.clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @classmethod
    def from_samples(
        cls, samples_ms: list[float], clock: str = "wall", wall_ms: list[float] | None = None
    ) -> Stat:
        if not samples_ms:
            raise ValueError("Stat.from_samples needs at least one sample")
        ordered = sorted(samples_ms)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        wall = statistics.median(wall_ms) if wall_ms else None
        return cls(statistics.median(ordered), ordered[0], q1, q3, len(ordered), clock, wall)

    def numbers(self) -> dict[str, float]:
        """The numeric fields (for finiteness checks)."""
        out = {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, float))}
        return out | {"iqr_ms": self.iqr_ms}

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "iqr_ms": self.iqr_ms}
        if self.wall_median_ms is None:
            del out["wall_median_ms"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stat:
        wall = data.get("wall_median_ms")
        return cls(
            float(data["median_ms"]),
            float(data["min_ms"]),
            float(data["q1_ms"]),
            float(data["q3_ms"]),
            int(data["repeats"]),
            str(data.get("clock", "wall")),
            float(wall) if wall is not None else None,
        )


@dataclass(frozen=True)
class Check:
    """A performance target applied to one row: ``ratios[ratio] <op> threshold``."""

    name: str
    ratio: str
    op: str  # "<=" or ">="
    threshold: float
    value: float
    description: str = ""

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise ValueError(f"Check {self.name!r}: op must be '<=' or '>=', got {self.op!r}")

    @property
    def met(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return self.value <= self.threshold if self.op == "<=" else self.value >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        return cls(
            str(data["name"]), str(data["ratio"]), str(data["op"]), float(data["threshold"]), float(data["value"]),
            str(data.get("description", "")),
        )  # fmt: skip


@dataclass
class Row:
    """One benchmark row: a shape, the variants timed side by side on it, and what follows from them.

    ``times`` maps variant -> timing stats; ``metrics`` maps variant -> derived rates (tokens/s,
    FLOP/s, ...); ``ratios`` are named quotients of those, the numbers the targets speak about.
    """

    benchmark: str
    name: str
    shape: dict[str, Any]
    dtype: str
    times: dict[str, Stat] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def ratio(self, name: str, numerator: str, denominator: str, key: str = "median_ms") -> float:
        """Record ``times[numerator] / times[denominator]`` (by ``key``) as ``ratios[name]``."""
        value = getattr(self.times[numerator], key) / getattr(self.times[denominator], key)
        self.ratios[name] = value
        return value

    def check(self, name: str, ratio: str, op: str, threshold: float, description: str = "") -> Check:
        made = Check(name, ratio, op, threshold, self.ratios[ratio], description)
        self.checks.append(made)
        return made

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "name": self.name,
            "shape": dict(self.shape),
            "dtype": self.dtype,
            "times": {k: v.to_dict() for k, v in self.times.items()},
            "metrics": {k: dict(v) for k, v in self.metrics.items()},
            "ratios": dict(self.ratios),
            "checks": [c.to_dict() for c in self.checks],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Row:
        return cls(
            benchmark=str(data["benchmark"]),
            name=str(data["name"]),
            shape=dict(data["shape"]),
            dtype=str(data["dtype"]),
            times={k: Stat.from_dict(v) for k, v in data.get("times", {}).items()},
            metrics={k: {m: float(x) for m, x in v.items()} for k, v in data.get("metrics", {}).items()},
            ratios={k: float(v) for k, v in data.get("ratios", {}).items()},
            checks=[Check.from_dict(c) for c in data.get("checks", [])],
            notes=[str(n) for n in data.get("notes", [])],
        )


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """A barrier that makes a host clock meaningful: CUDA work is asynchronous, CPU work is not."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_interleaved(
    variants: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 1,
    repeats: int = 5,
    max_repeats: int | None = None,
    budget_s: float | None = None,
    sync: Callable[[], None] = lambda: None,
    clock: str = "wall",
) -> dict[str, Stat]:
    """Time each variant ``repeats`` times, interleaved A B C A B C, after ``warmup`` interleaved rounds.

    With ``budget_s`` and ``max_repeats``, fast rows get more repetitions: the number of rounds is
    the budget over the slowest warm-up round, clamped to [repeats, max_repeats]. The warm-up
    rounds also absorb one-off costs (allocator growth, oneDNN primitive creation, lazy imports).

    ``clock="cpu"`` measures this process's CPU time instead of elapsed time: on a machine shared
    with other jobs, time spent descheduled then does not count, which with one torch thread makes
    the numbers nearly independent of the other load. It means nothing for GPU work (the host
    waits), and with several threads it also counts threads spinning at barriers.
    """
    if not variants:
        raise ValueError("time_interleaved needs at least one variant")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")

    def one(fn: Callable[[], object]) -> tuple[float, float]:
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3

    round_ms = 0.0
    for _ in range(warmup):
        round_ms = sum(one(fn)[0] for fn in variants.values())
    rounds = repeats
    if budget_s is not None and max_repeats is not None and warmup > 0 and round_ms > 0:
        rounds = max(repeats, min(max_repeats, int(budget_s * 1e3 / round_ms)))
    wall_ms: dict[str, list[float]] = {name: [] for name in variants}
    cpu_ms: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            w, c = one(fn)
            wall_ms[name].append(w)
            cpu_ms[name].append(c)
    if clock == "cpu":
        return {name: Stat.from_samples(cpu_ms[name], "cpu", wall_ms[name]) for name in variants}
    return {name: Stat.from_samples(wall_ms[name]) for name in variants}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge a number: CPU, cores, threads, versions, GPU if any."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": None,
        "cuda_device": None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


# ----------------------------------------------------------------------------- trustworthiness
SPREAD_LIMIT = 0.10
"""A variant whose IQR exceeds this fraction of its median is too noisy to rank against another."""


def machine_load() -> dict[str, Any]:
    """Load average (1 min), usable cores and torch's thread counts, read now."""
    try:
        load1 = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Unix
        load1 = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "loadavg_1min": load1,
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }


def assess_reliability(
    times: Mapping[str, Mapping[str, Stat]],
    load_before: Mapping[str, Any] | None,
    load_after: Mapping[str, Any] | None,
    spread_limit: float = SPREAD_LIMIT,
) -> dict[str, Any]:
    """``{"reliable": bool, "why": [...]}`` for a set of measurements (``times[row][variant]``).

    Flags (each one line in ``why``): a variant whose spread across repetitions (IQR / median) is
    above ``spread_limit``; other load on the machine (1-minute load average before the run, or after
    it less this process's own threads, above the usable cores minus those threads); thread
    oversubscription (torch threads above the usable cores). CUDA timings are flagged by spread
    only: the GPU is not what the load average counts.
    """
    why: list[str] = []
    for row, stats in times.items():
        for variant, stat in stats.items():
            if stat.median_ms > 0 and stat.iqr_ms / stat.median_ms > spread_limit:
                why.append(
                    f"{row} / {variant}: spread {100 * stat.iqr_ms / stat.median_ms:.0f}% of the median "
                    f"(IQR {stat.iqr_ms:.3g} ms over {stat.repeats} repetitions) > {100 * spread_limit:.0f}%"
                )
    for when, load in (("before", load_before), ("after", load_after)):
        if not load:
            continue
        cores, threads = int(load.get("usable_cores") or 1), int(load.get("torch_threads") or 1)
        if threads > cores:
            why.append(f"thread oversubscription: {threads} torch threads on {cores} usable cores")
        load1 = load.get("loadavg_1min")
        # The 1-minute average read just after a run still counts the run's own threads.
        own = threads if when == "after" else 0
        if load1 is not None and load1 - own > max(cores - threads, 0) + 0.5:
            why.append(
                f"machine load {load1:.2f} {when} the run on {cores} usable cores "
                f"({threads} torch thread(s) of ours): other work competed for the cores"
            )
    return {"reliable": not why, "why": list(dict.fromkeys(why))}
