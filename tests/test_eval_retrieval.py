"""Exact search (torch chunks / faiss), self-hit exclusion, the embedding cache and Matryoshka."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lexical_encoder import HashingEncoder

from lit_nomic.evaluation.beir import load_beir
from lit_nomic.evaluation.encoders import (
    CacheKey,
    EmbeddingCache,
    TextEncoder,
    check_embeddings,
    encode_texts,
    encoder_fingerprint,
    texts_sha256,
    truncate_normalize,
)
from lit_nomic.evaluation.metrics import evaluate_run, pytrec_eval_available
from lit_nomic.evaluation.retrieval import SearchConfig, evaluate_retrieval, search, self_hit_index, to_run
from lit_nomic.evaluation.retrieval_data import Document, RetrievalDataset, subsample


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


@pytest.mark.parametrize(("corpus_chunk", "query_chunk"), [(7, 3), (50, 50), (1000, 1)])
def test_chunked_topk_equals_full_sort(corpus_chunk: int, query_chunk: int) -> None:
    q, d = _unit(13, 16, 0), _unit(101, 16, 1)
    scores, idx = search(
        q, d, SearchConfig(top_k=20, corpus_chunk_size=corpus_chunk, query_chunk_size=query_chunk)
    )
    full = q @ d.T
    ref_s, ref_i = torch.sort(full, dim=1, descending=True)
    assert torch.equal(idx, ref_i[:, :20])
    assert torch.allclose(scores, ref_s[:, :20])


def test_faiss_backend_matches_torch() -> None:
    pytest.importorskip("faiss")
    q, d = _unit(9, 8, 2), _unit(40, 8, 3)
    exclude = torch.tensor([0, -1, 5, 39, -1, 2, 2, -1, 10])
    ts, ti = search(q, d, SearchConfig(top_k=10, corpus_chunk_size=11), exclude=exclude)
    fs, fi = search(q, d, SearchConfig(top_k=10, backend="faiss"), exclude=exclude)
    assert torch.equal(ti, fi)
    assert torch.allclose(ts, fs, atol=1e-6)


def test_self_hits_are_excluded_and_top_k_stays_full() -> None:
    q, d = _unit(4, 8, 4), _unit(6, 8, 5)
    d[2] = q[0]  # query 0's own document would be its best hit
    exclude = self_hit_index(["a", "x", "y", "z"], ["d0", "d1", "a", "d3", "d4", "d5"])
    assert exclude.tolist() == [2, -1, -1, -1]
    for cfg in (SearchConfig(top_k=3, corpus_chunk_size=2), SearchConfig(top_k=3, backend="faiss")):
        if cfg.backend == "faiss":
            pytest.importorskip("faiss")
        scores, idx = search(q, d, cfg, exclude=exclude)
        assert 2 not in idx[0].tolist()
        assert torch.isfinite(scores).all()  # three real neighbours remain for every query


def test_to_run_drops_unfilled_slots() -> None:
    scores = torch.tensor([[0.9, float("-inf")]])
    idx = torch.tensor([[1, 0]])
    assert to_run(["q"], ["a", "b"], scores, idx) == {"q": {"b": pytest.approx(0.9)}}


def test_truncate_normalize() -> None:
    x = torch.tensor([[3.0, 4.0, 12.0]])
    assert torch.allclose(truncate_normalize(x, 2), torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(truncate_normalize(x, None).norm(dim=1), torch.ones(1))
    with pytest.raises(ValueError, match="matryoshka_dim=4 exceeds the embedding size 3"):
        truncate_normalize(x, 4)
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        check_embeddings(torch.tensor([[1.0], [float("nan")]]), 2, "enc")
    with pytest.raises(ValueError, match=r"expected embeddings of shape \[3, D\], got \(2, 1\)"):
        check_embeddings(torch.ones(2, 1), 3, "enc")


class CountingEncoder(HashingEncoder):
    """The hashing encoder, counting how many texts it was asked to embed."""

    def __init__(self) -> None:
        super().__init__(dim=64, name="counting")
        self.calls = 0

    def encode(
        self, texts: list[str], prefix: str = "", batch_size: int = 64, show_progress: bool = False
    ) -> torch.Tensor:
        self.calls += len(texts)
        return super().encode(texts, prefix, batch_size, show_progress)


def test_cache_reuses_disk_and_keys_on_texts_and_prefix(tmp_path: Path) -> None:
    enc = CountingEncoder()
    assert isinstance(enc, TextEncoder)
    texts = ["alpha beta", "gamma"]
    kwargs = dict(batch_size=8, model_hash="m1", dataset="ds", split="test", role="corpus")
    first = encode_texts(enc, texts, prefix="p: ", cache=EmbeddingCache(tmp_path), **kwargs)
    assert enc.calls == 2 and len(list(tmp_path.glob("*.npy"))) == 1
    again = encode_texts(
        enc, texts, prefix="p: ", cache=EmbeddingCache(tmp_path), **kwargs
    )  # fresh memory layer
    assert enc.calls == 2 and torch.equal(first, again)
    encode_texts(enc, texts, prefix="other: ", cache=EmbeddingCache(tmp_path), **kwargs)
    encode_texts(enc, [*texts, "delta"], prefix="p: ", cache=EmbeddingCache(tmp_path), **kwargs)
    assert enc.calls == 2 + 2 + 3
    assert texts_sha256(["ab", "c"]) != texts_sha256(["a", "bc"])
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_corrupt_cache_file_is_recomputed(tmp_path: Path) -> None:
    enc = CountingEncoder()
    key = CacheKey("m", "ds", "test", "q", "", texts_sha256(["x"]))
    (tmp_path / key.filename(64)).write_bytes(b"not a numpy file")
    out = encode_texts(
        enc,
        ["x"],
        prefix="",
        batch_size=4,
        cache=EmbeddingCache(tmp_path),
        model_hash="m",
        dataset="ds",
        split="test",
        role="q",
    )
    assert enc.calls == 1 and out.shape == (1, 64)
    np.testing.assert_allclose(np.load(tmp_path / key.filename(64)), out.numpy())


def test_fingerprint_prefers_declared_hash_else_probes() -> None:
    enc = HashingEncoder(dim=32)
    assert encoder_fingerprint(enc) == "hashing-bow-v1-d32"

    class NoHash:
        name = "nohash"
        query_prefix = ""
        document_prefix = ""

        def __init__(self, dim: int) -> None:
            self.inner = HashingEncoder(dim=dim)

        def encode(
            self, texts: list[str], prefix: str = "", batch_size: int = 64, show_progress: bool = False
        ) -> torch.Tensor:
            return self.inner.encode(texts, prefix)

    a, b = encoder_fingerprint(NoHash(32)), encoder_fingerprint(NoHash(64))
    assert a.startswith("probe-") and a != b and a == encoder_fingerprint(NoHash(32))


def _toy_dataset() -> RetrievalDataset:
    corpus = {
        "a": Document("a", "", "cats purr and sleep"),
        "b": Document("b", "", "dogs bark loudly"),
        "c": Document("c", "", "stock markets fell"),
        "q2": Document("q2", "", "dogs bark at night"),
    }
    queries = {"q1": "why do cats purr", "q2": "dogs bark at night"}
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    return RetrievalDataset("toy", "test", corpus, queries, qrels)


def test_evaluate_retrieval_prefixes_and_identical_ids() -> None:
    ds = _toy_dataset()
    out = evaluate_retrieval(HashingEncoder(dim=256), ds, metrics=["mrr@10", "ndcg@1"])
    assert out.run["q2"]["q2"] == pytest.approx(1.0)  # identical text retrieved first ...
    assert out.metrics["ndcg@1"] == 0.5
    dropped = evaluate_retrieval(
        HashingEncoder(dim=256), ds, metrics=["mrr@10", "ndcg@1"], ignore_identical_ids=True
    )
    assert "q2" not in dropped.run["q2"]  # ... unless self-hits are excluded (ArguAna semantics)
    assert dropped.metrics["ndcg@1"] == 1.0
    assert dropped.counts == {
        "num_queries": 2,
        "num_documents": 4,
        "num_evaluated_queries": 2,
        "num_relevant": 2,
        "num_queries_without_positive": 0,
        "embedding_dim": 256,
    }


def test_scifact_subset_with_lexical_encoder_matches_pytrec_eval(scifact_dir: Path) -> None:
    ds = subsample(load_beir(scifact_dir, "test"), 400, max_queries=60, seed=0)
    out = evaluate_retrieval(
        HashingEncoder(), ds, search_config=SearchConfig(top_k=100, corpus_chunk_size=128)
    )
    assert out.counts["num_documents"] == 400 and out.counts["num_evaluated_queries"] == 60
    # a lexical baseline finds most SciFact claims' abstracts among 400 documents
    assert 0.5 < out.metrics["ndcg@10"] < 1.0
    assert out.metrics["recall@100"] >= out.metrics["recall@10"]
    if pytrec_eval_available():
        ref = evaluate_run(ds.qrels, out.run, list(out.metrics), backend="pytrec_eval").mean
        for key, value in out.metrics.items():
            assert value == pytest.approx(ref[key], abs=1e-6)
    low_dim = evaluate_retrieval(
        HashingEncoder(), ds, matryoshka_dim=64, search_config=SearchConfig(top_k=100)
    )
    assert low_dim.counts["embedding_dim"] == 64
    assert low_dim.metrics["ndcg@10"] < out.metrics["ndcg@10"]  # 64 hashed buckets lose information
