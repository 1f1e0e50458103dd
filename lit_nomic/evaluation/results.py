"""Result files: one JSON per evaluation setting.

A result's identity is every setting that can change its score: the fields in
:data:`IDENTITY_FIELDS` (model name and hash, dataset, task type, split, language, Matryoshka dim,
query/document prefixes or the symmetric-task prefix, the token limit ``max_length``) plus the
``settings`` object (retrieval: search backend, ``top_k``, ``ignore_identical_ids``, subsampling).
``result_id`` is a short hash of exactly these, and it is part of the file name, so two settings
never overwrite each other while an identical re-run replaces its own file.

Each file carries enough provenance (library versions, git commit, date) for a number in a paper
table to be traced back to the exact weights and code that produced it, and retrieval results keep
per-query metrics (``per_query[query_id][metric]``) for significance tests across runs. Files are
written atomically and validated on load, so a table never mixes in a truncated or hand-edited
file unnoticed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lit_nomic
from lit_nomic.data.formats import read_text
from lit_nomic.fileio import atomic_write_json

# 2: max_length, settings, result_id (in the file name) and per_query; version-1 files still load
SCHEMA_VERSION = 2
IDENTITY_FIELDS: tuple[str, ...] = (
    "model_name",
    "model_hash",
    "dataset",
    "task_type",
    "split",
    "language",
    "matryoshka_dim",
    "query_prefix",
    "document_prefix",
    "prefix",
    "max_length",
    "settings",
)
TASK_TYPES = ("retrieval", "sts", "bitext")
MAIN_METRIC = {"retrieval": "ndcg@10", "sts": "spearman", "bitext": "f1"}
# correlations live in [-1, 1]; every other metric is a rate in [0, 1]
_SIGNED_METRICS = frozenset({"spearman", "pearson"})
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "model_name": str,
    "model_hash": str,
    "dataset": str,
    "task_type": str,
    "split": str,
    "language": (str, type(None)),
    "matryoshka_dim": (int, type(None)),
    "main_metric": str,
    "metrics": dict,
    "date": str,
}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "sentence_transformers": _version("sentence-transformers"),
        "lit_nomic": lit_nomic.__version__,
        "mteb": _version("mteb"),
    }


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """HEAD of the checkout holding ``path`` (default: the lit_nomic sources), ``+dirty`` if modified."""
    where = Path(path) if path is not None else Path(lit_nomic.__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not re.fullmatch(r"[0-9a-f]{40}", head):
        return None
    return head + ("+dirty" if dirty else "")


def validate_metrics(metrics: Mapping[str, Any], where: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: metric {key!r} must be a finite number, got {value!r}")
        low = -1.0 if key in _SIGNED_METRICS else 0.0
        if not low - 1e-9 <= value <= 1.0 + 1e-9:
            raise ValueError(
                f"{where}: metric {key!r}={value} outside [{low:g}, 1] (store fractions, not percentages)"
            )
        out[key] = float(value)
    return out


def result_identity(result: Mapping[str, Any]) -> dict[str, Any]:
    """The identity fields of a result (absent ones, in version-1 files, as None / ``{}``)."""
    identity = {key: result.get(key) for key in IDENTITY_FIELDS}
    identity["settings"] = dict(result.get("settings") or {})
    return identity


def compute_result_id(result: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of :func:`result_identity`."""
    payload = json.dumps(result_identity(result), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def _check_settings(settings: Any, where: str) -> dict[str, Any]:
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: field 'settings' must be an object, got {type(settings).__name__}")
    for key, value in settings.items():
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise ValueError(f"{where}: settings[{key!r}] must be a string, number, bool or null")
    return settings


def _check_per_query(per_query: Any, where: str) -> None:
    if not isinstance(per_query, dict):
        raise ValueError(f"{where}: field 'per_query' must be an object of query id -> metrics")
    for qid, row in per_query.items():
        if not isinstance(row, dict):
            raise ValueError(f"{where}: per_query[{qid!r}] must be an object of metric -> value")
        validate_metrics(row, f"{where}: per_query[{qid!r}]")


def build_result(
    *,
    model_name: str,
    model_hash: str,
    dataset: str,
    task_type: str,
    split: str,
    language: str | None,
    metrics: Mapping[str, float],
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    prefix: str | None = None,
    matryoshka_dim: int | None = None,
    max_length: int | None = None,
    settings: Mapping[str, Any] | None = None,
    per_query: Mapping[str, Mapping[str, float]] | None = None,
    excluded_queries: Mapping[str, Any] | None = None,
    eval_time_s: float | None = None,
    counts: Mapping[str, int] | None = None,
    timings: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble (and validate) one result record; ``prefix`` is for symmetric tasks (STS/bitext).

    ``settings`` holds further score-changing options (part of the identity); ``per_query`` the
    per-query metrics of a retrieval run; ``excluded_queries`` why queries were left out, e.g.
    ``{"no_positive_qrels": [ids]}``.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    where = f"result {model_name}/{dataset}/{split}/{language}"
    main = MAIN_METRIC[task_type]
    checked = validate_metrics(metrics, where)
    if main not in checked:
        raise ValueError(f"{where}: main metric {main!r} missing from metrics {sorted(checked)}")
    if per_query is not None:
        _check_per_query({q: dict(row) for q, row in per_query.items()}, where)
    result = {
        "schema_version": SCHEMA_VERSION,
        "model_name": model_name,
        "model_hash": model_hash,
        "dataset": dataset,
        "task_type": task_type,
        "split": split,
        "language": language,
        "query_prefix": query_prefix,
        "document_prefix": document_prefix,
        "prefix": prefix,
        "matryoshka_dim": matryoshka_dim,
        "max_length": max_length,
        "settings": _check_settings(dict(settings or {}), where),
        "main_metric": main,
        "main_score": checked[main],
        "metrics": checked,
        "eval_time_s": eval_time_s,
        "counts": dict(counts or {}),
        "timings": dict(timings or {}),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "extra": dict(extra or {}),
        "excluded_queries": {k: list(v) for k, v in (excluded_queries or {}).items()},
        "per_query": None if per_query is None else {q: dict(row) for q, row in per_query.items()},
    }
    result["result_id"] = compute_result_id(result)
    return result


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("_") or "x"


def result_path(output_dir: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """``<out>/<model>-<hash>/<dataset>/<split>[_<lang>][_d<dim>]-<result_id>.json``.

    The readable parts are for browsing; ``result_id`` makes the name unique per identity (prefixes,
    max length, search settings ...), so only an identical re-run replaces a file.
    """
    parts = [_slug(result["split"])]
    if result.get("language"):
        parts.append(_slug(str(result["language"])))
    if result.get("matryoshka_dim") is not None:
        parts.append(f"d{int(result['matryoshka_dim'])}")
    model_dir = f"{_slug(result['model_name'])}-{result['model_hash'][:12]}"
    name = "_".join(parts) + f"-{compute_result_id(result)}.json"
    return Path(output_dir) / model_dir / _slug(result["dataset"]) / name


def write_result(output_dir: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """Write atomically to :func:`result_path`; ``result_id`` is recomputed from the fields."""
    record = {k: v for k, v in result.items() if k != "_path"}
    if record.get("schema_version", SCHEMA_VERSION) >= 2:
        record["result_id"] = compute_result_id(record)
    validate_result(record, "result to write")
    return atomic_write_json(result_path(output_dir, record), record)


def validate_result(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object")
    for key, typ in REQUIRED_FIELDS.items():
        if key not in obj:
            raise ValueError(f"{where}: missing field {key!r}")
        if isinstance(obj[key], bool) or not isinstance(obj[key], typ):
            raise ValueError(f"{where}: field {key!r} has type {type(obj[key]).__name__}")
    if obj["schema_version"] > SCHEMA_VERSION:
        raise ValueError(
            f"{where}: schema_version {obj['schema_version']} is newer than supported {SCHEMA_VERSION}"
        )
    if obj["task_type"] not in TASK_TYPES:
        raise ValueError(f"{where}: field 'task_type' must be one of {TASK_TYPES}, got {obj['task_type']!r}")
    validate_metrics(obj["metrics"], where)
    if obj["main_metric"] not in obj["metrics"]:
        raise ValueError(f"{where}: main_metric {obj['main_metric']!r} not in metrics")
    if obj["schema_version"] >= 2:
        for key, typ in (("result_id", str), ("max_length", (int, type(None))), ("settings", dict)):
            if key not in obj:
                raise ValueError(f"{where}: missing field {key!r}")
            if isinstance(obj[key], bool) or not isinstance(obj[key], typ):
                raise ValueError(f"{where}: field {key!r} has type {type(obj[key]).__name__}")
        _check_settings(obj["settings"], where)
        if obj.get("per_query") is not None:
            _check_per_query(obj["per_query"], where)
        expected = compute_result_id(obj)
        if obj["result_id"] != expected:
            raise ValueError(
                f"{where}: result_id {obj['result_id']!r} does not match its identity fields "
                f"(expected {expected!r}); was the file edited by hand?"
            )
    return obj


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one result; version-1 files get the identity fields they lack filled in."""
    p = Path(path)
    try:
        obj = json.loads(read_text(p))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    except OSError as e:
        raise ValueError(f"{p}: cannot read ({e.strerror or e})") from None
    result = validate_result(obj, str(p))
    result.setdefault("max_length", None)
    result.setdefault("settings", {})
    result.setdefault("result_id", compute_result_id(result))
    result["_path"] = str(p)
    return result


def load_results(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Every result JSON below ``folder`` (recursively), in path order; tmp/hidden files skipped."""
    base = Path(folder)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: results folder does not exist")
    paths = sorted(p for p in base.rglob("*.json") if not p.name.startswith(".") and p.is_file())
    return [load_result(p) for p in paths]
