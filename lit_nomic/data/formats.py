"""The one reader layer for the text formats that training, evaluation and curation share.

* **Lines and JSONL** (plain or ``.gz``): :func:`iter_lines`, :func:`read_text`, :func:`iter_jsonl`
  (sequential reads, line numbers kept) and :func:`parse_json_line` (one line read by byte offset).
  A UTF-8 byte-order mark is accepted; invalid UTF-8, bad JSON and a truncated ``.gz`` raise
  :class:`~lit_nomic.data.records.DataFormatError`, whose message starts with ``file:line``.
* **BEIR folders** (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``): folder detection,
  corpus and query readers, and both qrels readers (the strict one that evaluation uses and the
  tolerant one, with a bad-line policy, that training uses).
* **The BEIR text rule**: :func:`beir_document_text` is the *only* place where a document's title and
  text are joined. Evaluation (:class:`Document`), training (``BeirPairs``) and curation (mining
  corpora) all call it, so a model is trained on exactly the strings it is evaluated on.

Every error is a ``DataFormatError`` (a ``ValueError``) naming the file and the line.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_nomic.data.records import DataFormatError, OnError, SkipReport, handle_bad_line

__all__ = [
    "QRELS_HEADER",
    "DataFormatError",
    "Document",
    "beir_document_text",
    "beir_splits",
    "beir_subsets",
    "field_str",
    "is_beir_collection",
    "is_beir_folder",
    "iter_jsonl",
    "iter_lines",
    "iter_raw_lines",
    "load_corpus",
    "load_qrels_tsv",
    "load_queries",
    "parse_json_line",
    "read_qrels",
    "read_queries",
    "read_text",
]

_BOM = "\ufeff"


# ----------------------------------------------------------------------------------- lines, JSONL
def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(
            f"{path}:{lineno}",
            f"invalid UTF-8 (byte {raw[e.start : e.start + 1]!r} at column {e.start + 1})",
        ) from None


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of plain or ``.gz`` UTF-8 text, line endings kept.

    A leading BOM is dropped; invalid UTF-8 and a truncated or corrupt ``.gz`` raise
    :class:`DataFormatError` naming the file and line.
    """
    p = Path(path)
    lineno = 0
    try:
        with gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):  # noqa: B007 - lineno is read in the except
                line = _decode(raw, p, lineno)
                if lineno == 1 and line.startswith(_BOM):
                    line = line[1:]
                yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(
            f"{p}:{lineno + 1}", f"truncated or corrupt gzip file ({e}); re-download or re-compress it"
        ) from None


