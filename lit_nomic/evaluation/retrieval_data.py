"""The in-memory retrieval task every loader (BEIR, MIRACL, XQuAD-R) produces.

One dataclass means the search/scoring code never branches on the source format.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str

    def full_text(self) -> str:
        """What the encoder reads, following mteb's ``_corpus_to_dict`` exactly.

        ``(title + " " + text).strip()`` when the title is non-empty, else ``text.strip()``; matching
        it matters because a single stray space changes the tokenisation and thus the scores.
        """
        if self.title:
            return (self.title + " " + self.text).strip()
        return self.text.strip()


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


def subsample(
    dataset: RetrievalDataset, max_docs: int, *, max_queries: int | None = None, seed: int = 0
) -> RetrievalDataset:
    """A smaller task for smoke tests and quick checks during training.

    Keeps (the first ``max_queries``) queries, every document judged for them, then random
    distractors up to ``max_docs``. Keeping the judged documents is what makes scores on the
    subset meaningful; the task is renamed ``<name>-sub<max_docs>`` so that its result file and
    table column can never be mistaken for the full benchmark.
    """
    if max_docs <= 0:
        raise ValueError(f"max_docs must be positive, got {max_docs}")
    qids = dataset.query_ids[:max_queries] if max_queries is not None else dataset.query_ids
    judged: list[str] = []
    seen: set[str] = set()
    for q in qids:
        for d in dataset.qrels[q]:
            if d in dataset.corpus and d not in seen:
                seen.add(d)
                judged.append(d)
    if len(judged) > max_docs:
        raise ValueError(
            f"{dataset.name}: the {len(qids)} kept queries judge {len(judged)} documents, more than "
            f"max_docs={max_docs}; lower max_queries or raise max_docs"
        )
    others = [d for d in dataset.corpus if d not in seen]
    rng = random.Random(seed)
    extra_ids = set(rng.sample(others, min(max_docs - len(judged), len(others))))
    keep = seen | extra_ids
    corpus = {d: doc for d, doc in dataset.corpus.items() if d in keep}
    return replace(
        dataset,
        name=f"{dataset.name}-sub{max_docs}",
        corpus=corpus,
        queries={q: dataset.queries[q] for q in qids},
        qrels={q: dict(dataset.qrels[q]) for q in qids},
        extra={**dataset.extra, "subsample": f"max_docs={max_docs},max_queries={max_queries},seed={seed}"},
    )
