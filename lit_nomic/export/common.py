"""Helpers shared by the exporters: file modes, which existing folder may be replaced, versions."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from lit_nomic.fileio import FILE_MODE, FOLDER_MODE
from lit_nomic.model.embedder import EXPORT_FILES

__all__ = ["EXPORT_NAMES", "chmod_tree", "replaceable_export_folder", "version_info"]

# Every name an exporter writes at the top of its folder (files and the module subfolders): an
# existing folder holding nothing else is a previous export and may be replaced as a whole.
EXPORT_NAMES = EXPORT_FILES | frozenset(
    {
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "lit_nomic_module.json",
        "README.md",
        "1_Pooling",
        "2_Normalize",
        "model.onnx",
        "model_int8.onnx",
        "onnx_config.json",
    }
)


def replaceable_export_folder(folder: Path) -> bool:
    """True for an existing folder holding only what an export writes; else a one-line refusal."""
    others = sorted(p.name for p in folder.iterdir() if p.name not in EXPORT_NAMES)
    if others:
        raise FileExistsError(
            f"{folder}: refusing to replace a folder that holds files an export does not write "
            f"({', '.join(others[:5])}{' ...' if len(others) > 5 else ''}); choose a new or empty folder"
        )
    return True


def chmod_tree(folder: Path) -> None:
    """Make everything under ``folder`` world-readable: files 0644, folders 0755."""
    for entry in folder.rglob("*"):
        os.chmod(entry, FOLDER_MODE if entry.is_dir() else FILE_MODE)


def version_info() -> dict[str, str]:
    """Versions of the libraries that wrote (and will read) an exported folder."""
    out = {}
    for dist in ("lit-nomic", "torch", "transformers", "sentence-transformers"):
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out
