"""The embedding model: encoder (dense or MoE FFN layers), embedder (encode, save/load), weight import.

Exports resolve lazily so that light modules (``lit_nomic.model.sources``, used by data workers)
do not pull in the whole model stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_nomic.model.embedder import Embedder
    from lit_nomic.model.encoder import Encoder, EncoderOutput

__all__ = ["Embedder", "Encoder", "EncoderOutput"]


def __getattr__(name: str) -> Any:
    if name == "Embedder":
        from lit_nomic.model.embedder import Embedder

        return Embedder
    if name in ("Encoder", "EncoderOutput"):
        from lit_nomic.model import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'lit_nomic.model' has no attribute {name!r}")
