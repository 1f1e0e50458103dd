"""The pair data that curation reads: anything the training data module reads, opened the same way.

``data`` is a mixture file (``.yaml``/``.yml``/``.json``, every source or the ``--source`` ones;
``per_language`` entries expanded), a BEIR folder (the ``split`` qrels) or JSONL pairs (a file, a
folder of shards or a glob, with the usual columns). Sources are opened with
:func:`lit_nomic.data.mixture.open_source`, so a bad line fails with the reader's ``file:line``
message (``on_error="raise"``), or is skipped and counted in the report (``on_error="skip"``).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from lit_nomic.curation.common import CurationError
from lit_nomic.data.formats import is_beir_folder
from lit_nomic.data.mixture import SourceSpec, load_mixture, open_source
from lit_nomic.data.records import OnError, PairSource

__all__ = ["open_pair_sources", "pair_specs", "spec_identity"]

_MIXTURE_SUFFIXES = (".yaml", ".yml", ".json")


def _find(data: str, root: str | os.PathLike | None) -> Path | None:
    from lit_nomic.data.paths import data_root

    given = Path(data).expanduser()
    if given.exists():
        return given
    rooted = data_root(root) / data
    return rooted if rooted.exists() else None


def pair_specs(
    data: str,
    *,
    source: list[str] | None = None,
    split: str = "train",
    query_column: str | None = None,
    document_column: str | None = None,
    name: str | None = None,
    root: str | os.PathLike | None = None,
) -> list[SourceSpec]:
    """The source specs that ``data`` names (see the module docstring)."""
    found = _find(data, root)
    if found is not None and found.is_file() and found.name.endswith(_MIXTURE_SUFFIXES):
        specs = load_mixture(found, root=root)
        if source:
            chosen = [s for s in specs if s.name in source or s.name.split("/")[0] in source]
            unknown = sorted(set(source) - {s.name for s in chosen} - {s.name.split("/")[0] for s in chosen})
            if unknown:
                raise CurationError(f"{found}: no source named {unknown}; sources: {[s.name for s in specs]}")
            specs = chosen
        return specs
    if source:
        raise CurationError("--source selects entries of a mixture file; --data is not one")
    if found is not None and found.is_dir() and is_beir_folder(found):
        spec = SourceSpec(name=name or found.name, path=str(found), format="beir", split=split)
    else:
        base = Path(data.rstrip("/")).name
        for suffix in (".gz", ".jsonl"):
            base = base.removesuffix(suffix)
        spec = SourceSpec(
            name=name or base or "pairs",
            path=data,
            format="jsonl",
            query_column=query_column,
            document_column=document_column,
        )
    return load_mixture([spec], root=root)


def open_pair_sources(
    specs: list[SourceSpec], root: str | os.PathLike | None = None, on_error: OnError = "raise"
) -> list[PairSource]:
    return [open_source(s, root, on_error) for s in specs]


def spec_identity(spec: SourceSpec, source: PairSource) -> dict:
    """What identifies a source's rows: its spec, row count and the sizes and mtimes of its files."""
    files: list[Path] = []
    for attr in ("shards",):
        files += list(getattr(source, attr, []) or [])
    for attr in ("queries_path", "corpus_path", "qrels_path"):
        p = getattr(source, attr, None)
        if p is not None:
            files.append(Path(p))
    stats = []
    for p in files:
        st = Path(p).stat()
        stats.append([Path(p).name, st.st_size, st.st_mtime_ns])
    return {"spec": asdict(spec), "rows": len(source), "files": stats}
