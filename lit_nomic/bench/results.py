"""Benchmark result files: one JSON per benchmark, rows plus the machine and command that made them.

A number without the machine and the command line that produced it cannot be checked or
reproduced, so both travel inside every file, and the report prints them beside each table.
Files are written atomically so an interrupted sweep never leaves a truncated file for the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_nomic.bench.timing import Row, machine_info
from lit_nomic.fileio import atomic_write_json

__all__ = ["SCHEMA_VERSION", "BenchResults", "load_results", "write_results"]

SCHEMA_VERSION = 1
_REQUIRED = ("benchmark", "name", "shape", "dtype", "times", "ratios")


@dataclass
class BenchResults:
    """The content of one ``<benchmark>.json``."""

    benchmark: str
    command: str
    rows: list[Row]
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_info)
    reliability: dict[str, Any] | None = None
    """``{"reliable": bool, "why": [...], "load_before": ..., "load_after": ...}``; None in files
    written before the check existed."""

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema_version": SCHEMA_VERSION,
            "benchmark": self.benchmark,
            "command": self.command,
            "machine": self.machine,
            "settings": self.settings,
            "rows": [r.to_dict() for r in self.rows],
        }
        if self.reliability is not None:
            out |= {"reliable": self.reliability["reliable"], "why": self.reliability["why"]}
            out["load"] = {k: v for k, v in self.reliability.items() if k not in ("reliable", "why")}
        return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_numbers(row: Row, where: str) -> None:
    """Refuse NaN/inf before they reach a file: JSON would store them as invalid tokens."""
    for variant, stat in row.times.items():
        for key, value in stat.numbers().items():
            if not _finite(value):
                raise ValueError(f"{where}: times[{variant!r}].{key} is not finite ({value})")
    for variant, metrics in row.metrics.items():
        for key, value in metrics.items():
            if not _finite(value):
                raise ValueError(f"{where}: metrics[{variant!r}][{key!r}] is not finite ({value})")
    for key, value in row.ratios.items():
        if not _finite(value):
            raise ValueError(f"{where}: ratios[{key!r}] is not finite ({value})")


def write_results(path: str | Path, results: BenchResults) -> Path:
    """Validate every number, then write ``path`` atomically."""
    for i, row in enumerate(results.rows):
        _check_numbers(row, f"{results.benchmark} row {i} ({row.name})")
    return atomic_write_json(path, results.to_dict())


def load_results(path: str | Path) -> BenchResults:
    """Read a file written by :func:`write_results`; errors name the file, row and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'benchmark' and 'rows'")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version={version!r}, expected {SCHEMA_VERSION}")
    for key in ("benchmark", "command", "machine", "rows"):
        if key not in data:
            raise ValueError(f"{path}: missing field {key!r}")
    if not isinstance(data["rows"], list):
        raise ValueError(f"{path}: field 'rows' must be a list")
    rows: list[Row] = []
    for i, raw in enumerate(data["rows"]):
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: rows[{i}] must be an object")
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise ValueError(f"{path}: rows[{i}] is missing field(s) {missing}")
        try:
            rows.append(Row.from_dict(raw))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: rows[{i}] ({raw.get('name')!r}) is malformed: {err!r}") from err
    return BenchResults(
        benchmark=str(data["benchmark"]),
        command=str(data["command"]),
        rows=rows,
        settings=dict(data.get("settings") or {}),
        machine=dict(data["machine"]),
        reliability=(
            {
                "reliable": bool(data["reliable"]),
                "why": list(data.get("why") or []),
                **dict(data.get("load") or {}),
            }
            if "reliable" in data
            else None
        ),
    )
