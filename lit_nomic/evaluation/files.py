"""Line-numbered JSONL reading shared by loaders (and the atomic writers, re-exported)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lit_nomic.fileio import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text", "field_str", "iter_jsonl", "open_text"]


def open_text(path: Path) -> IO[str]:
    """Open plain or ``.gz`` text as UTF-8 (MIRACL ships gzipped corpora)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)``; blank lines are skipped, bad JSON names file and line."""
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def field_str(obj: dict[str, Any], key: str, path: Path, lineno: int, *, required: bool = True) -> str:
    """A string field (ints accepted for ids, as BEIR dumps sometimes carry numeric ids)."""
    if key not in obj or obj[key] is None:
        if required:
            raise ValueError(f"{path}:{lineno}: missing field {key!r}")
        return ""
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{path}:{lineno}: field {key!r} must be a string, got {type(value).__name__}")
    return str(value)
