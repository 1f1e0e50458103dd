"""Dense retrieval evaluation: encode, exact inner-product search, trec_eval-compatible scoring.

Search is exact (brute force) because approximate search would make model comparisons depend on
index parameters. The corpus is scanned in chunks and per-chunk ``torch.topk`` results are merged,
so memory stays ``O(query_chunk x corpus_chunk)`` regardless of corpus size; faiss ``IndexFlatIP``
is offered as an equivalent backend for very large corpora.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from lit_nomic.evaluation.encoders import EmbeddingCache, TextEncoder, encode_texts, truncate_normalize
from lit_nomic.evaluation.metrics import DEFAULT_METRICS, RunEvaluation, evaluate_run
from lit_nomic.evaluation.retrieval_data import RetrievalDataset

SearchBackend = Literal["torch", "faiss"]


@dataclass(frozen=True)
class SearchConfig:
    """Exact search settings; ``top_k`` 1000 is what mteb retrieves for recall@1000."""

    top_k: int = 1000
    corpus_chunk_size: int = 50_000
    query_chunk_size: int = 1024
    backend: SearchBackend = "torch"

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.corpus_chunk_size < 1 or self.query_chunk_size < 1:
            raise ValueError(f"SearchConfig values must be positive: {self}")
        if self.backend not in ("torch", "faiss"):
            raise ValueError(f"SearchConfig.backend must be 'torch' or 'faiss', got {self.backend!r}")


def self_hit_index(query_ids: Sequence[str], doc_ids: Sequence[str]) -> torch.Tensor:
    """For each query, the corpus row with the same id, or -1 (used to exclude self-hits)."""
    position = {d: i for i, d in enumerate(doc_ids)}
    return torch.tensor([position.get(q, -1) for q in query_ids], dtype=torch.long)


def _torch_search(
    queries: torch.Tensor, docs: torch.Tensor, k: int, exclude: torch.Tensor | None, cfg: SearchConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    n_q = queries.shape[0]
    out_s = torch.empty(n_q, k, dtype=torch.float32)
    out_i = torch.empty(n_q, k, dtype=torch.long)
    for q0 in range(0, n_q, cfg.query_chunk_size):
        q = queries[q0 : q0 + cfg.query_chunk_size]
        best_s = torch.empty(q.shape[0], 0)
        best_i = torch.empty(q.shape[0], 0, dtype=torch.long)
        for d0 in range(0, docs.shape[0], cfg.corpus_chunk_size):
            chunk = docs[d0 : d0 + cfg.corpus_chunk_size]
            scores = q @ chunk.T
            if exclude is not None:
                ex = exclude[q0 : q0 + q.shape[0]] - d0
                rows = ((ex >= 0) & (ex < chunk.shape[0])).nonzero().flatten()
                scores[rows, ex[rows]] = float("-inf")
            s, i = torch.topk(scores, min(k, chunk.shape[0]), dim=1)
            best_s = torch.cat([best_s, s], dim=1)
            best_i = torch.cat([best_i, i + d0], dim=1)
            if best_s.shape[1] > k:
                best_s, pos = torch.topk(best_s, k, dim=1)
                best_i = torch.gather(best_i, 1, pos)
        order = torch.argsort(best_s, dim=1, descending=True, stable=True)
        out_s[q0 : q0 + q.shape[0]] = torch.gather(best_s, 1, order)
        out_i[q0 : q0 + q.shape[0]] = torch.gather(best_i, 1, order)
    return out_s, out_i


def _faiss_search(
    queries: torch.Tensor, docs: torch.Tensor, k: int, exclude: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import faiss
    except ImportError as e:
        raise ImportError("backend='faiss' needs `pip install faiss-cpu`") from e
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs.numpy())
    extra = 1 if exclude is not None else 0
    s, i = index.search(queries.numpy(), min(k + extra, docs.shape[0]))
    scores = torch.from_numpy(s).float()
    idx = torch.from_numpy(i).long()
    if exclude is not None:
        scores = scores.masked_fill(idx == exclude[:, None], float("-inf"))
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        scores, idx = torch.gather(scores, 1, order), torch.gather(idx, 1, order)
    return scores[:, :k], idx[:, :k]


def search(
    query_emb: torch.Tensor,
    doc_emb: torch.Tensor,
    config: SearchConfig = SearchConfig(),
    *,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k inner-product neighbours ``(scores, doc_rows)`` sorted by score, both ``[Q, k]``.

    ``exclude[q]`` is a corpus row that query ``q`` must never return (-1 for none). Excluded or
    missing slots (corpus smaller than k) carry score ``-inf``.
    """
    if query_emb.shape[1] != doc_emb.shape[1]:
        raise ValueError(f"query dim {query_emb.shape[1]} != document dim {doc_emb.shape[1]}")
    k = min(config.top_k, doc_emb.shape[0])
    q = query_emb.to(torch.float32).contiguous()
    d = doc_emb.to(torch.float32).contiguous()
    if config.backend == "faiss":
        return _faiss_search(q, d, k, exclude)
    return _torch_search(q, d, k, exclude, config)


