"""Turn a ``data`` argument (named suite, dataset folder or YAML list) into concrete task specs.

Resolution happens before any encoding so that a typo in the fifth entry of a YAML suite fails in
the first second, not after an hour of encoding the first four.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lit_nomic.evaluation.beir import is_beir_folder
from lit_nomic.evaluation.bitext import is_tatoeba_folder
from lit_nomic.evaluation.files import read_text
from lit_nomic.evaluation.miracl import is_miracl_language_folder
from lit_nomic.evaluation.sts import is_stsb_folder
from lit_nomic.evaluation.xquad_r import is_xquad_r_folder
from lit_nomic.paths import data_root as default_data_root

TaskKind = Literal["beir", "miracl", "xquad_r", "sts", "bitext"]

# named suite -> (kind, folder under the data root)
NAMED_SUITES: dict[str, tuple[TaskKind, str]] = {
    "scifact": ("beir", "beir/scifact"),
    "xquad_r": ("xquad_r", "xquad_r"),
    "stsb_multi_mt": ("sts", "stsb_multi_mt"),
    "tatoeba": ("bitext", "tatoeba_laser"),
}
SINGLE_SPLIT_KINDS: frozenset[str] = frozenset({"xquad_r", "bitext"})
# options an entry may carry, per kind (anything else is a typo and is rejected)
OPTIONS: dict[str, frozenset[str]] = {
    "beir": frozenset({"max_docs", "max_queries", "ignore_identical_ids"}),
    "miracl": frozenset({"max_docs", "max_queries"}),
    "xquad_r": frozenset({"granularity", "cross_lingual_target", "monolingual"}),
    "sts": frozenset(),
    "bitext": frozenset(),
}
_ENTRY_KEYS = frozenset({"name", "path", "split", "languages", "kind"})


@dataclass(frozen=True)
class TaskSpec:
    kind: TaskKind
    path: Path
    split: str
    name: str
    languages: tuple[str, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


def detect_kind(path: Path) -> TaskKind:
    """Recognise a dataset folder by its files (see each loader for the layout)."""
    if is_beir_folder(path):
        return "beir"
    if is_xquad_r_folder(path):
        return "xquad_r"
    if is_stsb_folder(path):
        return "sts"
    if is_tatoeba_folder(path):
        return "bitext"
    if is_miracl_language_folder(path) or (
        path.is_dir() and any(p.is_dir() and is_miracl_language_folder(p) for p in path.iterdir())
    ):
        return "miracl"
    raise ValueError(
        f"{path}: unrecognised dataset layout; expected BEIR (corpus.jsonl, queries.jsonl, qrels/), "
        "MIRACL (topics/qrels TSV + corpus.jsonl per language), XQuAD-R (<lang>.json), "
        "stsb_multi_mt (stsb-<lang>-<split>.csv) or Tatoeba (tatoeba.<xxx>-eng.*)"
    )


def _locate(ref: str, root: Path) -> Path:
    p = Path(ref).expanduser()
    if p.exists():
        return p
    if (root / ref).exists():
        return root / ref
    raise FileNotFoundError(
        f"dataset {ref!r} is neither a named suite {sorted(NAMED_SUITES)}, an existing path, nor a folder under "
        f"the data root {str(root)!r} (set LIT_NOMIC_DATA or pass data_root)"
    )


def _spec(
    ref: str, split: str, languages: Sequence[str] | None, root: Path, options: Mapping[str, Any], where: str
) -> TaskSpec:
    if ref in NAMED_SUITES:
        kind, rel = NAMED_SUITES[ref]
        path = root / rel
        if not path.exists():
            raise FileNotFoundError(
                f"{where}: suite {ref!r} expects {path} (set LIT_NOMIC_DATA or pass data_root)"
            )
        name = ref
    else:
        path = _locate(ref, root)
        kind = detect_kind(path)
        name = path.name
    unknown = set(options) - OPTIONS[kind]
    if unknown:
        raise ValueError(
            f"{where}: unknown option(s) {sorted(unknown)} for a {kind} dataset; allowed: {sorted(OPTIONS[kind])}"
        )
    if kind in SINGLE_SPLIT_KINDS and split != "test":
        raise ValueError(f"{where}: {name!r} ({kind}) only has a 'test' split, got split={split!r}")
    return TaskSpec(
        kind, path, split, name, tuple(languages) if languages is not None else None, dict(options)
    )


def _from_yaml(path: Path, split: str, languages: Sequence[str] | None, root: Path | None) -> list[TaskSpec]:
    try:
        doc = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML ({e})") from None
    if isinstance(doc, list):
        doc = {"datasets": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), list) or not doc["datasets"]:
        raise ValueError(f"{path}: expected a non-empty 'datasets' list (or a top-level list)")
    extra_top = set(doc) - {"datasets", "data_root"}
    if extra_top:
        raise ValueError(f"{path}: unknown top-level key(s) {sorted(extra_top)}")
    base = Path(doc["data_root"]).expanduser() if doc.get("data_root") else (root or default_data_root())
    specs: list[TaskSpec] = []
    for i, entry in enumerate(doc["datasets"]):
        where = f"{path}: datasets[{i}]"
        if isinstance(entry, str):
            specs.append(_spec(entry, split, languages, base, {}, where))
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a name or a mapping, got {type(entry).__name__}")
        ref = entry.get("name") or entry.get("path")
        if not isinstance(ref, str):
            raise ValueError(f"{where}: needs a 'name' (named suite) or 'path'")
        langs = entry.get("languages", languages)
        if langs is not None and (not isinstance(langs, list) or not all(isinstance(x, str) for x in langs)):
            raise ValueError(f"{where}: 'languages' must be a list of strings")
        options = {k: v for k, v in entry.items() if k not in _ENTRY_KEYS}
        specs.append(_spec(ref, str(entry.get("split", split)), langs, base, options, where))
    return specs


def resolve_data(
    data: str | os.PathLike,
    split: str = "test",
    languages: Sequence[str] | None = None,
    data_root: str | os.PathLike | None = None,
) -> list[TaskSpec]:
    """Named suite, dataset folder (layout auto-detected) or a YAML file listing several."""
    root = default_data_root(data_root)
    ref = str(data)
    if ref.endswith((".yaml", ".yml")):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"suite file {ref!r} does not exist")
        return _from_yaml(path, split, languages, Path(data_root) if data_root else None)
    return [_spec(ref, split, languages, root, {}, f"data={ref!r}")]
