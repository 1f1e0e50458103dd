"""MIRACL-format reader: per-language folders with TREC topics/qrels and a JSONL corpus.

Accepted layout per language folder (the compact names first, then the official release names):

* topics: ``topics.<split>.tsv`` or ``topics/topics.miracl-v1.0-<lang>-<split>.tsv`` — ``qid<TAB>query``
* qrels:  ``qrels.<split>.tsv``  or ``qrels/qrels.miracl-v1.0-<lang>-<split>.tsv`` — ``qid Q0 docid rel``
* corpus: ``corpus.jsonl[.gz]`` or ``corpus/*.jsonl[.gz]`` — objects with ``docid`` (or ``_id``),
  ``title``, ``text``

A MIRACL root holds one such folder per language, named by its ISO code.
"""

from __future__ import annotations

import os
from pathlib import Path

from lit_nomic.evaluation.files import field_str, iter_jsonl, iter_lines
from lit_nomic.evaluation.retrieval_data import Document, RetrievalDataset


def _first_existing(candidates: list[Path], what: str, folder: Path) -> Path:
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"{folder}: no {what}; looked for {[str(c.relative_to(folder)) for c in candidates]}"
    )


def topics_path(folder: Path, split: str) -> Path:
    lang = folder.name
    return _first_existing(
        [
            folder / f"topics.{split}.tsv",
            folder / "topics" / f"topics.miracl-v1.0-{lang}-{split}.tsv",
        ],
        f"topics for split {split!r}",
        folder,
    )


def qrels_path(folder: Path, split: str) -> Path:
    lang = folder.name
    return _first_existing(
        [
            folder / f"qrels.{split}.tsv",
            folder / "qrels" / f"qrels.miracl-v1.0-{lang}-{split}.tsv",
        ],
        f"qrels for split {split!r}",
        folder,
    )


def corpus_files(folder: Path) -> list[Path]:
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (folder / name).is_file():
            return [folder / name]
    if (folder / "corpus").is_dir():
        files = sorted([*(folder / "corpus").glob("*.jsonl"), *(folder / "corpus").glob("*.jsonl.gz")])
        if files:
            return files
    raise FileNotFoundError(f"{folder}: no corpus.jsonl, corpus.jsonl.gz or corpus/*.jsonl[.gz]")


def is_miracl_language_folder(path: Path) -> bool:
    has_topics = any(path.glob("topics.*.tsv")) or (path / "topics").is_dir()
    has_qrels = any(path.glob("qrels.*.tsv")) or (path / "qrels").is_dir()
    try:
        corpus_files(path)
    except FileNotFoundError:
        return False
    return has_topics and has_qrels and not (path / "queries.jsonl").exists()


def miracl_languages(root: str | os.PathLike) -> list[str]:
    base = Path(root)
    return sorted(p.name for p in base.iterdir() if p.is_dir() and is_miracl_language_folder(p))


def load_topics(path: Path) -> dict[str, str]:
    topics: dict[str, str] = {}
    for lineno, line in iter_lines(path):
        line = line.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'qid<TAB>query', got {len(parts)} fields")
        qid, text = parts[0].strip(), parts[1]
        if qid in topics:
            raise ValueError(f"{path}:{lineno}: duplicate query id {qid!r}")
        topics[qid] = text
    return topics


def load_trec_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise ValueError(f"{path}:{lineno}: expected 'qid Q0 docid rel', got {len(parts)} fields")
        qid, _, doc_id, raw = parts
        try:
            rel = int(raw)
        except ValueError:
            raise ValueError(
                f"{path}:{lineno}: relevance {raw!r} of query {qid!r}, doc {doc_id!r} is not an integer"
            ) from None
        prev = qrels.get(qid, {}).get(doc_id)
        if prev is not None and prev != rel:
            raise ValueError(f"{path}:{lineno}: query {qid!r}, doc {doc_id!r} judged both {prev} and {rel}")
        qrels.setdefault(qid, {})[doc_id] = rel
    return qrels


def load_miracl_corpus(files: list[Path]) -> dict[str, Document]:
    corpus: dict[str, Document] = {}
    origin: dict[str, str] = {}
    for path in files:
        for lineno, obj in iter_jsonl(path):
            key = "docid" if "docid" in obj else "_id"
            doc_id = field_str(obj, key, path, lineno)
            if doc_id in corpus:
                raise ValueError(
                    f"{path}:{lineno}: duplicate document id {doc_id!r} (first at {origin[doc_id]})"
                )
            corpus[doc_id] = Document(
                id=doc_id,
                title=field_str(obj, "title", path, lineno, required=False),
                text=field_str(obj, "text", path, lineno),
            )
            origin[doc_id] = f"{path}:{lineno}"
    if not corpus:
        raise ValueError(f"empty corpus in {[str(f) for f in files]}")
    return corpus


def load_miracl(folder: str | os.PathLike, split: str = "dev", *, name: str = "miracl") -> RetrievalDataset:
    """One language of MIRACL; the folder name is the language code."""
    path = Path(folder)
    t_path, q_path = topics_path(path, split), qrels_path(path, split)
    topics = load_topics(t_path)
    qrels = load_trec_qrels(q_path)
    corpus = load_miracl_corpus(corpus_files(path))
    for qid, docs in qrels.items():
        if qid not in topics:
            raise ValueError(f"{q_path}: query id {qid!r} is not in {t_path.name}")
        for doc_id in docs:
            if doc_id not in corpus:
                raise ValueError(f"{q_path}: doc id {doc_id!r} (query {qid!r}) is not in the corpus")
    if not qrels:
        raise ValueError(f"{q_path}: no judgments")
    return RetrievalDataset(
        name=name,
        split=split,
        corpus=corpus,
        queries={q: t for q, t in topics.items() if q in qrels},
        qrels=qrels,
        language=path.name,
        source=str(path),
    )
