"""Every evaluation suite in ``experiments/eval/`` resolves against the shared data, without a model.

A suite that names a missing dataset, language or split would only fail after the earlier entries
had been encoded (tens of minutes on CPU); these tests load every entry's data instead, so a
broken suite fails in CI within seconds. The committed result files built from the suites are
checked for portability (no machine paths) and provenance here as well, and so is the tool that
produces the committed mteb side-by-side (``scripts/mteb_compare.py``).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch
from beir_writer import write_beir
from lexical_encoder import HashingEncoder

from lit_nomic.evaluation.beir import load_beir
from lit_nomic.evaluation.multilingual import (
    XQUAD_R_LANGUAGES,
    is_miracl_language_folder,
    load_miracl,
    miracl_languages,
    xquad_r_languages,
    xquad_r_tasks,
)
from lit_nomic.evaluation.pairs import load_stsb_multi_mt, load_tatoeba, stsb_languages, tatoeba_languages
from lit_nomic.evaluation.results import load_results
from lit_nomic.evaluation.retrieval_data import subsample
from lit_nomic.evaluation.run import DATA_ROOT_MARK, portable_source
from lit_nomic.evaluation.suites import PAPER_SUITES, TaskSpec, resolve_data

REPO = Path(__file__).resolve().parents[1]
# The paper-scale suites (beir-paper, miracl-dev) need data the shared root does not hold; their
# layouts are tested on synthetic folders in test_eval_paper_suites.py.
SUITES = [p for p in sorted((REPO / "experiments" / "eval").glob("*.yaml")) if p.stem not in PAPER_SUITES]
RESULTS = REPO / "results"


def _check_languages(spec: TaskSpec, available: list[str]) -> list[str]:
    if spec.languages is None:
        return available
    missing = sorted(set(spec.languages) - set(available))
    assert not missing, f"{spec.name}: languages {missing} not under {spec.path}"
    return list(spec.languages)


def _load_entry(spec: TaskSpec) -> int:
    """Load everything ``evaluate`` would read for ``spec``; returns the number of tasks built."""
    opts = dict(spec.options)
    if spec.kind == "beir":
        ds = load_beir(spec.path, spec.split, name=spec.name)
        if "max_docs" in opts:
            subsample(ds, int(opts["max_docs"]), max_queries=opts.get("max_queries"))
        return 1
    if spec.kind == "miracl":
        if is_miracl_language_folder(spec.path):
            load_miracl(spec.path, spec.split)
            return 1
        langs = _check_languages(spec, miracl_languages(spec.path))
        for lang in langs:
            load_miracl(spec.path / lang, spec.split)
        return len(langs)
    if spec.kind == "xquad_r":
        tasks = xquad_r_tasks(
            spec.path,
            spec.languages,
            monolingual=bool(opts.get("monolingual", True)),
            cross_lingual_target=opts.get("cross_lingual_target", "en"),
            granularity=opts.get("granularity", "paragraph"),
        )
        return len(tasks)
    if spec.kind == "sts":
        langs = _check_languages(spec, stsb_languages(spec.path, spec.split))
        for lang in langs:
            load_stsb_multi_mt(spec.path, lang, spec.split)
        return len(langs)
    langs = _check_languages(spec, tatoeba_languages(spec.path))
    for lang in langs:
        load_tatoeba(spec.path, lang)
    return len(langs)


def test_suites_exist() -> None:
    assert SUITES, "experiments/eval/ holds no evaluation suites"
    assert REPO / "experiments" / "eval" / "baseline.yaml" in SUITES


@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.name)
def test_suite_resolves_and_loads(suite: Path, shared_data: Path) -> None:
    specs = resolve_data(str(suite), data_root=shared_data)
    assert specs, f"{suite.name}: no datasets"
    for spec in specs:
        assert spec.path.resolve().is_relative_to(shared_data.resolve()), (
            f"{suite.name}: {spec.name} resolves outside the data root: suites must stay portable"
        )
        assert _load_entry(spec) >= 1


def test_baseline_suite_covers_all_shared_eval_data(shared_data: Path) -> None:
    specs = {
        s.name: s
        for s in resolve_data(str(REPO / "experiments" / "eval" / "baseline.yaml"), data_root=shared_data)
    }
    assert set(specs) == {"scifact", "xquad_r", "stsb_multi_mt", "tatoeba"}
    assert specs["scifact"].kind == "beir" and specs["scifact"].split == "test"
    assert specs["scifact"].options == {}  # the full task, never a subsample, in the baseline
    xq = specs["xquad_r"]
    assert xq.languages is None and xquad_r_languages(xq.path) == list(XQUAD_R_LANGUAGES)
    assert _load_entry(xq) == 11 + 10  # monolingual for all 11, X -> en for the other 10
    assert specs["stsb_multi_mt"].languages is None and _load_entry(specs["stsb_multi_mt"]) == 11
    # Tatoeba: exactly the non-English XQuAD-R and STS languages that Tatoeba has
    iso3 = {
        "ar": "ara", "de": "deu", "el": "ell", "es": "spa", "hi": "hin", "ru": "rus", "th": "tha",
        "tr": "tur", "vi": "vie", "zh": "cmn", "fr": "fra", "it": "ita", "ja": "jpn", "nl": "nld",
        "pl": "pol", "pt": "por",
    }  # fmt: skip
    wanted = set(XQUAD_R_LANGUAGES) | set(stsb_languages(specs["stsb_multi_mt"].path))
    expected = {iso3[lang] for lang in wanted - {"en"}} & set(tatoeba_languages(specs["tatoeba"].path))
    assert set(specs["tatoeba"].languages or ()) == expected and len(expected) == 16


def test_portable_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    (root / "beir" / "scifact").mkdir(parents=True)
    work = tmp_path / "work"
    (work / "local").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert portable_source(root / "beir" / "scifact", root) == f"{DATA_ROOT_MARK}/beir/scifact"
    assert portable_source(str(root), root) == DATA_ROOT_MARK
    assert portable_source(work / "local" / "x.csv", root) == "local/x.csv"
    outside = tmp_path / "elsewhere" / "f.tsv"
    assert portable_source(outside, root) == str(outside)  # honest: nothing to make it relative to
    assert portable_source("", root) == ""


_ABSOLUTE = re.compile(r"(?<![\w.<>])/(?:work|root|home|tmp|Users|mnt|data)/")


def test_committed_results_are_portable_and_valid() -> None:
    runs = RESULTS / "runs"
    if not runs.is_dir():
        pytest.skip("no committed results/runs yet")
    results = load_results(runs)
    assert results
    for r in results:
        source = r["extra"].get("source", "")
        assert source.startswith(f"{DATA_ROOT_MARK}/"), f"{r['_path']}: source {source!r} is not portable"
    for path in RESULTS.rglob("*"):
        if path.suffix in {".json", ".md", ".csv", ".tex"} and path.is_file():
            text = path.read_text(encoding="utf-8")
            hit = _ABSOLUTE.search(text)
            assert hit is None, (
                f"{path.relative_to(REPO)}: machine-specific path near {text[hit.start() : hit.start() + 60]!r}"
            )
    for path in RESULTS.rglob("*.json"):  # every result was produced by committed code
        commit = json.loads(path.read_text(encoding="utf-8"))
        commit = commit.get("git_commit") if isinstance(commit, dict) else None
        assert not (isinstance(commit, str) and commit.endswith("+dirty")), (
            f"{path.relative_to(REPO)}: produced from uncommitted code ({commit}); regenerate it from a commit"
        )
    for table in RESULTS.rglob("*.md"):
        if table.name == "README.md" or table.parent.name == "bench" or table.name == "benchmarks.md":
            continue
        assert "Regenerate: `" in table.read_text(encoding="utf-8"), f"{table}: no regenerate command"
    mteb_json = RESULTS / "mteb_scifact" / "scifact_ours_vs_mteb.json"
    if mteb_json.is_file():
        summary = json.loads(mteb_json.read_text(encoding="utf-8"))
        main = summary["main"]
        assert main["abs_diff"] == pytest.approx(abs(main["ours"] - main["mteb"]), abs=1e-12)
        assert main["within_tolerance"] == (main["abs_diff"] <= main["tolerance"])


class _CountingEncoder(HashingEncoder):
    def __init__(self) -> None:
        super().__init__(dim=1024, name="bow", query_prefix="q: ", document_prefix="d: ")
        self.encoded = 0

    def encode(
        self, texts: list[str], prefix: str = "", batch_size: int = 64, show_progress: bool = False
    ) -> torch.Tensor:
        self.encoded += len(texts)
        return super().encode(texts, prefix, batch_size, show_progress)


def _load_mteb_compare() -> ModuleType:
    """``scripts/mteb_compare.py``, a one-off script outside the package, loaded by its path."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "mteb_compare.py"
    spec = importlib.util.spec_from_file_location("mteb_compare", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mteb_compare_side_by_side(tmp_path: Path, scifact_dir: Path) -> None:
    pytest.importorskip("mteb")
    mc = _load_mteb_compare()

    sub = subsample(load_beir(scifact_dir), 150, max_queries=25, seed=2)
    folder = write_beir(sub, tmp_path / "scifact_sub")
    enc, cache = _CountingEncoder(), tmp_path / "cache"
    first = mc.compare_retrieval(enc, folder, dataset_name="scifact", cache_dir=cache)
    assert enc.encoded == 150 + 25  # encoded once, for both pipelines
    assert first["encoding"] == {
        "texts_encoded_by_ours": 175,
        "texts_encoded_by_mteb": 0,
        "texts_reused_by_mteb": 175,
    }
    main = first["main"]
    assert main["mteb"] == pytest.approx(main["ours"], abs=1e-5)  # mteb rounds to 5 decimals
    assert main["within_tolerance"] and main["tolerance"] == 0.001
    assert set(first["metrics"]) == set(mc.COMPARED_METRICS)
    assert first["counts"]["num_documents"] == 150 and first["mteb"]["dataset_revision"].startswith("local-")

    # a second comparison reads the disk cache: nothing is encoded by either pipeline
    second = mc.compare_retrieval(
        enc, folder, dataset_name="scifact", cache_dir=cache, mteb_output=tmp_path / "mteb"
    )
    assert enc.encoded == 175 and second["encoding"]["texts_encoded_by_ours"] == 0
    assert second["main"]["ours"] == main["ours"]

    paths = mc.write_summary(first, tmp_path / "out", command="python scripts/mteb_compare.py x")
    assert {p.name for p in paths.values()} == {"scifact_ours_vs_mteb.json", "scifact_ours_vs_mteb.md"}
    stored = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert stored["main"] == main and stored["command"].endswith("mteb_compare.py x")
    md = paths["markdown"].read_text(encoding="utf-8")
    assert f"| **ndcg@10** | {100 * main['ours']:.3f} | {100 * main['mteb']:.3f} |" in md
    assert "within 0.1 point: yes" in md and "Regenerate: `python scripts/mteb_compare.py x`" in md
    kept = list((tmp_path / "mteb").glob("results/*/*/SciFact.json"))  # only where asked for
    assert len(kept) == 1 and not list((tmp_path / "out").glob("**/SciFact.json"))
    assert json.loads(kept[0].read_text())["scores"]["test"][0]["ndcg_at_10"] == second["main"]["mteb"]


def test_mteb_compare_command_line_hides_machine_paths(tmp_path: Path) -> None:
    mc = _load_mteb_compare()
    home = str(Path.home())
    line = mc._command_line(["--model", "m", "--cache_dir", f"{home}/.cache/emb"], cwd=tmp_path)
    assert line == f"{mc.PROG} --model m --cache_dir '~/.cache/emb'"
    assert home not in line
    repo = tmp_path / "repo"
    line = mc._command_line(
        ["--output", str(repo / "results" / "x"), "--cache_dir=/tmp/elsewhere/cache", "--data", "/mnt/d"],
        cwd=repo,
    )
    assert line == f"{mc.PROG} --output results/x '--cache_dir=<cache_dir>' --data '<data>'"
    assert _ABSOLUTE.search(line) is None
