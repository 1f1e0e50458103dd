"""Atomic writes and line-numbered JSONL reading shared by loaders and writers.

Evaluation runs are long and get interrupted; a half-written result or cache file that later
parses (or fails to parse) would silently corrupt tables, so every writer goes through a temporary
file in the target folder followed by ``os.replace``.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temp file beside ``path`` and move it into place; never leaves partials."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and caches are meant to be shared
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


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
