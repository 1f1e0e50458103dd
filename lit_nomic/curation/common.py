"""What filtering and mining share: encoding (in memory or into memory-mapped files), exact or IVF
nearest-neighbour search, float64 re-scoring, settings fingerprints and work splitting.

Encoding goes through the evaluation package's :func:`lit_nomic.evaluation.encoders.encode_texts` (the
encoder sorts texts by length and batches neighbours; ``show_progress`` draws the bar), and exact
search through :func:`lit_nomic.evaluation.retrieval.search` (faiss ``IndexFlatIP`` or the chunked
torch scan), so curation and evaluation rank with the same code.

Why candidates are re-scored in float64. Faiss and the torch scan sum inner products in different
orders, so the same pair can score 1e-7 apart between backends; a rule such as "rank <= 2" or
"score <= 0.95 x positive" would then depend on the backend. Every decision here is taken on one
float64 recomputation of the retrieved candidates' scores, so faiss and torch keep the same pairs and
the same negatives (they only differ in which candidates they return at the search depth's edge).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lit_nomic.fileio import atomic_path, atomic_write

SearchBackendName = Literal["auto", "faiss", "torch", "faiss-ivf"]
BACKENDS: tuple[str, ...] = ("auto", "faiss", "torch", "faiss-ivf")


class CurationError(ValueError):
    """Bad curation input or settings; the message names the file (and line) or the option."""


# --------------------------------------------------------------------------------------- settings
def settings_hash(settings: dict[str, Any]) -> str:
    payload = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def slug(name: str) -> str:
    """A file-name-safe form of a source name; ``/`` is kept (``mc4/en`` -> folder ``mc4/en``)."""
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", p).strip("._") or "x" for p in name.split("/")]
    return "/".join(parts)


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``: this worker takes the units whose ordinal is ``i`` modulo ``n``."""
    if shard is None or shard == "":
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise CurationError(f"--shard must be i/n with 0 <= i < n, got {shard!r}")
    return int(m.group(1)), int(m.group(2))


