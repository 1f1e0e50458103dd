"""Line-numbered text and JSONL reading shared by loaders (and the atomic writers, re-exported).

Every reader goes through :func:`iter_lines` or :func:`read_text`, so bad bytes never surface as a
bare ``UnicodeDecodeError`` or a truncated ``.gz`` as a bare ``EOFError``: the error names the file
and the line. A UTF-8 byte-order mark is accepted, as the training readers accept it.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lit_nomic.fileio import atomic_write, atomic_write_json, atomic_write_text

__all__ = [
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "field_str",
    "iter_jsonl",
    "iter_lines",
    "read_text",
]

_BOM = "\ufeff"


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}:{lineno}: invalid UTF-8 (byte {raw[e.start : e.start + 1]!r} at column {e.start + 1})"
        ) from None


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of plain or ``.gz`` UTF-8 text, line endings kept.

    A leading BOM is dropped; invalid UTF-8 and a truncated or corrupt ``.gz`` raise ``ValueError``
    naming the file and line.
    """
    p = Path(path)
    lineno = 0
    try:
        with gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):  # noqa: B007 - lineno is read in the except
                line = _decode(raw, p, lineno)
                if lineno == 1 and line.startswith(_BOM):
                    line = line[1:]
                yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(
            f"{p}:{lineno + 1}: truncated or corrupt gzip file ({e}); re-download or re-compress it"
        ) from None


def read_text(path: str | Path) -> str:
    """The whole file as text (BOM dropped); invalid UTF-8 names the file and line."""
    p = Path(path)
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(
            f"{p}:{lineno}: invalid UTF-8 (byte {data[e.start : e.start + 1]!r} at column {column})"
        ) from None
    return text[1:] if text.startswith(_BOM) else text


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)``; blank lines are skipped, bad JSON names file and line."""
    for lineno, line in iter_lines(path):
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
