"""lit_nomic: sparse Mixture-of-Experts text-embedding models, trained and benchmarked with Lightning.

The public API is importable from the package root, lazily, so ``import lit_nomic`` stays light
(no torch, no Lightning until a name is used)::

    from lit_nomic import Embedder

    model = Embedder.from_pretrained("all-minilm-l6-v2")
    queries = model.encode(["what is a mixture of experts?"], prompt_name="query")
    docs = model.encode(["Sparse experts route each token to k of E FFNs."], prompt_name="document")
    print(model.similarity(queries, docs))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    "Embedder": "lit_nomic.model.embedder",
    "EncoderConfig": "lit_nomic.config",
    "ContrastiveModule": "lit_nomic.training.module",
    "ContrastiveDataModule": "lit_nomic.data.datamodule",
}

__all__ = ["ContrastiveDataModule", "ContrastiveModule", "Embedder", "EncoderConfig", "__version__"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lit_nomic.config import EncoderConfig
    from lit_nomic.data.datamodule import ContrastiveDataModule
    from lit_nomic.model.embedder import Embedder
    from lit_nomic.training.module import ContrastiveModule


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lit_nomic' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