def check_settings_file(output: Path, settings: dict[str, Any], what: str) -> None:
    """Write ``settings.json`` on first use; refuse an output folder made with other settings.

    Resuming and ``--shard`` workers depend on every unit of one folder sharing one setting, and a
    folder mixing chunk sizes would leave stale chunks that the training reader would also read.
    """
    path = output / "settings.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CurationError(f"{path}: unreadable settings ({exc}); remove the folder") from None
        if old != json.loads(json.dumps(settings, sort_keys=True, default=str)):
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != _jsonable(settings.get(k)))
            raise CurationError(
                f"{what}: {output} holds a run with different settings ({', '.join(diff)}); "
                "use another --output folder (or delete this one)"
            )
        return
    atomic_write_json_sorted(path, settings)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def atomic_write_json_sorted(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    atomic_write(path, lambda fh: fh.write(data))


@dataclass(kw_only=True)
class SearchSettings:
    """The search and work-split options that filtering and mining share (``--search``, ``--ivf_*``,
    ``--shard``); :class:`~lit_nomic.curation.filter.FilterSettings` and
    :class:`~lit_nomic.curation.mine.MineSettings` add their own."""

    search: str = "auto"
    ivf_nlist: int = 1024
    ivf_nprobe: int = 32
    shard: str | None = None

    def check_positive(self, *keys: str) -> None:
        """``keys`` and the IVF sizes must be positive integers (``--key`` named in the error)."""
        for key in (*keys, "ivf_nlist", "ivf_nprobe"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CurationError(f"--{key} must be a positive integer, got {value!r}")

    def search_identity(self) -> dict[str, Any]:
        """What of the search changes results: faiss and torch are both exact and decide alike."""
        if self.search == "faiss-ivf":
            return {"search": "ivf", "ivf_nlist": self.ivf_nlist, "ivf_nprobe": self.ivf_nprobe}
        return {"search": "exact"}


# --------------------------------------------------------------------------------------- encoding
@dataclass
class EncodeSettings:
    """How texts are embedded: the encoder, its prefixes, batch size and the in-memory row limit.

    ``in_memory_rows``: a block of more rows is encoded ``in_memory_rows`` texts at a time into a
    ``.npy`` file that is then memory-mapped, so RAM holds one block of embeddings, not the corpus.
    """

    encoder: Any
    query_prefix: str
    document_prefix: str
    batch_size: int = 64
    in_memory_rows: int = 200_000
    show_progress: bool = True
    cache: Any = None  # an evaluation EmbeddingCache (memory layer) shared across calls, or None
    model_hash: str | None = None


def encode(
    cfg: EncodeSettings, texts: list[str], role: str, path: Path | None = None, label: str = ""
) -> np.ndarray:
    """Float32 ``[N, D]`` unit rows for ``texts``; a memory-mapped file at ``path`` when N is large.

    ``role`` is ``query`` or ``document`` (which prefix). With ``path`` and more than
    ``in_memory_rows`` texts the rows are written block by block into ``path`` (atomically renamed
    when complete) and returned memory-mapped copy-on-write.
    """
    from lit_nomic.evaluation.encoders import encode_texts

    prefix = cfg.query_prefix if role == "query" else cfg.document_prefix
    kwargs = dict(
        prefix=prefix,
        batch_size=cfg.batch_size,
        cache=cfg.cache,
        model_hash=cfg.model_hash if cfg.cache is not None else None,
        dataset="curation",
        split=label,
        role=role,
        show_progress=cfg.show_progress,
    )
    if path is None or len(texts) <= cfg.in_memory_rows:
        emb = encode_texts(cfg.encoder, list(texts), **kwargs).numpy()
        if path is not None:
            atomic_write(path, lambda fh: np.save(fh, emb, allow_pickle=False))
        return emb
    with atomic_path(path) as tmp:
        out = None
        for start in range(0, len(texts), cfg.in_memory_rows):
            block = encode_texts(cfg.encoder, list(texts[start : start + cfg.in_memory_rows]), **kwargs)
            if out is None:
                out = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=np.float32, shape=(len(texts), block.shape[1])
                )
            out[start : start + block.shape[0]] = block.numpy()
        assert out is not None
        out.flush()
        del out
    return np.load(path, mmap_mode="c")


def load_embeddings(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="c", allow_pickle=False)


# ----------------------------------------------------------------------------------------- search
def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise CurationError(f"--search must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        try:
            import faiss  # noqa: F401
        except ImportError:
            return "torch"
        return "faiss"
    return backend


def knn(
    queries: np.ndarray,
    docs: np.ndarray,
    k: int,
    backend: str = "auto",
    *,
    ivf_nlist: int = 1024,
    ivf_nprobe: int = 32,
    query_block: int = 4096,
) -> np.ndarray:
    """Row indices ``[Q, min(k, N)]`` of each query's nearest documents by inner product.

    ``faiss`` / ``torch``: exact, through the evaluation package's search. ``faiss-ivf``: an
    approximate ``IndexIVFFlat`` (``nlist`` lists, ``nprobe`` probed) for corpora too large to scan.
    Queries are processed ``query_block`` at a time. Slots past the corpus size hold -1.
    """
    from lit_nomic.evaluation.retrieval import SearchConfig, search

    backend = resolve_backend(backend)
    k = min(k, docs.shape[0])
    out = np.full((queries.shape[0], k), -1, dtype=np.int64)
    if k == 0 or queries.shape[0] == 0:
        return out
    if backend == "faiss-ivf":
        import faiss

        nlist = max(1, min(ivf_nlist, docs.shape[0] // 39 or 1))
        quantizer = faiss.IndexFlatIP(docs.shape[1])
        index = faiss.IndexIVFFlat(quantizer, docs.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(docs.shape[0], size=min(docs.shape[0], nlist * 256), replace=False))
        index.train(np.ascontiguousarray(docs[sample], dtype=np.float32))
        for s in range(0, docs.shape[0], 262_144):
            index.add(np.ascontiguousarray(docs[s : s + 262_144], dtype=np.float32))
        index.nprobe = min(ivf_nprobe, nlist)
        for q0 in range(0, queries.shape[0], query_block):
            _, idx = index.search(np.ascontiguousarray(queries[q0 : q0 + query_block], dtype=np.float32), k)
            out[q0 : q0 + idx.shape[0]] = idx
        return out
    doc_t = torch.from_numpy(np.ascontiguousarray(docs, dtype=np.float32))
    config = SearchConfig(top_k=k, backend=backend)
    for q0 in range(0, queries.shape[0], query_block):
        q = torch.from_numpy(np.ascontiguousarray(queries[q0 : q0 + query_block], dtype=np.float32))
        scores, idx = search(q, doc_t, config)
        idx = idx.numpy().copy()
        idx[~np.isfinite(scores.numpy())] = -1
        out[q0 : q0 + idx.shape[0]] = idx
    return out


def rescore(queries: np.ndarray, docs: np.ndarray, rows: np.ndarray, doc_rows: np.ndarray) -> np.ndarray:
    """Float64 scores of ``queries[rows[i]]`` against ``docs[doc_rows[i, j]]`` (``-inf`` where -1).

    One computation for every backend: all keep/drop decisions are taken on these numbers.
    """
    q = np.asarray(queries[rows], dtype=np.float64)
    safe = np.where(doc_rows < 0, 0, doc_rows)
    d = np.asarray(docs[safe.reshape(-1)], dtype=np.float64).reshape(*safe.shape, -1)
    scores = np.einsum("qd,qkd->qk", q, d)
    scores[doc_rows < 0] = -np.inf
    return scores


def pair_scores(queries: np.ndarray, q_rows: np.ndarray, docs: np.ndarray, d_rows: np.ndarray) -> np.ndarray:
    """Float64 score of each ``(queries[q_rows[i]], docs[d_rows[i]])``, computed as :func:`rescore` does."""
    return rescore(queries, docs, q_rows, d_rows.reshape(-1, 1))[:, 0]


def encoder_identity(encoder: Any, query_prefix: str, document_prefix: str) -> dict[str, Any]:
    from lit_nomic.evaluation.encoders import encoder_fingerprint, encoder_max_length

    return {
        "model": getattr(encoder, "name", type(encoder).__name__),
        "model_hash": encoder_fingerprint(encoder),
        "max_length": encoder_max_length(encoder),
        "query_prefix": query_prefix,
        "document_prefix": document_prefix,
    }
