"""An on-disk cache of a frozen teacher's embeddings, so repeated epochs skip the teacher's forward.

Distillation runs the teacher once per batch; over several epochs it embeds the same texts again and
again, with the same frozen weights. ``distill.teacher_cache: <folder>`` keeps each embedding the
first time it is computed and serves it afterwards (:class:`~lit_nomic.training.distill.Distiller`
skips the teacher's forward for every text group of a batch that is fully cached).

Keys. One entry per *tokenised* text: the SHA-256 of its input ids without padding (int64,
little-endian). The tokenised form, not the string, is what the teacher sees: prefixes, truncation
and the tokenizer are all in it, and a query and a document with the same ids share an entry.

Identity. ``teacher.json`` names the teacher the folder belongs to: a hash of its config and every
weight (:func:`~lit_nomic.model.weights.state_dict_hash`) and the dtype of its embeddings (a run in
another precision computes different values). A folder made by another teacher or precision is
refused with an error naming the folder, never mixed; so is any entry file that is unreadable, lacks
its tensors, has the wrong width or names another teacher (the error names the file: delete it and
its texts are embedded again). Nothing is rebuilt silently.

Files. ``emb-r<rank>-<random>.safetensors`` holds the entries one rank computed in one step
(``keys``: uint8 ``[N, 32]``, ``embeddings``: ``[N, D]``, metadata ``teacher``). Every file is
written atomically (:mod:`lit_nomic.fileio`: a reader sees a whole file or none) by the one rank that
computed it, so several ranks never write the same file; the manifest is written by whichever rank
gets there first, with the same content on every rank. Files are read with safetensors: never
unpickled. A rank that misses a text lists the folder for files it has not read yet (other ranks'
or an earlier run's) before calling it a miss, so from the second epoch on every rank is served
whatever any rank computed.

Memory. Every entry read is held in memory (``N x D`` values of the teacher's dtype per rank: 1M
texts of a 768-wide float32 teacher are 3 GB).

Exactness. A cached embedding is bit-identical to the one computed in the batch where the text was
first seen; the teacher run on the same text inside another batch (another padding length) can
differ in the last bits.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lit_nomic.fileio import atomic_path, atomic_write_json

__all__ = ["MANIFEST", "TeacherCache", "TeacherCacheError", "text_keys"]

MANIFEST = "teacher.json"
FORMAT = 1
_PATTERN = "emb-*.safetensors"


class TeacherCacheError(ValueError):
    """A cache folder or file that cannot be used (another teacher, another precision, corrupt)."""


def text_keys(input_ids: Tensor, attention_mask: Tensor) -> list[bytes]:
    """The SHA-256 digest of each row's unpadded token ids: the cache key of that tokenised text."""
    ids = input_ids.detach().to("cpu", torch.int64).numpy()
    mask = attention_mask.detach().to("cpu").bool().numpy()
    return [
        hashlib.sha256(row[keep].astype("<i8").tobytes()).digest()
        for row, keep in zip(ids, mask, strict=True)
    ]


