"""Real weights: all-MiniLM-L6-v2 through our pipeline on real SciFact/STS data (kept small)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lit_nomic.evaluation.beir import load_beir
from lit_nomic.evaluation.encoders import MemoizingEncoder, SentenceTransformerEncoder
from lit_nomic.evaluation.metrics import evaluate_run, pytrec_eval_available
from lit_nomic.evaluation.pairs import STSPairs, evaluate_sts, load_stsb_multi_mt
from lit_nomic.evaluation.retrieval import evaluate_retrieval
from lit_nomic.evaluation.retrieval_data import subsample


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> SentenceTransformerEncoder:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    # 128 tokens keeps the test fast; the full-length evaluation is reported separately
    return SentenceTransformerEncoder(minilm_dir, name="all-MiniLM-L6-v2", max_seq_length=128)


def test_encoder_matches_sentence_transformers(minilm: SentenceTransformerEncoder) -> None:
    texts = ["A man is playing a guitar.", "Der Eiffelturm steht in Paris."]
    emb = minilm.encode(texts, prefix="query: ", batch_size=2)
    ref = minilm.model.encode(
        ["query: " + t for t in texts], convert_to_tensor=True, normalize_embeddings=True
    )
    assert emb.dtype == torch.float32 and emb.shape == (2, 384)
    assert torch.allclose(emb, ref.cpu(), atol=1e-6)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)
    assert len(minilm.model_hash) == 64 and minilm.model_hash == minilm.model_hash


def test_scifact_subset_matches_numpy_reference(
    minilm: SentenceTransformerEncoder, scifact_dir: Path
) -> None:
    ds = subsample(load_beir(scifact_dir, "test"), 30, max_queries=12, seed=0)
    doc_texts = [(d.title + " " + d.text).strip() for d in ds.corpus.values()]  # BEIR/mteb convention
    docs = minilm.encode(doc_texts, batch_size=16).numpy()
    queries = minilm.encode(ds.query_texts, batch_size=16).numpy()
    scores = queries @ docs.T
    ref_run = {
        q: {d: float(s) for d, s in zip(ds.doc_ids, row, strict=True)}
        for q, row in zip(ds.query_ids, scores, strict=True)
    }
    backend = "pytrec_eval" if pytrec_eval_available() else "numpy"
    reference = evaluate_run(ds.qrels, ref_run, ["ndcg@10", "recall@10", "mrr@10"], backend=backend).mean

    memo = MemoizingEncoder(minilm)
    memo.encode(doc_texts, batch_size=16)
    memo.encode(ds.query_texts, batch_size=16)
    hits_before = memo.hits
    out = evaluate_retrieval(memo, ds, batch_size=16, metrics=["ndcg@10", "recall@10", "mrr@10"])
    assert memo.misses == len(set(doc_texts)) + len(set(ds.query_texts))  # our pipeline built identical texts
    assert memo.hits - hits_before == len(doc_texts) + len(ds.query_texts)
    for key, value in reference.items():
        assert out.metrics[key] == pytest.approx(value, abs=1e-6), key
    # real retrieval quality: the claims find their abstracts among 30 documents
    assert out.metrics["ndcg@10"] > 0.8


def test_sts_sample(minilm: SentenceTransformerEncoder, shared_data: Path) -> None:
    full = load_stsb_multi_mt(shared_data / "stsb_multi_mt", "en", "test")
    n = 120
    pairs = STSPairs(full.name, "en", "test", full.sentences1[:n], full.sentences2[:n], full.scores[:n])
    memo = MemoizingEncoder(minilm)
    metrics, counts, _ = evaluate_sts(memo, pairs, batch_size=32)
    assert counts["num_pairs"] == n
    assert metrics["spearman"] > 0.75 and metrics["pearson"] > 0.75  # all-MiniLM-L6-v2 STSb ~ 0.82
    scipy_stats = pytest.importorskip("scipy.stats")
    misses = memo.misses
    cos = (
        (memo.encode(pairs.sentences1) * memo.encode(pairs.sentences2)).sum(dim=1).numpy().astype(np.float64)
    )
    assert memo.misses == misses  # reference reuses the very same vectors
    assert metrics["spearman"] == pytest.approx(scipy_stats.spearmanr(cos, pairs.scores).statistic, abs=1e-5)
    assert metrics["pearson"] == pytest.approx(scipy_stats.pearsonr(cos, pairs.scores).statistic, abs=1e-5)
