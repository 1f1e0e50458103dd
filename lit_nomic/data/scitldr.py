"""SciTLDR-A (``SciTLDR-A.<split>.jsonl``) as (TLDR or title) -> abstract pairs.

Each line holds the abstract as a list of sentences (``source``), one or more author/peer TLDRs
(``target``) and the paper ``title``. The document is the sentences joined by a space. With
``query_field="target"`` every TLDR is an alternative query for the same abstract and each epoch uses
one of them (drawn from the plan seed); with ``"title"`` the title is the query, the classic
title<->abstract pairing of Nomic Embed's unsupervised mix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lit_nomic.data.jsonl import IndexedJsonlPairs
from lit_nomic.data.paths import resolve_dataset
from lit_nomic.data.records import DataFormatError, OnError, PairRecord, require_text, require_text_list

__all__ = ["SCITLDR_QUERY_FIELDS", "SciTldrExtractor", "SciTldrPairs"]

SCITLDR_QUERY_FIELDS: tuple[str, ...] = ("target", "title")


@dataclass(frozen=True)
class SciTldrExtractor:
    """One SciTLDR line -> record; ``query_field`` is ``target`` (TLDRs) or ``title``."""

    query_field: str = "target"

    def __post_init__(self) -> None:
        if self.query_field not in SCITLDR_QUERY_FIELDS:
            raise ValueError(f"query_field must be one of {SCITLDR_QUERY_FIELDS}, got {self.query_field!r}")

    def __call__(self, obj: dict, where: str) -> PairRecord:
        sentences = obj.get("source")
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise DataFormatError(where, "field 'source' must be a list of sentence strings")
        # Sentence splitting leaves some empty items (train line 1538); they carry no text, so drop them.
        abstract = " ".join(s.strip() for s in sentences if s.strip())
        if self.query_field == "title":
            queries: tuple[str, ...] = (require_text(obj, "title", where).strip(),)
        else:
            queries = tuple(t.strip() for t in require_text_list(obj, "target", where))
        if not abstract:
            raise DataFormatError(where, "field 'source' joins to an empty abstract")
        return PairRecord(queries, (abstract,))


class SciTldrPairs(IndexedJsonlPairs):
    """A SciTLDR file, or the SciTLDR folder plus ``split`` (train | dev | test)."""

    def __init__(
        self,
        name: str,
        path: str | os.PathLike,
        *,
        split: str = "train",
        query_field: str = "target",
        root: str | os.PathLike | None = None,
        on_error: OnError = "raise",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        resolved: Path = resolve_dataset(path, root)
        if resolved.is_dir():
            candidate = resolved / f"SciTLDR-A.{split}.jsonl"
            if not candidate.is_file():
                raise FileNotFoundError(f"source {name!r}: {str(resolved)!r} has no {candidate.name!r}")
            resolved = candidate
        super().__init__(
            name, resolved, SciTldrExtractor(query_field), on_error=on_error, cache_dir=cache_dir
        )
