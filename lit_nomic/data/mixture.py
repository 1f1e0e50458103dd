"""The dataset mixture: which sources to train on and how each is read, prefixed, truncated, weighted.

A mixture is a list of :class:`SourceSpec` given in Python, on the CLI, or in a YAML/JSON file::

    sources:
      - name: scifact
        path: beir/scifact          # relative to the data root ($LIT_NOMIC_DATA) or absolute
        format: beir
      - name: medquad
        path: medquad/medquad_qa.jsonl
        query_column: question
        document_column: answer
        max_document_length: 256

(a bare top-level list of entries is accepted too). Every validation error names the source and the
field, because a mixture of dozens of sources is otherwise painful to debug.

Per-language sources. ``per_language: true`` expands one entry over a folder of per-language shards
into one source per language, named ``<entry>/<lang>``, so that every batch stays monolingual (the
plan draws each global batch from one source)::

      - name: mc4
        path: mc4/                  # en.jsonl, de.jsonl.gz, ... and/or en/, de/ folders of shards
        per_language: true
        languages: [en, de]         # optional: only these (each must exist); default: every one found
        language_weights: {en: 2.0} # optional per-language weight; the others get ``weight``

Each expanded source copies the entry's columns, prefixes, lengths and negatives, takes ``weight``
(or its ``language_weights`` value) and records its ``language``. ``beir`` entries expand over
sub-folders only (one BEIR folder per language). Expansion happens in :func:`load_mixture`, which
then checks the expanded names for duplicates like any others.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from lit_nomic.data.beir_pairs import BeirPairs
from lit_nomic.data.jsonl import ColumnExtractor, JsonlPairs
from lit_nomic.data.records import (
    NEGATIVE_SELECTIONS,
    ON_ERROR_CHOICES,
    NegativeSelection,
    OnError,
    PairSource,
)
from lit_nomic.data.scitldr import SCITLDR_QUERY_FIELDS, SciTldrPairs

__all__ = [
    "FORMATS",
    "WEIGHTINGS",
    "MixtureError",
    "SourceSpec",
    "Weighting",
    "expand_languages",
    "explicit_weights",
    "load_mixture",
    "open_source",
    "validate_spec",
]

log = logging.getLogger(__name__)

SourceFormat = Literal["jsonl", "beir", "scitldr"]
FORMATS: tuple[str, ...] = ("jsonl", "beir", "scitldr")
Weighting = Literal["uniform", "size", "explicit"]
WEIGHTINGS: tuple[str, ...] = ("uniform", "size", "explicit")


class MixtureError(ValueError):
    """An invalid mixture entry; the message names the source and the field."""


@dataclass
class SourceSpec:
    """One training source. Defaults follow Nomic Embed (``search_query: `` / ``search_document: ``).

    ``query_column``: JSONL column of the query (default ``query``); for ``scitldr`` either ``target``
    (TLDRs, default) or ``title``; unused for ``beir``. ``document_column``: JSONL column of the
    positive, default ``document`` or else ``pos``. ``negatives_column`` is read only when
    ``num_negatives > 0`` (JSONL only). ``negatives``: how the ``num_negatives`` of a longer list are
    chosen: ``random`` (default; drawn anew each epoch) or ``first`` (the first ones in file order,
    i.e. a miner's best, every epoch: contrastors' ``sample_negatives: false``). ``teacher_scores``:
    read the miner's ``pos_score`` / ``neg_scores`` when a line has them, so that batches carry
    ``teacher_scores`` for score distillation (JSONL only; see :mod:`lit_nomic.data.jsonl`). ``split``: the qrels file of a BEIR folder, or the SciTLDR split.
    ``weight``: the sampling weight under ``weighting="explicit"``. ``per_language``, ``languages``
    and ``language_weights``: expand a folder of per-language shards into one source per language
    (see the module docstring); ``language``: the language of the source (set by that expansion;
    curation reports count per language with it).
    """

    name: str
    path: str
    format: SourceFormat = "jsonl"
    query_column: str | None = None
    document_column: str | None = None
    negatives_column: str = "neg"
    split: str = "train"
    query_prefix: str = "search_query: "
    document_prefix: str = "search_document: "
    weight: float | None = None
    max_query_length: int = 512
    max_document_length: int = 512
    num_negatives: int = 0
    negatives: NegativeSelection = "random"
    teacher_scores: bool = True
    per_language: bool = False
    languages: list[str] | None = None
    language_weights: dict[str, float] | None = None
    language: str | None = None


_FIELD_NAMES = tuple(f.name for f in fields(SourceSpec))


def _fail(name: str, field: str, message: str) -> MixtureError:
    return MixtureError(f"source {name!r}: field {field!r}: {message}")


def validate_spec(spec: SourceSpec) -> None:
    """Type and range checks that would otherwise surface as obscure failures deep in a DataLoader worker."""
    name = spec.name if isinstance(spec.name, str) else repr(spec.name)
    if not isinstance(spec.name, str) or not spec.name.strip():
        raise MixtureError(f"source {name}: field 'name': must be a non-empty string")
    for key in ("path", "negatives_column", "split", "query_prefix", "document_prefix"):
        value = getattr(spec, key)
        if not isinstance(value, str):
            raise _fail(name, key, f"must be a string, got {type(value).__name__}")
    if not spec.path.strip():
        raise _fail(name, "path", "must not be empty")
    for key in ("query_column", "document_column"):
        value = getattr(spec, key)
        if value is not None and (not isinstance(value, str) or not value):
            raise _fail(name, key, f"must be a non-empty string or null, got {value!r}")
    if spec.format not in FORMATS:
        raise _fail(name, "format", f"must be one of {FORMATS}, got {spec.format!r}")
    for key in ("max_query_length", "max_document_length"):
        value = getattr(spec, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(name, key, f"must be a positive integer, got {value!r}")
    n = spec.num_negatives
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise _fail(name, "num_negatives", f"must be an integer >= 0, got {n!r}")
    if n > 0 and spec.format != "jsonl":
        raise _fail(name, "num_negatives", f"format {spec.format!r} has no negatives; use 0")
    if spec.negatives not in NEGATIVE_SELECTIONS:
        raise _fail(name, "negatives", f"must be one of {NEGATIVE_SELECTIONS}, got {spec.negatives!r}")
    if not isinstance(spec.teacher_scores, bool):
        raise _fail(name, "teacher_scores", f"must be true or false, got {spec.teacher_scores!r}")
    if spec.weight is not None:
        w = spec.weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not np.isfinite(w) or w <= 0:
            raise _fail(name, "weight", f"must be a finite number > 0 or null, got {w!r}")
    if spec.format == "scitldr" and spec.query_column not in (None, *SCITLDR_QUERY_FIELDS):
        raise _fail(
            name, "query_column", f"scitldr accepts {SCITLDR_QUERY_FIELDS}, got {spec.query_column!r}"
        )
    if spec.format == "beir" and (spec.query_column is not None or spec.document_column is not None):
        raise _fail(name, "query_column", "beir sources read queries.jsonl/corpus.jsonl; leave columns unset")
    _validate_language_fields(spec, name)


def _validate_language_fields(spec: SourceSpec, name: str) -> None:
    if not isinstance(spec.per_language, bool):
        raise _fail(name, "per_language", f"must be true or false, got {spec.per_language!r}")
    if spec.language is not None and (not isinstance(spec.language, str) or not spec.language.strip()):
        raise _fail(name, "language", f"must be a non-empty string or null, got {spec.language!r}")
    if spec.languages is not None:
        if not isinstance(spec.languages, list | tuple) or not spec.languages:
            raise _fail(
                name, "languages", f"must be a non-empty list of language names, got {spec.languages!r}"
            )
        for lang in spec.languages:
            if not isinstance(lang, str) or not lang.strip() or "/" in lang:
                raise _fail(name, "languages", f"{lang!r} is not a language name")
    if spec.language_weights is not None:
        if not isinstance(spec.language_weights, dict):
            raise _fail(name, "language_weights", "must be a mapping {language: weight}")
        for lang, w in spec.language_weights.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or not np.isfinite(w) or w <= 0:
                raise _fail(name, "language_weights", f"{lang!r}: must be a finite number > 0, got {w!r}")
    if not spec.per_language and (spec.languages is not None or spec.language_weights is not None):
        raise _fail(name, "languages", "'languages' and 'language_weights' need per_language: true")
    if spec.per_language and spec.format == "scitldr":
        raise _fail(name, "per_language", "scitldr sources cannot be expanded per language")


def _spec_from_dict(entry: Any, position: int, origin: str) -> SourceSpec:
    if isinstance(entry, SourceSpec):
        return entry
    if not isinstance(entry, dict):
        raise MixtureError(f"{origin}: source #{position} must be a mapping, got {type(entry).__name__}")
    label = entry.get("name", f"#{position}")
    unknown = sorted(set(entry) - set(_FIELD_NAMES))
    if unknown:
        raise MixtureError(
            f"{origin}: source {label!r}: unknown field(s) {unknown}; known: {list(_FIELD_NAMES)}"
        )
    for required in ("name", "path"):
        if required not in entry:
            raise MixtureError(f"{origin}: source {label!r}: field {required!r} is required")
    return SourceSpec(**entry)


def _read_mixture_file(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise MixtureError(f"{path}: cannot parse mixture file: {exc}") from exc
    if isinstance(data, dict):
        extra = sorted(set(data) - {"sources"})
        if extra or "sources" not in data:
            raise MixtureError(
                f"{path}: expected a list of sources or a mapping with only 'sources', got keys {sorted(data)}"
            )
        data = data["sources"]
    if not isinstance(data, list) or not data:
        raise MixtureError(f"{path}: 'sources' must be a non-empty list")
    return data


_LANGUAGE_SUFFIXES = (".jsonl.gz", ".jsonl")


def _language_entries(spec: SourceSpec, root: str | os.PathLike | None) -> dict[str, str]:
    """``{language: path}`` for the shards of a per-language folder, in language order."""
    from lit_nomic.data.paths import data_root

    given = Path(spec.path).expanduser()
    folder = given if given.is_absolute() or given.is_dir() else data_root(root) / spec.path
    if not folder.is_dir():
        raise _fail(
            spec.name,
            "path",
            f"per_language needs a folder of per-language shards; {str(folder)!r} is not one",
        )
    found: dict[str, str] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            lang = entry.name
        elif spec.format == "jsonl" and entry.name.endswith(_LANGUAGE_SUFFIXES):
            lang = entry.name[: -len(next(x for x in _LANGUAGE_SUFFIXES if entry.name.endswith(x)))]
        else:
            continue
        if lang in found:
            raise _fail(
                spec.name, "path", f"language {lang!r} appears twice in {str(folder)!r} (file and folder?)"
            )
        found[lang] = str(Path(spec.path) / entry.name)
    if not found:
        what = "sub-folders" if spec.format == "beir" else "<lang>.jsonl[.gz] files or <lang>/ folders"
        raise _fail(spec.name, "path", f"folder {str(folder)!r} holds no {what}")
    return found


def expand_languages(spec: SourceSpec, root: str | os.PathLike | None = None) -> list[SourceSpec]:
    """One source per language of a ``per_language`` entry (the entry itself otherwise)."""
    if not spec.per_language:
        return [spec]
    found = _language_entries(spec, root)
    wanted = list(spec.languages) if spec.languages is not None else list(found)
    missing = [lang for lang in wanted if lang not in found]
    if missing:
        raise _fail(spec.name, "languages", f"{missing} not found under {spec.path!r}; found {sorted(found)}")
    unknown = sorted(set(spec.language_weights or {}) - set(wanted))
    if unknown:
        raise _fail(spec.name, "language_weights", f"{unknown} are not among the languages {wanted}")
    out = []
    for lang in wanted:
        weight = (spec.language_weights or {}).get(lang, spec.weight)
        out.append(
            replace(
                spec,
                name=f"{spec.name}/{lang}",
                path=found[lang],
                weight=weight,
                per_language=False,
                languages=None,
                language_weights=None,
                language=lang,
            )
        )
    return out


def load_mixture(
    sources: str | os.PathLike | Sequence[SourceSpec | dict], root: str | os.PathLike | None = None
) -> list[SourceSpec]:
    """Parse (file) or normalise (list) a mixture and validate every entry and the set of names.

    ``per_language`` entries are expanded into one source per language (folders are looked up as
    given, then under the data root ``root``).
    """
    if isinstance(sources, str | os.PathLike):
        origin = str(sources)
        path = Path(sources).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"mixture file {origin!r} not found")
        entries = _read_mixture_file(path)
    else:
        origin = "mixture"
        entries = list(sources)
        if not entries:
            raise MixtureError("mixture: no sources given")
    specs = [_spec_from_dict(entry, i, origin) for i, entry in enumerate(entries)]
    for spec in specs:
        validate_spec(spec)
    specs = [expanded for spec in specs for expanded in expand_languages(spec, root)]
    seen: set[str] = set()
    for spec in specs:
        validate_spec(spec)
        if spec.name in seen:
            raise _fail(spec.name, "name", "duplicate source name")
        seen.add(spec.name)
    return specs


def explicit_weights(specs: Sequence[SourceSpec], weighting: Weighting) -> list[float] | None:
    """The per-source weights the plan needs: required for ``explicit``, ignored (with a warning) otherwise."""
    if weighting not in WEIGHTINGS:
        raise MixtureError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "explicit":
        for spec in specs:
            if spec.weight is None:
                raise _fail(spec.name, "weight", "is required when weighting='explicit'")
        return [float(s.weight) for s in specs]  # type: ignore[arg-type]
    ignored = [s.name for s in specs if s.weight is not None]
    if ignored:
        log.warning("weighting=%r ignores the 'weight' of source(s) %s", weighting, ignored)
    return None


def open_source(
    spec: SourceSpec,
    root: str | os.PathLike | None = None,
    on_error: OnError = "raise",
    cache_dir: str | os.PathLike | None = None,
) -> PairSource:
    """Index one source; a missing dataset names the source, the path and ``LIT_NOMIC_DATA``."""
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    validate_spec(spec)
    if spec.per_language:
        raise _fail(spec.name, "per_language", "expand the entry first (load_mixture / expand_languages)")
    try:
        if spec.format == "beir":
            return BeirPairs(spec.name, spec.path, split=spec.split, root=root, on_error=on_error)
        if spec.format == "scitldr":
            return SciTldrPairs(
                spec.name,
                spec.path,
                split=spec.split,
                query_field=spec.query_column or "target",
                root=root,
                on_error=on_error,
                cache_dir=cache_dir,
            )
        columns = ColumnExtractor(
            query=spec.query_column or "query",
            document=spec.document_column,
            negatives=spec.negatives_column,
            num_negatives=spec.num_negatives,
            teacher_scores=spec.teacher_scores,
        )
        return JsonlPairs(spec.name, spec.path, columns, root=root, on_error=on_error, cache_dir=cache_dir)
    except FileNotFoundError as exc:
        if str(exc).startswith(f"source {spec.name!r}"):
            raise
        raise FileNotFoundError(f"source {spec.name!r}: {exc}") from exc
