"""Embedding cache so that re-scoring (new metrics, Matryoshka dims, tables) never re-encodes.

Entries are content-addressed: the key is ``(model hash, prefix, max length, sha256 of the exact
texts)`` (the token limit changes the vectors of long texts), and
the file name also shows dataset, split, role and the stored dim for browsing. Keying on the text
content (rather than trusting a dataset name) is what makes the cache safe: a subsampled corpus
or an edited dataset gets a new key instead of stale vectors, while identical inputs are shared
across tasks (XQuAD-R's English paragraphs serve the English task and all ten cross-lingual
ones). We store the encoder's native output and apply Matryoshka truncation after loading, so
evaluating one model at 768/256/64 dims encodes once. An in-memory layer is always on, so this
sharing works within a run even without a cache folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lit_nomic.evaluation.embeddings import check_embeddings
from lit_nomic.evaluation.files import atomic_write
from lit_nomic.evaluation.protocol import TextEncoder, encoder_max_length

log = logging.getLogger(__name__)


def texts_sha256(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))  # length-prefixed: ["ab","c"] != ["a","bc"]
        digest.update(data)
    return digest.hexdigest()


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("_")[:60] or "x"


@dataclass(frozen=True)
class CacheKey:
    """Dataset, split and role only label the file; identity is model, prefix, max length and content."""

    model_hash: str
    dataset: str
    split: str
    role: str
    prefix: str
    texts_sha: str
    max_length: int | None = None

    def digest(self) -> str:
        payload = json.dumps(
            [self.model_hash, self.prefix, self.max_length, self.texts_sha], ensure_ascii=False
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def filename(self, dim: int) -> str:
        return f"{_slug(self.dataset)}-{_slug(self.split)}-{_slug(self.role)}-d{dim}-{self.digest()[:24]}.npy"


class EmbeddingCache:
    """Memory layer always; disk layer under ``root`` when given (atomic ``.npy`` files)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def _find_on_disk(self, key: CacheKey) -> Path | None:
        if self.root is None or not self.root.is_dir():
            return None
        matches = sorted(self.root.glob(f"*-{key.digest()[:24]}.npy"))
        return matches[0] if matches else None

    def get(self, key: CacheKey, rows: int) -> torch.Tensor | None:
        digest = key.digest()
        if digest in self._memory:
            self.hits += 1
            return self._memory[digest]
        path = self._find_on_disk(key)
        if path is None:
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable cache file %s (%s); re-encoding", path, e)
            return None
        if arr.ndim != 2 or arr.shape[0] != rows or arr.dtype != np.float32:
            log.warning("ignoring cache file %s with shape %s dtype %s", path, arr.shape, arr.dtype)
            return None
        emb = torch.from_numpy(arr)
        self._memory[digest] = emb
        self.hits += 1
        return emb

    def put(self, key: CacheKey, emb: torch.Tensor) -> None:
        self._memory[key.digest()] = emb
        if self.root is not None:
            arr = np.ascontiguousarray(emb.numpy(), dtype=np.float32)
            atomic_write(
                self.root / key.filename(arr.shape[1]), lambda fh: np.save(fh, arr, allow_pickle=False)
            )


def encode_texts(
    encoder: TextEncoder,
    texts: list[str],
    *,
    prefix: str,
    batch_size: int,
    cache: EmbeddingCache | None = None,
    model_hash: str | None = None,
    dataset: str = "",
    split: str = "",
    role: str = "",
    show_progress: bool = False,
) -> torch.Tensor:
    """Encode (or fetch) ``texts`` with ``prefix``; returns validated float32 CPU ``[N, D]``."""
    what = f"{encoder.name} on {dataset}/{split}/{role}"
    key = None
    if cache is not None:
        if model_hash is None:
            raise ValueError("encode_texts: a cache needs the model_hash to key on")
        key = CacheKey(
            model_hash, dataset, split, role, prefix, texts_sha256(texts), encoder_max_length(encoder)
        )
        cached = cache.get(key, len(texts))
        if cached is not None:
            return cached
        cache.misses += 1
    emb = encoder.encode(list(texts), prefix=prefix, batch_size=batch_size, show_progress=show_progress)
    emb = check_embeddings(emb, len(texts), what)
    if cache is not None and key is not None:
        cache.put(key, emb)
    return emb