def to_run(
    query_ids: Sequence[str], doc_ids: Sequence[str], scores: torch.Tensor, indices: torch.Tensor
) -> dict[str, dict[str, float]]:
    """Convert search output to trec-style ``{qid: {doc_id: score}}``, dropping ``-inf`` slots."""
    run: dict[str, dict[str, float]] = {}
    s_list, i_list = scores.tolist(), indices.tolist()
    for qid, srow, irow in zip(query_ids, s_list, i_list, strict=True):
        run[qid] = {doc_ids[i]: s for s, i in zip(srow, irow, strict=True) if s != float("-inf")}
    return run


@dataclass
class RetrievalOutput:
    run: dict[str, dict[str, float]]
    evaluation: RunEvaluation
    counts: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        return self.evaluation.mean


def evaluate_retrieval(
    encoder: TextEncoder,
    dataset: RetrievalDataset,
    *,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    batch_size: int = 64,
    matryoshka_dim: int | None = None,
    search_config: SearchConfig = SearchConfig(),
    metrics: Sequence[str] = DEFAULT_METRICS,
    cache: EmbeddingCache | None = None,
    model_hash: str | None = None,
    ignore_identical_ids: bool | None = None,
    show_progress: bool = False,
) -> RetrievalOutput:
    """Encode queries with the query prefix and the corpus with the document prefix, search, score.

    Prefixes default to the encoder's own; ``ignore_identical_ids`` defaults to the dataset's flag
    and removes self-hits during search (so the query still gets a full top-k) as mteb does.
    """
    q_prefix = encoder.query_prefix if query_prefix is None else query_prefix
    d_prefix = encoder.document_prefix if document_prefix is None else document_prefix
    drop_self = dataset.ignore_identical_ids if ignore_identical_ids is None else ignore_identical_ids
    common = dict(
        batch_size=batch_size,
        cache=cache,
        model_hash=model_hash,
        dataset=dataset.name + (f"-{dataset.language}" if dataset.language else ""),
        split=dataset.split,
        show_progress=show_progress,
    )
    t0 = time.perf_counter()
    doc_emb = encode_texts(encoder, dataset.doc_texts, prefix=d_prefix, role="corpus", **common)
    t1 = time.perf_counter()
    query_emb = encode_texts(encoder, dataset.query_texts, prefix=q_prefix, role="queries", **common)
    t2 = time.perf_counter()
    doc_emb = truncate_normalize(doc_emb, matryoshka_dim)
    query_emb = truncate_normalize(query_emb, matryoshka_dim)
    doc_ids, query_ids = dataset.doc_ids, dataset.query_ids
    exclude = self_hit_index(query_ids, doc_ids) if drop_self else None
    scores, idx = search(query_emb, doc_emb, search_config, exclude=exclude)
    run = to_run(query_ids, doc_ids, scores, idx)
    t3 = time.perf_counter()
    evaluation = evaluate_run(dataset.qrels, run, metrics, ignore_identical_ids=drop_self)
    t4 = time.perf_counter()
    counts = {
        "num_queries": len(query_ids),
        "num_documents": len(doc_ids),
        "num_evaluated_queries": evaluation.num_queries,
        "num_relevant": dataset.num_relevant,
        "num_queries_without_positive": len(dataset.queries_without_positive),
        "embedding_dim": int(doc_emb.shape[1]),
    }
    timings = {
        "encode_corpus_s": t1 - t0,
        "encode_queries_s": t2 - t1,
        "search_s": t3 - t2,
        "score_s": t4 - t3,
    }
    return RetrievalOutput(run=run, evaluation=evaluation, counts=counts, timings=timings)
