"""A BEIR folder (``queries.jsonl``, ``corpus.jsonl``, ``qrels/<split>.tsv``) as training pairs.

One pair per qrel with score > 0: (query text, text of the judged document), in qrels file order.
SciFact train therefore yields its 919 pairs. The document text is
:func:`lit_nomic.data.formats.beir_document_text`, the rule evaluation encodes documents with (mteb's),
so training and evaluation read a document as the same string. Only the query and document lines that a
qrel needs are indexed (id -> byte offset); texts are read by offset at batch time, so a corpus of
millions of passages costs a parse pass and a small dict, not its texts in memory.

BEIR training sets repeat documents (SciFact train: 919 pairs over 565 distinct documents) and queries
(809 distinct), so the batch's ``doc_ids`` duplicate mask matters for them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lit_nomic.data import formats
from lit_nomic.data.formats import iter_raw_lines, parse_json_line, read_qrels
from lit_nomic.data.paths import resolve_dataset
from lit_nomic.data.records import (
    DataFormatError,
    IndexedSource,
    OnError,
    PairRecord,
    SkipReport,
    handle_bad_line,
    require_text,
)
from lit_nomic.data.shards import ShardReader

__all__ = ["BeirPairs", "document_text", "read_qrels"]


def document_text(obj: dict, where: str) -> str:
    """A corpus line's text by the shared BEIR rule (:func:`lit_nomic.data.formats.beir_document_text`).

    Stricter than evaluation on types: ``text`` must be a string, ``title`` a string or absent/null.
    """
    text = obj.get("text")
    if not isinstance(text, str):
        raise DataFormatError(where, f"field 'text' must be a string, got {type(text).__name__}")
    title = obj.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise DataFormatError(where, f"field 'title' must be a string, got {type(title).__name__}")
    joined = formats.beir_document_text(title, text)
    if not joined:
        raise DataFormatError(where, "document has empty 'title' and 'text'")
    return joined


def _index_ids(
    path: Path, wanted: set[str], on_error: OnError, report: SkipReport, check: str
) -> dict[str, tuple[int, int]]:
    """Byte (offset, length) of each wanted ``_id`` in a BEIR JSONL file; validates the wanted lines."""
    found: dict[str, tuple[int, int]] = {}
    first_line: dict[str, int] = {}
    for line_number, start, raw, where in iter_raw_lines(path):
        try:
            obj = parse_json_line(raw, where)
            doc_id = obj.get("_id")
            if not isinstance(doc_id, str | int) or isinstance(doc_id, bool):
                raise DataFormatError(where, "missing or non-string field '_id'")
            doc_id = str(doc_id)
            if doc_id not in wanted:
                continue
            if doc_id in first_line:
                raise DataFormatError(where, f"duplicate _id {doc_id!r} (first at line {first_line[doc_id]})")
            first_line[doc_id] = line_number
            if check == "query":
                require_text(obj, "text", where)
            else:
                document_text(obj, where)
        except DataFormatError as exc:
            handle_bad_line(exc, on_error, report)
            continue
        found[doc_id] = (start, len(raw))
    return found


class BeirPairs(IndexedSource):
    """Training pairs of one BEIR split; ``len`` is the number of positive qrels kept."""

    def __init__(
        self,
        name: str,
        path: str | os.PathLike,
        *,
        split: str = "train",
        root: str | os.PathLike | None = None,
        on_error: OnError = "raise",
    ) -> None:
        self.name = name
        folder = resolve_dataset(path, root)
        self.folder = folder
        self.queries_path = folder / "queries.jsonl"
        self.corpus_path = folder / "corpus.jsonl"
        self.qrels_path = folder / "qrels" / f"{split}.tsv"
        for required in (self.queries_path, self.corpus_path, self.qrels_path):
            if not required.is_file():
                raise FileNotFoundError(
                    f"source {name!r}: BEIR folder {str(folder)!r} lacks {required.name!r}"
                )
        self._report = SkipReport(name)
        qrels = read_qrels(self.qrels_path, on_error, self._report)
        queries = _index_ids(self.queries_path, {q for q, _, _, _ in qrels}, on_error, self._report, "query")
        docs = _index_ids(self.corpus_path, {d for _, d, _, _ in qrels}, on_error, self._report, "doc")
        rows: list[tuple[int, int, int, int]] = []
        for query_id, doc_id, _, where in qrels:
            try:
                if query_id not in queries:
                    raise DataFormatError(
                        where, f"query id {query_id!r} has no usable line in {self.queries_path.name}"
                    )
                if doc_id not in docs:
                    raise DataFormatError(
                        where, f"corpus id {doc_id!r} has no usable line in {self.corpus_path.name}"
                    )
            except DataFormatError as exc:
                handle_bad_line(exc, on_error, self._report)
                continue
            rows.append((*queries[query_id], *docs[doc_id]))
        self._rows = np.array(rows, dtype=np.int64).reshape(-1, 4)
        self._reader = ShardReader([self.queries_path, self.corpus_path])
        self._report.log(len(self))
        if len(self) == 0:
            raise DataFormatError(str(self.qrels_path), f"source {name!r} has no positive qrels")

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    def record(self, index: int) -> PairRecord:
        self._check_row(index)
        q_off, q_len, d_off, d_len = (int(v) for v in self._rows[index])
        q_where = f"{self.queries_path} @ byte {q_off}"
        d_where = f"{self.corpus_path} @ byte {d_off}"
        query = require_text(parse_json_line(self._reader.read(0, q_off, q_len), q_where), "text", q_where)
        document = document_text(parse_json_line(self._reader.read(1, d_off, d_len), d_where), d_where)
        return PairRecord((query,), (document,))
