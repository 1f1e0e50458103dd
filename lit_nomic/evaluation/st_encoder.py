"""A :class:`TextEncoder` over a sentence-transformers folder: our reference model in evaluation.

Published MTEB numbers of dense baselines (all-MiniLM-L6-v2 and friends) are the yardstick our
pipeline is checked against, so the reference encoder must embed exactly as sentence-transformers
does; prefixes are prepended verbatim, the way Nomic's ``search_query: `` prefixes are applied.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from lit_nomic.evaluation.protocol import module_hash


class SentenceTransformerEncoder:
    """Wrap a local ``SentenceTransformer`` folder (loaded offline)."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        name: str | None = None,
        query_prefix: str = "",
        document_prefix: str = "",
        prompts: Mapping[str, str] | None = None,
        device: str = "cpu",
        max_seq_length: int | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        path = Path(model_dir)
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} is not a sentence-transformers folder (no modules.json/config.json)"
            )
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.model.eval()
        self.name = name or path.name
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self.prompts: dict[str, str] = dict(prompts or {})
        self._hash: str | None = None

    @property
    def model_hash(self) -> str:
        """Weights plus module configuration (pooling, normalisation, max length), computed once."""
        if self._hash is None:
            self._hash = module_hash(self.model, extra=repr(self.model))
        return self._hash

    @property
    def embedding_dim(self) -> int:
        getter = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        dim = getter()
        if dim is None:
            raise ValueError(f"{self.name}: sentence-transformers reports no embedding dimension")
        return int(dim)

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str],
        prefix: str = "",
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> torch.Tensor:
        if not texts:
            return torch.empty(0, self.embedding_dim, dtype=torch.float32)
        inputs = [prefix + t for t in texts] if prefix else list(texts)
        emb = self.model.encode(
            inputs,
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_tensor=True,
            normalize_embeddings=True,
        )
        return emb.detach().to(device="cpu", dtype=torch.float32)
