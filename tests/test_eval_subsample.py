"""The one subsampling function: the evaluation subsample and the in-training probe are two settings of it.

The SciFact digests pin the exact query and document ids, in order, that the two functions it replaced
(``subsample`` with random distractors, ``probe_subset`` with the first ones) returned: the corpus order
decides how documents are batched when encoded, so the quickstart's probe score depends on it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lit_nomic.evaluation.beir import load_beir
from lit_nomic.evaluation.retrieval_data import Document, RetrievalDataset, probe_subset, subsample


def _digest(ids: list[str]) -> str:
    return hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    "kwargs, name, extra, sizes, doc_digest, query_digest",
    [
        (
            {"max_docs": 60, "max_queries": 20, "seed": 3},
            "scifact-sub60", {"subsample": "max_docs=60,max_queries=20,seed=3"}, (20, 60),
            "1ee7c2a6014b5351", "a573f3460020e542",
        ),
        (
            {"max_docs": 1000},
            "scifact-sub1000", {"subsample": "max_docs=1000,max_queries=None,seed=0"}, (300, 1000),
            "338ae439613381ba", "659a874f7804d55d",
        ),
        (  # experiments/quickstart.yaml's fit-end probe
            {"max_docs": 1000, "keep": "relevant", "fill": "first"},
            "scifact-probe", {"probe": "max_queries=None,max_corpus=1000"}, (300, 1000),
            "5943e74b8907754a", "659a874f7804d55d",
        ),
        (
            {"max_docs": 40, "max_queries": 8, "keep": "relevant", "fill": "first"},
            "scifact-probe", {"probe": "max_queries=8,max_corpus=40"}, (8, 40),
            "9d9111af3459a2bf", "723a9eb8b3858439",
        ),
    ],
)  # fmt: skip
def test_scifact_subsets_are_pinned(
    scifact_dir: Path,
    kwargs: dict,
    name: str,
    extra: dict[str, str],
    sizes: tuple[int, int],
    doc_digest: str,
    query_digest: str,
) -> None:
    small = subsample(load_beir(scifact_dir, "test"), **kwargs)
    assert (small.name, small.extra, (len(small.queries), len(small.corpus))) == (name, extra, sizes)
    assert (_digest(small.doc_ids), _digest(small.query_ids)) == (doc_digest, query_digest)


def _toy() -> RetrievalDataset:
    corpus = {f"d{i}": Document(f"d{i}", "", f"text {i}") for i in range(10)}
    queries = {f"q{i}": f"query {i}" for i in range(4)}
    qrels = {"q0": {"d7": 1, "d2": 0}, "q1": {"d5": 2, "d7": 1}, "q2": {"d9": 1}, "q3": {"d0": 1}}
    return RetrievalDataset("toy", "test", corpus, queries, qrels, queries_without_positive=("q9",))


def test_probe_subset_is_the_relevant_first_setting() -> None:
    for max_queries, max_corpus in [(2, 5), (1, None), (None, 4), (3, 3)]:
        probe = probe_subset(_toy(), max_queries, max_corpus)
        same = subsample(_toy(), max_corpus, max_queries=max_queries, keep="relevant", fill="first")
        assert probe == same and probe.queries_without_positive == ()
    toy = _toy()
    assert subsample(toy, fill="first") is toy


def test_keep_and_fill_are_independent() -> None:
    judged_first = subsample(_toy(), 5, max_queries=2, keep="judged", fill="first")
    assert list(judged_first.corpus) == ["d7", "d2", "d5", "d0", "d1"]  # zero judgment d2 kept, first
    relevant_random = subsample(_toy(), 4, max_queries=2, keep="relevant", seed=1)
    assert {"d7", "d5"} <= relevant_random.corpus.keys() and len(relevant_random.corpus) == 4
    assert list(relevant_random.corpus) == sorted(relevant_random.corpus, key=lambda d: int(d[1:]))
    assert relevant_random.name == "toy-sub4" and relevant_random.queries_without_positive == ("q9",)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_docs is required with fill='random'"):
        subsample(_toy())
    with pytest.raises(ValueError, match="max_docs must be >= 1, got 0"):
        subsample(_toy(), 0)
    with pytest.raises(ValueError, match="max_corpus must be >= 1, got 0"):
        probe_subset(_toy(), max_corpus=0)
    with pytest.raises(ValueError, match="max_queries must be >= 1, got -1"):
        subsample(_toy(), 8, max_queries=-1)
    with pytest.raises(
        ValueError, match="toy/test: the first 2 queries judge 3 documents, more than max_docs=2"
    ):
        subsample(_toy(), 2, max_queries=2)
