"""BEIR-format folders: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

A BEIR *collection* is a folder of such folders, one per subset: CQADupStack ships as
``cqadupstack/<forum>/`` (12 forums), each scored on its own and averaged, as MTEB does.

The loader is strict on purpose: a duplicated id or a qrels row pointing at a missing document
does not crash BEIR's own loader, it silently changes the score. Every error names the file, the
line and the offending id. It is at least as strict as the training reader
(``lit_nomic.data.beir_pairs``): an empty judged query or an empty document (empty title *and*
text) is an error, a UTF-8 byte-order mark is accepted, and a query whose judgments are all 0 (no
relevant document) is excluded from the evaluation and counted, never silently scored 0.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from lit_nomic.evaluation.files import field_str, iter_jsonl, iter_lines
from lit_nomic.evaluation.retrieval_data import Document, RetrievalDataset

QRELS_HEADER = ("query-id", "corpus-id", "score")

# BEIR tasks where a document with the query's own id is never retrieved for it, as mteb's tasks set
# ignore_identical_ids (ArguAna, FEVER, FiQA2018, MSMARCO, QuoraRetrieval): in ArguAna and Quora the
# queries are corpus documents; in FiQA and MS MARCO numeric query and document ids collide.
IDENTICAL_ID_TASKS = frozenset({"arguana", "fever", "fiqa", "msmarco", "quora"})


def is_beir_folder(path: Path) -> bool:
    return (
        (path / "corpus.jsonl").is_file() and (path / "queries.jsonl").is_file() and (path / "qrels").is_dir()
    )


def beir_subsets(path: Path) -> list[str]:
    """The BEIR folders directly inside ``path`` (CQADupStack's forums), sorted."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and is_beir_folder(p))


def is_beir_collection(path: Path) -> bool:
    """A folder that is not itself BEIR but holds BEIR folders (``cqadupstack/<forum>/``)."""
    return path.is_dir() and not is_beir_folder(path) and bool(beir_subsets(path))


def beir_splits(path: Path) -> list[str]:
    return sorted(p.stem for p in (path / "qrels").glob("*.tsv"))


def load_corpus(path: Path) -> dict[str, Document]:
    corpus: dict[str, Document] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        doc_id = field_str(obj, "_id", path, lineno)
        if doc_id in corpus:
            raise ValueError(
                f"{path}:{lineno}: duplicate document id {doc_id!r} (first at line {first_line[doc_id]})"
            )
        text = field_str(obj, "text", path, lineno)
        title = field_str(obj, "title", path, lineno, required=False)
        if not title.strip() and not text.strip():
            raise ValueError(f"{path}:{lineno}: document {doc_id!r} has empty 'title' and 'text'")
        corpus[doc_id] = Document(id=doc_id, title=title, text=text)
        first_line[doc_id] = lineno
    if not corpus:
        raise ValueError(f"{path}: empty corpus (no documents)")
    return corpus


@dataclass(frozen=True)
class _Queries:
    texts: dict[str, str]
    line: dict[str, int]


def _read_queries(path: Path) -> _Queries:
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        qid = field_str(obj, "_id", path, lineno)
        if qid in queries:
            raise ValueError(f"{path}:{lineno}: duplicate query id {qid!r} (first at line {first_line[qid]})")
        queries[qid] = field_str(obj, "text", path, lineno)
        first_line[qid] = lineno
    return _Queries(queries, first_line)


def load_queries(path: Path) -> dict[str, str]:
    return _read_queries(path).texts


def load_qrels_tsv(
    path: Path, *, known_queries: dict[str, str] | None = None, known_docs: dict[str, Document] | None = None
) -> dict[str, dict[str, int]]:
    """Parse a BEIR qrels TSV, checking ids against the corpus/queries when given."""
    qrels: dict[str, dict[str, int]] = {}
    seen_at: dict[tuple[str, str], int] = {}
    reader = csv.reader((line for _, line in iter_lines(path)), delimiter="\t", quoting=csv.QUOTE_MINIMAL)
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{path}: empty qrels file (expected header {QRELS_HEADER})")
    if tuple(h.strip() for h in header) != QRELS_HEADER:
        raise ValueError(f"{path}:1: expected header {QRELS_HEADER}, got {tuple(header)}")
    for row in reader:
        lineno = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise ValueError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(row)}: {row!r}")
        qid, doc_id, raw = (c.strip() for c in row)
        try:
            score = int(raw)
        except ValueError:
            raise ValueError(
                f"{path}:{lineno}: score {raw!r} for query {qid!r}, doc {doc_id!r} is not an integer"
            ) from None
        if known_queries is not None and qid not in known_queries:
            raise ValueError(f"{path}:{lineno}: query id {qid!r} is not in queries.jsonl")
        if known_docs is not None and doc_id not in known_docs:
            raise ValueError(f"{path}:{lineno}: corpus id {doc_id!r} (query {qid!r}) is not in corpus.jsonl")
        prev = qrels.get(qid, {}).get(doc_id)
        if prev is not None and prev != score:
            raise ValueError(
                f"{path}:{lineno}: query {qid!r}, doc {doc_id!r} judged {score} here but {prev} "
                f"at line {seen_at[(qid, doc_id)]}"
            )
        qrels.setdefault(qid, {})[doc_id] = score
        seen_at.setdefault((qid, doc_id), lineno)
    return qrels


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
    read = _read_queries(queries_path)
    all_queries = read.texts
    qrels = load_qrels_tsv(qrels_path, known_queries=all_queries, known_docs=corpus)
    if not qrels:
        raise ValueError(f"{qrels_path}: no judgments")
    for qid in qrels:
        if not all_queries[qid].strip():
            raise ValueError(f"{queries_path}:{read.line[qid]}: query {qid!r} has an empty 'text'")
    positive = {q for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    if not positive:
        raise ValueError(
            f"{qrels_path}: none of the {len(qrels)} judged queries has a relevant document (score > 0); "
            "nothing to evaluate"
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
