"""Turn a ``data`` argument (named suite, dataset folder or YAML list) into concrete task specs.

Resolution happens before any encoding so that a typo in the fifth entry of a YAML suite fails in
the first second, not after an hour of encoding the first four. A named dataset that is not under
the data root is downloaded when it has a public source (``lit_nomic.data.paths.PUBLIC_DATASETS``);
otherwise, or offline, resolution fails in one line naming the missing folder and what to fetch.

Two named suites reproduce the tables of the Nomic Embed v2 paper (see :data:`PAPER_SUITES`; the
YAMLs ``experiments/eval/beir-paper.yaml`` and ``experiments/eval/miracl-dev.yaml`` hold the same):

* ``beir-paper``: the 15 public BEIR datasets of MTEB's English retrieval, MS MARCO on dev and the
  others on test; CQADupStack is one BEIR folder per forum (``cqadupstack/<forum>/``) evaluated
  forum by forum (the result's ``language`` field holds the forum), so the table's CQADupStack
  column is the mean over its 12 forums, as in MTEB; where MTEB's task sets ``ignore_identical_ids``
  (ArguAna, FEVER, FiQA2018, MSMARCO, Quora) a document with the query's id is never retrieved
  for it (Quora's queries are corpus questions too), and Quora's corpus is embedded with the query
  prefix (``doc_as_query``, as contrastors' evaluation does).
* ``miracl-dev``: MIRACL dev, the 16 languages of the paper's headline average.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lit_nomic.data.formats import read_text
from lit_nomic.data.paths import data_root as default_data_root
from lit_nomic.data.paths import fetch_hint, resolve_dataset
from lit_nomic.evaluation.beir import is_beir_collection, is_beir_folder
from lit_nomic.evaluation.multilingual import is_miracl_language_folder, is_xquad_r_folder
from lit_nomic.evaluation.pairs import is_stsb_folder, is_tatoeba_folder

TaskKind = Literal["beir", "miracl", "xquad_r", "sts", "bitext"]

# named suite -> (kind, folder under the data root)
NAMED_SUITES: dict[str, tuple[TaskKind, str]] = {
    "scifact": ("beir", "beir/scifact"),
    "xquad_r": ("xquad_r", "xquad_r"),
    "stsb_multi_mt": ("sts", "stsb_multi_mt"),
    "tatoeba": ("bitext", "tatoeba_laser"),
    # the BEIR datasets of MTEB's English retrieval (BEIR folder names; downloaded when missing)
    **{
        name: ("beir", f"beir/{name}")
        for name in (
            "arguana",
            "climate-fever",
            "cqadupstack",
            "dbpedia-entity",
            "fever",
            "fiqa",
            "hotpotqa",
            "msmarco",
            "nfcorpus",
            "nq",
            "quora",
            "scidocs",
            "trec-covid",
            "webis-touche2020",
        )
    },  # fmt: skip
    "miracl": ("miracl", "miracl"),
}

CQADUPSTACK_FORUMS: tuple[str, ...] = (
    "android", "english", "gaming", "gis", "mathematica", "physics", "programmers", "stats", "tex",
    "unix", "webmasters", "wordpress",
)  # fmt: skip
MIRACL_DEV_LANGUAGES: tuple[str, ...] = (
    "ar", "bn", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te", "th", "zh",
)  # fmt: skip

# Named suites of several datasets: the evaluation sets of the Nomic Embed v2 paper's tables, in the
# YAML-suite format (experiments/eval/<name>.yaml hold the same, with comments). They fix their
# splits; ``languages`` given with ``miracl-dev`` selects among its languages.
PAPER_SUITES: dict[str, dict[str, Any]] = {
    "beir-paper": {
        "datasets": [
            {"name": "arguana", "split": "test", "ignore_identical_ids": True},
            {"name": "climate-fever", "split": "test"},
            {"name": "cqadupstack", "split": "test", "languages": list(CQADUPSTACK_FORUMS)},
            {"name": "dbpedia-entity", "split": "test"},
            {"name": "fever", "split": "test", "ignore_identical_ids": True},
            {"name": "fiqa", "split": "test", "ignore_identical_ids": True},
            {"name": "hotpotqa", "split": "test"},
            {"name": "msmarco", "split": "dev", "ignore_identical_ids": True},
            {"name": "nfcorpus", "split": "test"},
            {"name": "nq", "split": "test"},
            {"name": "quora", "split": "test", "ignore_identical_ids": True, "doc_as_query": True},
            {"name": "scidocs", "split": "test"},
            {"name": "scifact", "split": "test"},
            {"name": "webis-touche2020", "split": "test"},
            {"name": "trec-covid", "split": "test"},
        ]
    },
    "miracl-dev": {"datasets": [{"name": "miracl", "split": "dev", "languages": list(MIRACL_DEV_LANGUAGES)}]},
}
SINGLE_SPLIT_KINDS: frozenset[str] = frozenset({"xquad_r", "bitext"})
# options an entry may carry, per kind (anything else is a typo and is rejected)
OPTIONS: dict[str, frozenset[str]] = {
    "beir": frozenset({"max_docs", "max_queries", "ignore_identical_ids", "doc_as_query"}),
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
    if is_beir_folder(path) or is_beir_collection(path):
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
        f"{path}: unrecognised dataset layout; expected BEIR (corpus.jsonl, queries.jsonl, qrels/, or "
        "one such folder per subset, as cqadupstack/<forum>/), "
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
        f"dataset {ref!r} is neither a named suite {sorted([*NAMED_SUITES, *PAPER_SUITES])}, an existing path, nor a folder under "
        f"the data root {str(root)!r} (set LIT_NOMIC_DATA or pass data_root)"
    )


def _named_path(ref: str, rel: str, root: Path, where: str) -> Path:
    """The folder of a named dataset: under the root, else cached or downloaded, else a one-line error."""
    path = root / rel
    if path.exists():
        return path
    try:
        return resolve_dataset(rel, root)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{where}: suite {ref!r}: {err}") from None


def _check_subsets(
    kind: TaskKind, name: str, rel: str | None, path: Path, subsets: Sequence[str], where: str
) -> None:
    """Fail before encoding when a listed MIRACL language or CQADupStack forum folder is absent."""
    if kind == "miracl" and not is_miracl_language_folder(path):
        missing = [s for s in subsets if not is_miracl_language_folder(path / s)]
    elif kind == "beir" and not is_beir_folder(path):
        missing = [s for s in subsets if not is_beir_folder(path / s)]
    else:
        return
    if missing:
        hint = (fetch_hint(f"{rel}/{missing[0]}") or fetch_hint(rel)) if rel else None
        what = f"; {hint}" if hint else ""
        raise FileNotFoundError(
            f"{where}: {name!r} is missing {len(missing)} of {len(subsets)} folders under {path}: "
            f"{', '.join(missing)} (no {path / missing[0]} in the expected layout){what}"
        )


def _spec(
    ref: str, split: str, languages: Sequence[str] | None, root: Path, options: Mapping[str, Any], where: str
) -> TaskSpec:
    rel: str | None = None
    if ref in NAMED_SUITES:
        kind, rel = NAMED_SUITES[ref]
        path = _named_path(ref, rel, root, where)
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
    if languages is not None:
        _check_subsets(kind, name, rel, path, languages, where)
    return TaskSpec(
        kind, path, split, name, tuple(languages) if languages is not None else None, dict(options)
    )


def _from_yaml(path: Path, split: str, languages: Sequence[str] | None, root: Path | None) -> list[TaskSpec]:
    try:
        doc = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML ({e})") from None
    return _from_doc(doc, str(path), split, languages, root)


def _from_doc(
    doc: Any, where_doc: str, split: str, languages: Sequence[str] | None, root: Path | None
) -> list[TaskSpec]:
    if isinstance(doc, list):
        doc = {"datasets": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), list) or not doc["datasets"]:
        raise ValueError(f"{where_doc}: expected a non-empty 'datasets' list (or a top-level list)")
    extra_top = set(doc) - {"datasets", "data_root"}
    if extra_top:
        raise ValueError(f"{where_doc}: unknown top-level key(s) {sorted(extra_top)}")
    base = Path(doc["data_root"]).expanduser() if doc.get("data_root") else (root or default_data_root())
    specs: list[TaskSpec] = []
    missing: list[FileNotFoundError] = []
    for i, entry in enumerate(doc["datasets"]):
        where = f"{where_doc}: datasets[{i}]"
        try:
            if isinstance(entry, str):
                specs.append(_spec(entry, split, languages, base, {}, where))
                continue
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected a name or a mapping, got {type(entry).__name__}")
            ref = entry.get("name") or entry.get("path")
            if not isinstance(ref, str):
                raise ValueError(f"{where}: needs a 'name' (named suite) or 'path'")
            langs = entry.get("languages", languages)
            if langs is not None and (
                not isinstance(langs, list) or not all(isinstance(x, str) for x in langs)
            ):
                raise ValueError(f"{where}: 'languages' must be a list of strings")
            options = {k: v for k, v in entry.items() if k not in _ENTRY_KEYS}
            specs.append(_spec(ref, str(entry.get("split", split)), langs, base, options, where))
        except FileNotFoundError as err:  # download what can be, then name everything missing at once
            missing.append(err)
    if missing:
        more = f" (and {len(missing) - 1} more missing dataset(s) of this suite)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{missing[0]}{more}")
    return specs


def _paper_suite(name: str, split: str, languages: Sequence[str] | None, root: Path | None) -> list[TaskSpec]:
    doc = PAPER_SUITES[name]
    if languages is not None:
        entries = [e for e in doc["datasets"] if "languages" in e and e["name"] != "cqadupstack"]
        if not entries:
            raise ValueError(f"suite {name!r} has no languages to select (got languages={list(languages)})")
        doc = {
            "datasets": [{**e, "languages": list(languages)} if e in entries else e for e in doc["datasets"]]
        }
    return _from_doc(doc, f"suite {name!r}", split, None, root)


def resolve_data(
    data: str | os.PathLike,
    split: str = "test",
    languages: Sequence[str] | None = None,
    data_root: str | os.PathLike | None = None,
) -> list[TaskSpec]:
    """Named suite, dataset folder (layout auto-detected) or a YAML file listing several."""
    root = default_data_root(data_root)
    ref = str(data)
    if ref in PAPER_SUITES:
        return _paper_suite(ref, split, languages, Path(data_root) if data_root else None)
    if ref.endswith((".yaml", ".yml")):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"suite file {ref!r} does not exist")
        return _from_yaml(path, split, languages, Path(data_root) if data_root else None)
    return [_spec(ref, split, languages, root, {}, f"data={ref!r}")]
