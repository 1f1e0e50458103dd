"""A :class:`TextEncoder` wrapper that remembers every ``(prefix, text)`` it has embedded.

Comparing our evaluation with mteb's on the same model would otherwise encode every corpus twice
(minutes per dataset on CPU). Embeddings of a deterministic encoder depend only on the prefixed
text, so the second pipeline can reuse vectors while still exercising its own text construction
(title joining, prefixes), search and scoring: any text it builds differently is a cache miss and
gets encoded afresh.
"""

from __future__ import annotations

import torch

from lit_nomic.evaluation.protocol import TextEncoder, encoder_fingerprint


class MemoizingEncoder:
    """Forwards to ``inner`` only for texts not seen before; counts hits for reporting."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner = inner
        self.name = inner.name
        self.query_prefix = inner.query_prefix
        self.document_prefix = inner.document_prefix
        self.prompts = dict(getattr(inner, "prompts", {}) or {})
        self.model_hash = encoder_fingerprint(inner)
        self._memo: dict[tuple[str, str], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def remember(self, texts: list[str], emb: torch.Tensor, prefix: str = "") -> None:
        """Seed the memo with vectors computed elsewhere (e.g. read from an ``EmbeddingCache``).

        Lets a comparison reuse embeddings a previous run stored on disk, so that neither of the
        two pipelines compared has to encode anything.
        """
        if emb.ndim != 2 or emb.shape[0] != len(texts):
            raise ValueError(f"remember: {len(texts)} texts but embeddings of shape {tuple(emb.shape)}")
        emb = emb.detach().to(device="cpu", dtype=torch.float32)
        for text, row in zip(texts, emb, strict=True):
            self._memo[(prefix, text)] = row

    def encode(
        self, texts: list[str], prefix: str = "", batch_size: int = 64, show_progress: bool = False
    ) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if (prefix, t) not in self._memo))
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        if missing:
            emb = self.inner.encode(
                missing, prefix=prefix, batch_size=batch_size, show_progress=show_progress
            )
            emb = emb.detach().to(device="cpu", dtype=torch.float32)
            for text, row in zip(missing, emb, strict=True):
                self._memo[(prefix, text)] = row
        if not texts:
            return torch.empty(0, 0)
        return torch.stack([self._memo[(prefix, t)] for t in texts])