def read_text(path: str | Path) -> str:
    """The whole file as text (BOM dropped); invalid UTF-8 names the file and line."""
    p = Path(path)
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataFormatError(
            f"{p}:{lineno}", f"invalid UTF-8 (byte {data[e.start : e.start + 1]!r} at column {column})"
        ) from None
    return text[1:] if text.startswith(_BOM) else text


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)``; blank lines are skipped, bad JSON names file and line."""
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(
                f"{path}:{lineno}", f"malformed JSON ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{lineno}", f"expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def iter_raw_lines(
    read_path: str | Path, cite: str | Path | None = None
) -> Iterator[tuple[int, int, bytes, str]]:
    """``(line_number, byte_offset, raw_line, "file:line")`` of each non-blank line, for offset indexes.

    ``cite`` is the file named in ``"file:line"`` (the ``.gz`` a user gave, when ``read_path`` is its
    decompressed cache copy); by default ``read_path``.
    """
    position = 0
    with open(read_path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            start = position
            position += len(raw)
            if raw.strip():
                yield line_number, start, raw, f"{cite or read_path}:{line_number}"


def parse_json_line(raw: bytes, where: str) -> dict:
    """Decode one JSONL line (read by byte offset) into a dict; any failure names ``where``."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        reason = getattr(exc, "msg", None) or str(exc)
        raise DataFormatError(where, f"malformed JSON ({reason})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(where, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def field_str(obj: dict[str, Any], key: str, path: Path, lineno: int, *, required: bool = True) -> str:
    """A string field (ints accepted for ids, as BEIR dumps sometimes carry numeric ids)."""
    if key not in obj or obj[key] is None:
        if required:
            raise DataFormatError(f"{path}:{lineno}", f"missing field {key!r}")
        return ""
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataFormatError(
            f"{path}:{lineno}", f"field {key!r} must be a string, got {type(value).__name__}"
        )
    return str(value)


# ------------------------------------------------------------------------------- the BEIR text rule
def beir_document_text(title: str, text: str) -> str:
    """What an encoder reads for a BEIR document, following mteb's ``_corpus_to_dict`` exactly.

    ``(title + " " + text).strip()`` when the title is non-empty, else ``text.strip()``. Matching
    it matters because a single stray space changes the tokenisation and thus the scores; training,
    evaluation and curation all read documents through this one function.
    """
    if title:
        return (title + " " + text).strip()
    return text.strip()


@dataclass(frozen=True)
class Document:
    """One corpus document as the file gives it; :meth:`full_text` is what gets encoded."""

    id: str
    title: str
    text: str

    def full_text(self) -> str:
        return beir_document_text(self.title, self.text)


# ------------------------------------------------------------------------------------ BEIR folders
QRELS_HEADER = ("query-id", "corpus-id", "score")


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


def _with_unique_ids(path: Path, what: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(line, _id, object)`` of each line of a BEIR JSONL file; a repeated id fails naming both lines."""
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        item_id = field_str(obj, "_id", path, lineno)
        if item_id in first_line:
            raise DataFormatError(
                f"{path}:{lineno}", f"duplicate {what} id {item_id!r} (first at line {first_line[item_id]})"
            )
        first_line[item_id] = lineno
        yield lineno, item_id, obj


def load_corpus(path: Path) -> dict[str, Document]:
    """A whole ``corpus.jsonl`` (strict: duplicate ids and empty documents are errors)."""
    corpus: dict[str, Document] = {}
    for lineno, doc_id, obj in _with_unique_ids(path, "document"):
        text = field_str(obj, "text", path, lineno)
        title = field_str(obj, "title", path, lineno, required=False)
        if not title.strip() and not text.strip():
            raise DataFormatError(f"{path}:{lineno}", f"document {doc_id!r} has empty 'title' and 'text'")
        corpus[doc_id] = Document(id=doc_id, title=title, text=text)
    if not corpus:
        raise DataFormatError(str(path), "empty corpus (no documents)")
    return corpus


@dataclass(frozen=True)
class Queries:
    """Query texts by id, and the line each was read from (for error messages)."""

    texts: dict[str, str]
    line: dict[str, int]


def read_queries(path: Path) -> Queries:
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, qid, obj in _with_unique_ids(path, "query"):
        queries[qid] = field_str(obj, "text", path, lineno)
        lines[qid] = lineno
    return Queries(queries, lines)


def load_queries(path: Path) -> dict[str, str]:
    return read_queries(path).texts


def _qrels_score(raw: str, where: str, what: str = "") -> int:
    try:
        return int(raw)
    except ValueError:
        raise DataFormatError(where, f"score {raw!r}{what} is not an integer") from None


def load_qrels_tsv(
    path: Path, *, known_queries: dict[str, str] | None = None, known_docs: dict[str, Document] | None = None
) -> dict[str, dict[str, int]]:
    """Parse a BEIR qrels TSV strictly (evaluation), checking ids against the corpus/queries when given.

    The header is required; every score is kept (0 and negative too); a pair judged twice with
    different scores is an error.
    """
    qrels: dict[str, dict[str, int]] = {}
    seen_at: dict[tuple[str, str], int] = {}
    reader = csv.reader((line for _, line in iter_lines(path)), delimiter="\t", quoting=csv.QUOTE_MINIMAL)
    header = next(reader, None)
    if header is None:
        raise DataFormatError(str(path), f"empty qrels file (expected header {QRELS_HEADER})")
    if tuple(h.strip() for h in header) != QRELS_HEADER:
        raise DataFormatError(f"{path}:1", f"expected header {QRELS_HEADER}, got {tuple(header)}")
    for row in reader:
        lineno = reader.line_num
        where = f"{path}:{lineno}"
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise DataFormatError(where, f"expected 3 tab-separated columns, got {len(row)}: {row!r}")
        qid, doc_id, raw = (c.strip() for c in row)
        score = _qrels_score(raw, where, f" for query {qid!r}, doc {doc_id!r}")
        if known_queries is not None and qid not in known_queries:
            raise DataFormatError(where, f"query id {qid!r} is not in queries.jsonl")
        if known_docs is not None and doc_id not in known_docs:
            raise DataFormatError(where, f"corpus id {doc_id!r} (query {qid!r}) is not in corpus.jsonl")
        prev = qrels.get(qid, {}).get(doc_id)
        if prev is not None and prev != score:
            raise DataFormatError(
                where,
                f"query {qid!r}, doc {doc_id!r} judged {score} here but {prev} "
                f"at line {seen_at[(qid, doc_id)]}",
            )
        qrels.setdefault(qid, {})[doc_id] = score
        seen_at.setdefault((qid, doc_id), lineno)
    return qrels


def read_qrels(path: Path, on_error: OnError, report: SkipReport) -> list[tuple[str, str, int, str]]:
    """Positive qrels rows in file order (training): ``(query_id, doc_id, score, "file:line")``.

    Tolerant where training data varies: the header is optional, whitespace separates columns when
    tabs do not, and a pair may repeat (each positive row is one training pair). Bad lines follow
    ``on_error``.
    """
    rows: list[tuple[str, str, int, str]] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 3:
                parts = line.split()
            try:
                if len(parts) != 3:
                    raise DataFormatError(where, f"expected 3 tab-separated columns, got {len(parts)}")
                try:
                    score = int(parts[2])
                except ValueError:
                    if line_number == 1:
                        continue  # the "query-id corpus-id score" header
                    raise DataFormatError(where, f"score {parts[2]!r} is not an integer") from None
            except DataFormatError as exc:
                handle_bad_line(exc, on_error, report)
                continue
            if score > 0:
                rows.append((parts[0].strip(), parts[1].strip(), score, where))
    return rows
