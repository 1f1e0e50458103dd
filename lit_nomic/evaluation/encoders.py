"""Encoders for evaluation: the :class:`TextEncoder` protocol, its implementations and the embedding cache.

Evaluation must not know whether vectors come from our MoE encoder, a sentence-transformers
checkpoint or an API, so every task depends only on :class:`TextEncoder` and encodes through
:func:`encode_texts` (cache lookup, the encoder call, validation). Two optional attributes refine
behaviour without widening the required protocol:

* ``model_hash: str`` — a stable fingerprint of the weights. Result files and the embedding cache
  are keyed by it; encoders without one get a fingerprint computed from probe embeddings.
* ``prompts: Mapping[str, str]`` — mteb-style per-task-type prefixes (``"STS"``,
  ``"BitextMining"``), because Nomic models embed symmetric tasks with ``"classification: "``
  rather than the retrieval prefixes.

Also here: :class:`SentenceTransformerEncoder` (our reference model: published MTEB numbers of dense
baselines are the yardstick, so it embeds exactly as sentence-transformers does, prefixes prepended
verbatim), :class:`MemoizingEncoder` (remembers every ``(prefix, text)`` so that the mteb comparison
never encodes a corpus twice) and Matryoshka truncation (:func:`truncate_normalize`).

The embedding cache makes re-scoring (new metrics, Matryoshka dims, tables) never re-encode.
Entries are content-addressed: the key is ``(model hash, prefix, max length, sha256 of the exact
texts)`` (the token limit changes the vectors of long texts), and the file name also shows dataset,
split, role and the stored dim for browsing. Keying on the text content (rather than trusting a
dataset name) is what makes the cache safe: a subsampled corpus or an edited dataset gets a new key
instead of stale vectors, while identical inputs are shared across tasks (XQuAD-R's English
paragraphs serve the English task and all ten cross-lingual ones). We store the encoder's native
output and apply Matryoshka truncation after loading, so evaluating one model at 768/256/64 dims
encodes once. An in-memory layer is always on, so this sharing works within a run even without a
cache folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from lit_nomic.fileio import atomic_write

log = logging.getLogger(__name__)


# -------------------- the protocol and fingerprints
# Fixed multilingual probe sentences: cheap to embed, diverse enough that two different models
# practically never agree on all of them bit for bit.
_PROBE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Mixture-of-Experts layers route each token to a few feed-forward experts.",
    "Der Eiffelturm steht in Paris.",
    "水在一百摄氏度时沸腾。",
    "¿Dónde está la biblioteca?",
    "a",
)


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors."""

    name: str
    query_prefix: str
    document_prefix: str

    def encode(
        self,
        texts: list[str],
        prefix: str = "",
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> torch.Tensor:
        """Return float32 ``[N, D]`` with unit-norm rows; ``prefix`` is prepended to every text."""
        ...


def task_prefix(encoder: TextEncoder, task_type: str) -> str:
    """Prefix for a symmetric task type (``"STS"``, ``"BitextMining"``); empty when undeclared."""
    prompts = getattr(encoder, "prompts", None)
    if isinstance(prompts, Mapping):
        value = prompts.get(task_type, "")
        if not isinstance(value, str):
            raise TypeError(f"encoder {encoder.name!r}: prompts[{task_type!r}] must be a str, got {value!r}")
        return value
    return ""


def encoder_max_length(encoder: object) -> int | None:
    """The token limit the encoder truncates inputs to (``max_seq_length``), or None if unknown.

    It changes the embeddings of long texts, so result identity and the embedding cache key on it.
    Looked up on the encoder, then on a wrapped ``model`` (sentence-transformers).
    """
    for holder in (encoder, getattr(encoder, "model", None)):
        value = getattr(holder, "max_seq_length", None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def module_hash(module: torch.nn.Module, extra: str = "") -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and raw bytes) plus ``extra``.

    Hashing the tensors rather than a checkpoint file means an in-memory model mid-training gets a
    fingerprint too, and two files holding identical weights get the same one.
    """
    digest = hashlib.sha256(extra.encode("utf-8"))
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encoder_fingerprint(encoder: TextEncoder) -> str:
    """The encoder's ``model_hash`` if it declares one, else a hash of its probe embeddings.

    Probe hashing keeps caching and provenance working for third-party encoders; exact bytes are
    hashed (no rounding) so that a slightly updated model never reuses a stale cache.
    """
    declared = getattr(encoder, "model_hash", None)
    if isinstance(declared, str) and declared:
        return declared
    emb = encoder.encode(list(_PROBE_TEXTS), prefix="", batch_size=len(_PROBE_TEXTS))
    emb = emb.detach().to(torch.float32).cpu().contiguous()
    digest = hashlib.sha256(f"probe|{encoder.name}|{tuple(emb.shape)}".encode())
    digest.update(emb.numpy().tobytes())
    return "probe-" + digest.hexdigest()


# -------------------- validation and Matryoshka truncation
def check_embeddings(emb: torch.Tensor, expected_rows: int, what: str) -> torch.Tensor:
    """Fail loudly on shapes/NaNs from an encoder instead of producing silently wrong scores."""
    if not isinstance(emb, torch.Tensor):
        raise TypeError(f"{what}: encoder returned {type(emb).__name__}, expected a torch.Tensor")
    if emb.ndim != 2 or emb.shape[0] != expected_rows:
        raise ValueError(f"{what}: expected embeddings of shape [{expected_rows}, D], got {tuple(emb.shape)}")
    emb = emb.detach().to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(emb).all():
        bad = int((~torch.isfinite(emb)).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{what}: embedding row {bad} contains NaN or inf")
    return emb


def truncate_normalize(emb: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Keep the first ``dim`` coordinates and re-normalise rows (Matryoshka evaluation).

    Re-normalising matters: a truncated unit vector is no longer unit-norm, and inner-product search
    would then rank by norm as much as by direction. With ``dim=None`` rows are re-normalised only,
    which also guards against encoders whose output is not exactly unit-norm.
    """
    if dim is not None:
        if dim <= 0:
            raise ValueError(f"matryoshka_dim must be positive, got {dim}")
        if dim > emb.shape[1]:
            raise ValueError(f"matryoshka_dim={dim} exceeds the embedding size {emb.shape[1]}")
        emb = emb[:, :dim]
    return torch.nn.functional.normalize(emb.to(torch.float32), p=2, dim=1)


# -------------------- sentence-transformers checkpoints
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


# -------------------- memoisation (the mteb comparison)
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


# -------------------- the embedding cache


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
    """Memory layer always; disk layer under ``root`` when given (atomic ``.npy`` files).

    Why not mteb's ``CachedEmbeddingWrapper`` (mteb is a dependency): it keys vectors by the item's
    content hash inside a folder per task and prompt type, with no model identity in the key, so a
    retrained model pointed at the same folder silently gets the old model's vectors; its index is a
    plain ``json.dump`` (a killed run can leave it torn); and it wraps mteb's encode protocol (DataLoader
    batches plus task metadata), which our evaluation and ``lit-nomic encode`` do not go through. Our cache's
    identity is (model hash, prefix, max length, texts), so a changed model is a miss.
    """

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
