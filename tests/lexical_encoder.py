"""A weight-free lexical :class:`TextEncoder`: hashed word unigrams with sublinear TF.

It gives a floor that every trained model must beat and lets the whole evaluation pipeline
(``lit-nomic eval``, CI smoke runs, result tables) run in seconds without downloading a model.
Hashing words into a fixed number of buckets is the classic "hashing trick"; collisions cost a
little accuracy but keep the encoder stateless and deterministic across machines.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter

import torch

_TOKEN_RE = re.compile(r"\w+", re.UNICODE)


class HashingEncoder:
    """Bag-of-words embeddings of dimension ``dim`` (L2-normalised)."""

    def __init__(
        self, dim: int = 4096, name: str = "hashing-bow", query_prefix: str = "", document_prefix: str = ""
    ) -> None:
        if dim < 2:
            raise ValueError(f"dim must be >= 2, got {dim}")
        self.dim = dim
        self.name = name
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self.model_hash = f"hashing-bow-v1-d{dim}"
        self._buckets: dict[str, tuple[int, float]] = {}

    def _bucket(self, token: str) -> tuple[int, float]:
        hit = self._buckets.get(token)
        if hit is None:
            h = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")
            hit = (h % self.dim, 1.0 if (h >> 63) & 1 else -1.0)  # signed hashing keeps collisions unbiased
            if len(self._buckets) < 1_000_000:
                self._buckets[token] = hit
        return hit

    def encode(
        self, texts: list[str], prefix: str = "", batch_size: int = 64, show_progress: bool = False
    ) -> torch.Tensor:
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        for row, text in enumerate(texts):
            for token, c in Counter(_TOKEN_RE.findall((prefix + text).lower())).items():
                idx, sign = self._bucket(token)
                rows.append(row)
                cols.append(idx)
                vals.append(sign * (1.0 + math.log(c)))
        out = torch.zeros(len(texts), self.dim, dtype=torch.float32)
        out.index_put_(
            (torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)),
            torch.tensor(vals, dtype=torch.float32),
            accumulate=True,
        )
        norms = out.norm(dim=1, keepdim=True)
        # an empty text gets a fixed unit vector rather than NaNs
        out[norms.squeeze(1) == 0, 0] = 1.0
        return torch.nn.functional.normalize(out, dim=1)
