"""BEIR-format folders: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

A BEIR *collection* is a folder of such folders, one per subset: CQADupStack ships as
``cqadupstack/<forum>/`` (12 forums), each scored on its own and averaged, as MTEB does.

The readers (folder detection, corpus, queries, qrels and the title + text rule) live in
:mod:`lit_nomic.data.formats`, shared with training and curation; this module assembles one split
into a :class:`RetrievalDataset`. The loader is strict on purpose: a duplicated id or a qrels row pointing at a missing document
does not crash BEIR's own loader, it silently changes the score. Every error names the file, the
line and the offending id. It is at least as strict as the training reader
(``lit_nomic.data.beir_pairs``): an empty judged query or an empty document (empty title *and*
text) is an error, a UTF-8 byte-order mark is accepted, and a query whose judgments are all 0 (no
relevant document) is excluded from the evaluation and counted, never silently scored 0.
"""

from __future__ import annotations

import os
from pathlib import Path

from lit_nomic.data.formats import (
    QRELS_HEADER,
    DataFormatError,
    Document,
    beir_splits,
    beir_subsets,
    is_beir_collection,
    is_beir_folder,
    load_corpus,
    load_qrels_tsv,
    load_queries,
    read_queries,
)
from lit_nomic.evaluation.retrieval_data import RetrievalDataset

__all__ = [
    "IDENTICAL_ID_TASKS",
    "QRELS_HEADER",
    "Document",
    "beir_splits",
    "beir_subsets",
    "is_beir_collection",
    "is_beir_folder",
    "load_beir",
    "load_corpus",
    "load_qrels_tsv",
    "load_queries",
]

# BEIR tasks where a document with the query's own id is never retrieved for it, as mteb's tasks set
# ignore_identical_ids (ArguAna, FEVER, FiQA2018, MSMARCO, QuoraRetrieval): in ArguAna and Quora the
# queries are corpus documents; in FiQA and MS MARCO numeric query and document ids collide.
IDENTICAL_ID_TASKS = frozenset({"arguana", "fever", "fiqa", "msmarco", "quora"})


def load_beir(
    folder: str | os.PathLike,
    split: str = "test",
    *,
    name: str | None = None,
    ignore_identical_ids: bool | None = None,
) -> RetrievalDataset:
    """Load one split; only queries judged in that split are kept (as BEIR and mteb do).

    Of those, queries whose judgments are all 0 have no relevant document, so every metric is 0 or
    undefined for them: they are dropped and listed in ``queries_without_positive`` (the result
    JSON counts them). A split without any positive judgment is an error.
    """
    path = Path(folder)
    for required in ("corpus.jsonl", "queries.jsonl"):
        if not (path / required).is_file():
            raise FileNotFoundError(f"{path}: not a BEIR folder, missing {required}")
    qrels_path = path / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = beir_splits(path) if (path / "qrels").is_dir() else []
        raise FileNotFoundError(f"{qrels_path}: no qrels for split {split!r}; available splits: {available}")
    task_name = name or path.name
    corpus = load_corpus(path / "corpus.jsonl")
    queries_path = path / "queries.jsonl"
    read = read_queries(queries_path)
    all_queries = read.texts
    qrels = load_qrels_tsv(qrels_path, known_queries=all_queries, known_docs=corpus)
    if not qrels:
        raise DataFormatError(str(qrels_path), "no judgments")
    for qid in qrels:
        if not all_queries[qid].strip():
            raise DataFormatError(f"{queries_path}:{read.line[qid]}", f"query {qid!r} has an empty 'text'")
    positive = {q for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    if not positive:
        raise DataFormatError(
            str(qrels_path),
            f"none of the {len(qrels)} judged queries has a relevant document (score > 0); nothing to evaluate",
        )
    without_positive = tuple(q for q in all_queries if q in qrels and q not in positive)
    queries = {q: text for q, text in all_queries.items() if q in positive}
    qrels = {q: docs for q, docs in qrels.items() if q in positive}
    if ignore_identical_ids is None:
        ignore_identical_ids = task_name.lower() in IDENTICAL_ID_TASKS
    return RetrievalDataset(
        name=task_name,
        split=split,
        corpus=corpus,
        queries=queries,
        qrels=qrels,
        ignore_identical_ids=ignore_identical_ids,
        source=str(path),
        queries_without_positive=without_positive,
    )
