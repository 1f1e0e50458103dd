"""The one place a tokenizer reference becomes a Hugging Face tokenizer.

Training data (``data.tokenizer``), the model spec (``model.model.tokenizer``), model folders, exported
checkpoints and ONNX folders all name tokenizers the same ways: a folder on disk, a folder under the
data root (``xlm_roberta_tokenizer``), a checkpoint shipped in a Python package (``all-minilm-l6-v2``,
offline), or a Hugging Face Hub id. Resolving and loading them in one function keeps those ways, and
the error a researcher sees when none works, the same everywhere.

The transformers import happens on first load, not at import time: model and export modules import
this one, and most of their users never load a tokenizer from disk.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lit_nomic.data.paths import data_root
from lit_nomic.model.sources import packaged_model_path

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["load_tokenizer", "resolve_tokenizer"]


def resolve_tokenizer(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """A local folder as given, else under the data root, else a packaged checkpoint, else the name (Hub id)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    rooted = data_root(root) / os.fspath(name_or_path)
    if rooted.exists():
        return str(rooted)
    packaged = packaged_model_path(os.fspath(name_or_path))
    if packaged is not None and packaged.exists():
        return str(packaged)
    return os.fspath(name_or_path)


def load_tokenizer(
    name_or_path: str | os.PathLike, root: str | os.PathLike | None = None, *, shared: bool = False
) -> PreTrainedTokenizerBase:
    """Load the tokenizer ``name_or_path`` names (resolved by :func:`resolve_tokenizer` against ``root``).

    ``shared=True`` loads once per resolved location and process, for data collators: the XLM-R
    tokenizer (250k pieces) takes seconds to build. Models get their own object (the default), so that
    nothing one model sets on its tokenizer leaks into another's. A reference that matches nothing
    local and not the Hub raises ``FileNotFoundError``, a local folder that does not load ``OSError``;
    both name the resolved location.
    """
    location = resolve_tokenizer(name_or_path, root)
    return _load_shared(location) if shared else _load(location)


@functools.lru_cache(maxsize=4)
def _load_shared(location: str) -> PreTrainedTokenizerBase:
    return _load(location)


def _load(location: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as exc:
        # Nothing local matched: FileNotFoundError, which the CLIs report as one line naming the input.
        # A folder that exists but does not load is a broken tokenizer: plain OSError.
        kind = OSError if Path(location).exists() else FileNotFoundError
        raise kind(
            f"cannot load tokenizer {location!r}: pass a local folder (e.g. xlm_roberta_tokenizer under "
            f"the data root), a packaged name (all-minilm-l6-v2) or a cached Hub id; the Hub may be "
            f"unreachable (HF_HUB_OFFLINE=1)"
        ) from exc
