"""The in-memory retrieval task every loader (BEIR, MIRACL, XQuAD-R) produces.

One dataclass means the search/scoring code never branches on the source format. A corpus holds
:class:`~lit_nomic.data.formats.Document` s, whose text rule training shares.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from lit_nomic.data.formats import Document

__all__ = ["Document", "RetrievalDataset", "probe_subset", "subsample"]


@dataclass
class RetrievalDataset:
    """Corpus, the queries to evaluate and their judgments (``qrels[qid][doc_id] = relevance``).

    ``queries`` holds only queries that appear in the split's qrels, in file order.
    ``ignore_identical_ids`` marks tasks (ArguAna, Quora) where a query is also a corpus document
    and must not be retrieved as its own answer. ``queries_without_positive`` lists judged queries
    that the loader excluded because none of their judgments is relevant (score > 0).
    """

    name: str
    split: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    language: str | None = None
    ignore_identical_ids: bool = False
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    queries_without_positive: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.corpus:
            raise ValueError(f"{self.name}/{self.split}: empty corpus")
        if not self.queries:
            raise ValueError(f"{self.name}/{self.split}: no queries with judgments")
        missing = [q for q in self.queries if q not in self.qrels]
        if missing:
            raise ValueError(f"{self.name}/{self.split}: query {missing[0]!r} has no qrels entry")

    @property
    def doc_ids(self) -> list[str]:
        return list(self.corpus)

    @property
    def doc_texts(self) -> list[str]:
        return [d.full_text() for d in self.corpus.values()]

    @property
    def query_ids(self) -> list[str]:
        return list(self.queries)

    @property
    def query_texts(self) -> list[str]:
        return list(self.queries.values())

    @property
    def num_relevant(self) -> int:
        return sum(1 for q in self.queries for r in self.qrels[q].values() if r >= 1)


def _judged_documents(dataset: RetrievalDataset, qids: list[str], *, relevant_only: bool) -> dict[str, None]:
    """The corpus documents judged (or judged relevant) for ``qids``, in order of first judgment."""
    judged: dict[str, None] = {}
    for q in qids:
        for doc_id, rel in dataset.qrels[q].items():
            if (rel > 0 or not relevant_only) and doc_id in dataset.corpus:
                judged.setdefault(doc_id, None)
    return judged


def subsample(
    dataset: RetrievalDataset, max_docs: int, *, max_queries: int | None = None, seed: int = 0
) -> RetrievalDataset:
    """A smaller task for smoke tests, benchmarks and suite options (``max_docs``).

    Keeps (the first ``max_queries``) queries, every document judged for them, then random
    distractors up to ``max_docs``. Keeping the judged documents is what makes scores on the
    subset meaningful; the task is renamed ``<name>-sub<max_docs>`` so that its result file and
    table column can never be mistaken for the full benchmark.
    """
    if max_docs <= 0:
        raise ValueError(f"max_docs must be positive, got {max_docs}")
    qids = dataset.query_ids[:max_queries] if max_queries is not None else dataset.query_ids
    judged = _judged_documents(dataset, qids, relevant_only=False)
    if len(judged) > max_docs:
        raise ValueError(
            f"{dataset.name}: the {len(qids)} kept queries judge {len(judged)} documents, more than "
            f"max_docs={max_docs}; lower max_queries or raise max_docs"
        )
    others = [d for d in dataset.corpus if d not in judged]
    rng = random.Random(seed)
    extra_ids = set(rng.sample(others, min(max_docs - len(judged), len(others))))
    keep = judged.keys() | extra_ids
    corpus = {d: doc for d, doc in dataset.corpus.items() if d in keep}
    return replace(
        dataset,
        name=f"{dataset.name}-sub{max_docs}",
        corpus=corpus,
        queries={q: dataset.queries[q] for q in qids},
        qrels={q: dict(dataset.qrels[q]) for q in qids},
        extra={**dataset.extra, "subsample": f"max_docs={max_docs},max_queries={max_queries},seed={seed}"},
    )


def probe_subset(
    dataset: RetrievalDataset, max_queries: int | None = None, max_corpus: int | None = None
) -> RetrievalDataset:
    """A NanoBEIR-style probe (the in-training ``RetrievalEval``): the first ``max_queries`` judged
    queries (file order), and a corpus of their relevant documents followed by the first other
    documents (file order) up to ``max_corpus``.

    Unlike :func:`subsample` (random distractors, every judged document) it is the same set at every
    step without a seed, and cheap; scores are comparable between the steps of one run, not with
    full-corpus numbers, hence the ``-probe`` name. No limits returns ``dataset``.
    """
    if max_queries is None and max_corpus is None:
        return dataset
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    if max_corpus is not None and max_corpus < 1:
        raise ValueError(f"max_corpus must be >= 1, got {max_corpus}")
    qids = dataset.query_ids[:max_queries] if max_queries is not None else dataset.query_ids
    relevant = _judged_documents(dataset, qids, relevant_only=True)
    limit = max_corpus if max_corpus is not None else len(dataset.corpus)
    if len(relevant) > limit:
        raise ValueError(
            f"{dataset.name}/{dataset.split}: the first {len(qids)} queries have {len(relevant)} relevant "
            f"documents, more than max_corpus={limit}; lower max_queries or raise max_corpus"
        )
    keep = dict(relevant)
    for doc_id in dataset.corpus:
        if len(keep) >= limit:
            break
        keep.setdefault(doc_id, None)
    corpus = {d: dataset.corpus[d] for d in keep}
    return RetrievalDataset(
        name=f"{dataset.name}-probe",
        split=dataset.split,
        corpus=corpus,
        queries={q: dataset.queries[q] for q in qids},
        qrels={q: dict(dataset.qrels[q]) for q in qids},
        language=dataset.language,
        ignore_identical_ids=dataset.ignore_identical_ids,
        source=dataset.source,
        extra={**dataset.extra, "probe": f"max_queries={max_queries},max_corpus={max_corpus}"},
    )
