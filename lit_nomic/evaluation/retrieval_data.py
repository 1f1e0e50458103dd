"""The in-memory retrieval task every loader (BEIR, MIRACL, XQuAD-R) produces.

One dataclass means the search/scoring code never branches on the source format. A corpus holds
:class:`~lit_nomic.data.formats.Document` s, whose text rule training shares.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Literal

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


Keep = Literal["judged", "relevant"]
Fill = Literal["random", "first"]


def subsample(
    dataset: RetrievalDataset,
    max_docs: int | None = None,
    *,
    max_queries: int | None = None,
    keep: Keep = "judged",
    fill: Fill = "random",
    seed: int = 0,
) -> RetrievalDataset:
    """A smaller task: the first ``max_queries`` queries, documents they judge, distractors up to ``max_docs``.

    Keeping the judged documents is what makes scores on a subset meaningful. ``keep`` says which:
    every document judged for the kept queries (``"judged"``) or only those judged relevant
    (``"relevant"``). ``fill`` says how the rest of the corpus, up to ``max_docs``, is chosen:

    * ``"random"``: distractors drawn with ``seed``; the corpus keeps file order. The evaluation
      subsample (suite option ``max_docs``, smoke tests, benchmarks), named ``<name>-sub<max_docs>``
      with ``extra["subsample"]``; ``max_docs`` is required.
    * ``"first"``: the first other documents in file order, after the kept ones (the same set at every
      call without a seed, and cheap). The in-training probe (``RetrievalEval``, NanoBEIR-style; see
      :func:`probe_subset`), named ``<name>-probe`` with ``extra["probe"]``: its scores compare between
      the steps of one run, not with full-corpus numbers. ``max_docs=None`` keeps the whole corpus,
      both limits None return ``dataset`` itself, and the subset lists no ``queries_without_positive``
      (its result files have never counted them).

    The names keep a subset's result file and table column from being mistaken for the full benchmark
    or for the other kind of subset.
    """
    probe = fill == "first"
    limit_name = "max_corpus" if probe else "max_docs"
    if probe and max_queries is None and max_docs is None:
        return dataset
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    if max_docs is None and not probe:
        raise ValueError("max_docs is required with fill='random'")
    if max_docs is not None and max_docs < 1:
        raise ValueError(f"{limit_name} must be >= 1, got {max_docs}")
    qids = dataset.query_ids[:max_queries] if max_queries is not None else dataset.query_ids
    kept = _judged_documents(dataset, qids, relevant_only=keep == "relevant")
    limit = max_docs if max_docs is not None else len(dataset.corpus)
    if len(kept) > limit:
        judge = "have" if keep == "relevant" else "judge"
        raise ValueError(
            f"{dataset.name}/{dataset.split}: the first {len(qids)} queries {judge} {len(kept)} "
            f"{'relevant ' if keep == 'relevant' else ''}documents, more than {limit_name}={limit}; "
            f"lower max_queries or raise {limit_name}"
        )
    others = [d for d in dataset.corpus if d not in kept]
    if probe:
        chosen = [*kept, *others[: limit - len(kept)]]
    else:
        extra_ids = set(random.Random(seed).sample(others, min(limit - len(kept), len(others))))
        chosen = [d for d in dataset.corpus if d in kept or d in extra_ids]
    label = (
        {"probe": f"max_queries={max_queries},max_corpus={max_docs}"}
        if probe
        else {"subsample": f"max_docs={max_docs},max_queries={max_queries},seed={seed}"}
    )
    return replace(
        dataset,
        name=f"{dataset.name}-probe" if probe else f"{dataset.name}-sub{max_docs}",
        corpus={d: dataset.corpus[d] for d in chosen},
        queries={q: dataset.queries[q] for q in qids},
        qrels={q: dict(dataset.qrels[q]) for q in qids},
        extra={**dataset.extra, **label},
        queries_without_positive=() if probe else dataset.queries_without_positive,
    )


def probe_subset(
    dataset: RetrievalDataset, max_queries: int | None = None, max_corpus: int | None = None
) -> RetrievalDataset:
    """The in-training probe of ``RetrievalEval``: :func:`subsample` keeping the relevant documents and
    filling with the first others (``keep="relevant", fill="first"``), ``max_corpus`` documents in all.
    """
    return subsample(dataset, max_corpus, max_queries=max_queries, keep="relevant", fill="first")