class TeacherCache:
    """The embeddings of one teacher, read from and appended to one folder.

    Args:
        folder: the cache folder (created on the first write).
        fingerprint: the teacher's identity (config + weights hash); checked against ``teacher.json``
            at once, so a wrong folder fails before the first step, not after it.
        embedding_dim: the teacher's embedding width; every file must have it.
    """

    def __init__(self, folder: str | Path, fingerprint: str, embedding_dim: int) -> None:
        self.folder = Path(folder).expanduser()
        self.fingerprint = fingerprint
        self.embedding_dim = embedding_dim
        self.dtype: torch.dtype | None = None  # from the manifest, or the first embeddings written
        self._entries: dict[bytes, Tensor] = {}
        self._read: set[str] = set()
        self._read_manifest()

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ identity
    def _read_manifest(self) -> None:
        path = self.folder / MANIFEST
        if not path.is_file():
            if self.folder.is_dir() and any(self.folder.glob(_PATTERN)):
                raise TeacherCacheError(
                    f"distill.teacher_cache: {self.folder} holds embedding files but no {MANIFEST}, so "
                    "which teacher made them is unknown; point teacher_cache at a new folder or empty this one"
                )
            return
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            fingerprint, dim, dtype = manifest["teacher"], int(manifest["embedding_dim"]), manifest["dtype"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise TeacherCacheError(f"distill.teacher_cache: {path} is unreadable ({err})") from err
        if fingerprint != self.fingerprint or dim != self.embedding_dim:
            raise TeacherCacheError(
                f"distill.teacher_cache: {self.folder} was written by another teacher (its {MANIFEST}: "
                f"{fingerprint}, width {dim}; this teacher: {self.fingerprint}, width {self.embedding_dim}); "
                "point teacher_cache at a new folder, or delete this one to rebuild it"
            )
        self.dtype = _dtype(dtype, path)

    def _check_dtype(self, dtype: torch.dtype) -> None:
        if self.dtype is None:
            self.dtype = dtype
            manifest = {
                "format": FORMAT,
                "teacher": self.fingerprint,
                "embedding_dim": self.embedding_dim,
                "dtype": str(dtype).removeprefix("torch."),
            }
            # Every rank writes the same content; atomic replacement makes the race harmless.
            atomic_write_json(self.folder / MANIFEST, manifest)
        elif dtype != self.dtype:
            raise TeacherCacheError(
                f"distill.teacher_cache: {self.folder} holds {self.dtype} embeddings but this run's teacher "
                f"produces {dtype} (another precision); point teacher_cache at a new folder"
            )

    # ------------------------------------------------------------------ reading
    def refresh(self) -> int:
        """Read the entry files not read yet (other ranks', an earlier run's); the number of new entries."""
        if not self.folder.is_dir():
            return 0
        before = len(self._entries)
        for path in sorted(self.folder.glob(_PATTERN)):
            if path.name in self._read:
                continue
            if self.dtype is None:  # files written by another rank since this one started
                self._read_manifest()
            keys, embeddings = self._load(path)
            for key, row in zip(keys, embeddings, strict=True):
                self._entries.setdefault(key, row)  # the first value seen wins: a run never changes one
            self._read.add(path.name)
        return len(self._entries) - before

    def _load(self, path: Path) -> tuple[list[bytes], Tensor]:
        from safetensors import safe_open

        fix = "delete it (its texts are then embedded again)"
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                keys, embeddings = handle.get_tensor("keys"), handle.get_tensor("embeddings")
        except Exception as err:  # safetensors raises its own error types for a truncated or foreign file
            raise TeacherCacheError(f"distill.teacher_cache: {path} is unreadable ({err}); {fix}") from err
        if metadata.get("teacher") != self.fingerprint:
            raise TeacherCacheError(
                f"distill.teacher_cache: {path} was written by another teacher ({metadata.get('teacher')}, "
                f"not {self.fingerprint}); {fix}"
            )
        n = keys.shape[0] if keys.ndim == 2 else -1
        if keys.dtype != torch.uint8 or keys.shape != (n, 32) or embeddings.shape != (n, self.embedding_dim):
            raise TeacherCacheError(
                f"distill.teacher_cache: {path} has keys {tuple(keys.shape)} {keys.dtype} and embeddings "
                f"{tuple(embeddings.shape)}, expected [N, 32] uint8 and [N, {self.embedding_dim}]; {fix}"
            )
        if self.dtype is not None and embeddings.dtype != self.dtype:
            raise TeacherCacheError(
                f"distill.teacher_cache: {path} holds {embeddings.dtype} embeddings, the folder "
                f"{self.dtype}; {fix}"
            )
        return [bytes(k) for k in keys.numpy()], embeddings

    def lookup(self, keys: Sequence[bytes]) -> Tensor | None:
        """The cached embeddings of ``keys`` ([N, D] on CPU), or None when any is missing.

        A miss first reads the files written since the last look (by other ranks or runs).
        """
        if not keys:
            return None
        if not self._has(keys):
            self.refresh()
            if not self._has(keys):
                return None
        return torch.stack([self._entries[k] for k in keys])

    def _has(self, keys: Sequence[bytes]) -> bool:
        return all(k in self._entries for k in keys)

    # ------------------------------------------------------------------ writing
    def add(self, keys: Sequence[bytes], embeddings: Tensor, rank: int = 0) -> Path | None:
        """Keep the entries not cached yet and write them to a new file of this rank; its path, or None."""
        if len(keys) != embeddings.shape[0]:
            raise ValueError(f"{len(keys)} keys for {embeddings.shape[0]} embeddings")
        self._check_dtype(embeddings.dtype)
        rows = embeddings.detach().to("cpu")
        fresh: dict[bytes, Tensor] = {}
        for key, row in zip(keys, rows, strict=True):
            if key not in self._entries and key not in fresh:
                fresh[key] = row
        if not fresh:
            return None
        from safetensors.torch import save_file

        key_array = np.frombuffer(b"".join(fresh), dtype=np.uint8).reshape(len(fresh), 32)
        tensors = {
            "keys": torch.from_numpy(key_array.copy()),
            "embeddings": torch.stack(list(fresh.values())).contiguous(),
        }
        path = self.folder / f"emb-r{rank:04d}-{uuid.uuid4().hex[:16]}.safetensors"
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"teacher": self.fingerprint, "format": str(FORMAT)})
        self._read.add(path.name)
        for key, row in zip(fresh, tensors["embeddings"], strict=True):
            self._entries[key] = row
        return path


def _dtype(name: str, source: Path) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise TeacherCacheError(f"distill.teacher_cache: {source}: unknown dtype {name!r}")
    return dtype
