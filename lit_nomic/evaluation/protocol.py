"""The one interface every evaluator codes against.

Evaluation must not know whether vectors come from our MoE encoder, a sentence-transformers
checkpoint or an API, so everything here depends only on :class:`TextEncoder`. Two optional
attributes refine behaviour without widening the required protocol:

* ``model_hash: str`` — a stable fingerprint of the weights. Result files and the embedding cache
  are keyed by it; encoders without one get a fingerprint computed from probe embeddings.
* ``prompts: Mapping[str, str]`` — mteb-style per-task-type prefixes (``"STS"``,
  ``"BitextMining"``), because Nomic models embed symmetric tasks with ``"classification: "``
  rather than the retrieval prefixes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

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
