"""What ``lit-nomic export --model`` accepts, turned into an :class:`Embedder` plus its run folder.

``--model`` is a model folder (ours, or anything ``Embedder.from_pretrained`` converts), a packaged
name, a Lightning checkpoint (``.ckpt`` or a sharded FSDP2 folder, read as data only), or a run
folder (``runs/<run>/`` or ``runs/sweeps/<sweep>/<run>/``: its ``model/`` is exported). The run
folder, when there is one, also gives the model card its training recipe (``config.yaml``) and
evaluation table (``eval/`` JSONs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lit_nomic.model.embedder import Embedder

__all__ = ["ExportSource", "load_export_source"]


@dataclass
class ExportSource:
    embedder: Embedder
    reference: str  # what the user passed
    run_dir: Path | None  # the training run folder, when the model came out of one


def _run_dir_of(folder: Path) -> Path | None:
    """``folder`` itself or its parent when it looks like a run folder (config.yaml or eval/)."""
    for candidate in (folder, folder.parent):
        if (candidate / "config.yaml").is_file() or (candidate / "eval").is_dir():
            return candidate
    return None


def load_export_source(model: str) -> ExportSource:
    """Load ``model`` (see the module docstring) in eval mode, and find its run folder."""
    from lit_nomic.cli import load_any_model

    path = Path(model).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        embedder = Embedder.from_pretrained(path / "model")
        return ExportSource(embedder, model, path)
    embedder = load_any_model(model)
    run_dir = None
    if path.is_file() and path.suffix == ".ckpt":
        # runs/<run>/checkpoints/last.ckpt
        run_dir = _run_dir_of(path.parent.parent) if path.parent.name == "checkpoints" else None
    elif path.is_dir():
        run_dir = _run_dir_of(path) if path.name == "model" else None
    return ExportSource(embedder.eval(), model, run_dir)
