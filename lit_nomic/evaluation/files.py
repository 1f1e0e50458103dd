"""Line-numbered text and JSONL reading for the evaluation loaders, and the atomic writers.

Both live elsewhere and are re-exported here: the readers in :mod:`lit_nomic.data.formats` (the one
reader layer training, evaluation and curation share; every error names the file and line) and the
writers in :mod:`lit_nomic.fileio`.
"""

from __future__ import annotations

from lit_nomic.data.formats import field_str, iter_jsonl, iter_lines, read_text
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
