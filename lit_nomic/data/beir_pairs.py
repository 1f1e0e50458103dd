"""A BEIR folder (``queries.jsonl``, ``corpus.jsonl``, ``qrels/<split>.tsv``) as training pairs.

One pair per qrel with score > 0: (query text, ``title + " " + text`` of the judged document), in qrels
file order. SciFact train therefore yields its 919 pairs. Only the query and document lines that a
qrel needs are indexed (id -> byte offset); texts are read by offset at batch time, so a corpus of
millions of passages costs a parse pass and a small dict, not its texts in memory.

BEIR training sets repeat documents (SciFact train: 919 pairs over 565 distinct documents) and queries
(809 distinct), so the batch's ``doc_ids`` duplicate mask matters for them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lit_nomic.data.records import (
    DataFormatError,
    OnError,
    PairRecord,
    SkipReport,
    handle_bad_line,
    require_text,
)
from lit_nomic.data.shards import ShardReader, parse_json_line
from lit_nomic.paths import resolve_dataset

__all__ = ["BeirPairs", "beir_document_text", "read_qrels"]


def beir_document_text(obj: dict, where: str) -> str:
    """``title + " " + text`` (just ``text`` when the title is absent or empty), as BEIR models encode it."""
    text = obj.get("text")
    if not isinstance(text, str):
        raise DataFormatError(where, f"field 'text' must be a string, got {type(text).__name__}")
    title = obj.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise DataFormatError(where, f"field 'title' must be a string, got {type(title).__name__}")
    joined = f"{title.strip()} {text.strip()}".strip()
    if not joined:
        raise DataFormatError(where, "document has empty 'title' and 'text'")
    return joined


def read_qrels(path: Path, on_error: OnError, report: SkipReport) -> list[tuple[str, str, int, str]]:
    """Rows ``(query_id, doc_id, score, "file:line")`` with score > 0; an optional header line is skipped."""
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


def _index_ids(
    path: Path, wanted: set[str], on_error: OnError, report: SkipReport, check: str
) -> dict[str, tuple[int, int]]:
    """Byte (offset, length) of each wanted ``_id`` in a BEIR JSONL file; validates the wanted lines."""
    found: dict[str, tuple[int, int]] = {}
    first_line: dict[str, int] = {}
    position = 0
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            start = position
            position += len(raw)
            if not raw.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                obj = parse_json_line(raw, where)
                doc_id = obj.get("_id")
                if not isinstance(doc_id, str | int) or isinstance(doc_id, bool):
                    raise DataFormatError(where, "missing or non-string field '_id'")
                doc_id = str(doc_id)
                if doc_id not in wanted:
                    continue
                if doc_id in first_line:
                    raise DataFormatError(
                        where, f"duplicate _id {doc_id!r} (first at line {first_line[doc_id]})"
                    )
                first_line[doc_id] = line_number
                if check == "query":
                    require_text(obj, "text", where)
                else:
                    beir_document_text(obj, where)
            except DataFormatError as exc:
                handle_bad_line(exc, on_error, report)
                continue
            found[doc_id] = (start, len(raw))
    return found


class BeirPairs:
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

    @property
    def skip_report(self) -> SkipReport:
        return self._report

    @property
    def skipped(self) -> int:
        return self._report.skipped

    def record(self, index: int) -> PairRecord:
        if not 0 <= index < len(self):
            raise IndexError(f"source {self.name!r}: row {index} out of range [0, {len(self)})")
        q_off, q_len, d_off, d_len = (int(v) for v in self._rows[index])
        q_where = f"{self.queries_path} @ byte {q_off}"
        d_where = f"{self.corpus_path} @ byte {d_off}"
        query = require_text(parse_json_line(self._reader.read(0, q_off, q_len), q_where), "text", q_where)
        document = beir_document_text(parse_json_line(self._reader.read(1, d_off, d_len), d_where), d_where)
        return PairRecord((query,), (document,))
