"""Evaluation at paper scale: the ``beir-paper`` and ``miracl-dev`` suites, missing data, ``--dtype``.

Every dataset here is a tiny synthetic folder in its real layout (BEIR: corpus/queries JSONL and
``qrels/<split>.tsv``; CQADupStack: one BEIR folder per forum; MIRACL: the official topics/qrels
TSVs and gzipped corpus shards per language), scored with the weight-free lexical encoder so that
every expected value can be worked out by hand.
"""

from __future__ import annotations

import copy
import gzip
import json
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from lexical_encoder import HashingEncoder

from lit_nomic.cli import main
from lit_nomic.data import paths
from lit_nomic.evaluation import suites
from lit_nomic.evaluation.report import build_table
from lit_nomic.evaluation.results import load_results
from lit_nomic.evaluation.run import evaluate, format_table
from lit_nomic.evaluation.suites import CQADUPSTACK_FORUMS, MIRACL_DEV_LANGUAGES, PAPER_SUITES, resolve_data

REPO = Path(__file__).resolve().parents[1]
Q_PREFIX, D_PREFIX = "search_query: ", "search_document: "


def _encoder() -> HashingEncoder:
    return HashingEncoder(dim=4096, name="bow", query_prefix=Q_PREFIX, document_prefix=D_PREFIX)


def _write_beir(
    folder: Path,
    corpus: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    split: str = "test",
) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in corpus.items()),
        encoding="utf-8",
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items()), encoding="utf-8"
    )
    rows = "".join(f"{q}\t{d}\t{s}\n" for q, docs in qrels.items() for d, s in docs.items())
    (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows, encoding="utf-8")
    return folder


def _forum(folder: Path, topic: str) -> Path:
    """Two queries: q1 finds its answer first (RR 1), q2 finds it second (RR 1/2) behind a distractor."""
    return _write_beir(
        folder,
        corpus={
            "a1": f"{topic} install driver crashes on boot",
            "a2": f"{topic} backup restore archive",
            "x2": f"{topic} restore archive backup files folder",
            "f1": "completely unrelated cooking recipe",
        },
        queries={"q1": "driver crashes on boot", "q2": "restore archive backup files folder"},
        qrels={"q1": {"a1": 1}, "q2": {"a2": 1}},
    )


# Quora: the queries are corpus documents themselves (same id, same text); each has one duplicate.
QUORA_CORPUS = {
    "1": "how do i learn python quickly",
    "2": "what is the capital city of france",
    "11": "how can i learn python quickly and well",
    "12": "which city is the capital of france",
    "13": "best pizza dough recipe",
}
QUORA_QUERIES = {"1": QUORA_CORPUS["1"], "2": QUORA_CORPUS["2"]}
QUORA_QRELS = {"1": {"11": 1}, "2": {"12": 1}}


def _paper_subset(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str] | None]) -> None:
    """``beir-paper`` restricted to some of its real entries (forums narrowed where given)."""
    entries = []
    for entry in PAPER_SUITES["beir-paper"]["datasets"]:
        if entry["name"] in names:
            entry = copy.deepcopy(entry)
            if names[entry["name"]] is not None:
                entry["languages"] = names[entry["name"]]
            entries.append(entry)
    assert sorted(e["name"] for e in entries) == sorted(names)
    monkeypatch.setitem(suites.PAPER_SUITES, "beir-paper", {"datasets": entries})


def test_paper_suites_are_their_yaml_files() -> None:
    for name, doc in PAPER_SUITES.items():
        assert yaml.safe_load((REPO / "experiments" / "eval" / f"{name}.yaml").read_text()) == doc
    assert [e["name"] for e in PAPER_SUITES["beir-paper"]["datasets"]] == [
        "arguana", "climate-fever", "cqadupstack", "dbpedia-entity", "fever", "fiqa", "hotpotqa", "msmarco",
        "nfcorpus", "nq", "quora", "scidocs", "scifact", "webis-touche2020", "trec-covid",
    ]  # fmt: skip
    assert PAPER_SUITES["miracl-dev"]["datasets"][0]["languages"] == list(MIRACL_DEV_LANGUAGES)
    assert len(MIRACL_DEV_LANGUAGES) == 16 and len(CQADUPSTACK_FORUMS) == 12
    # every BEIR dataset of the suite has a public zip to download
    for entry in PAPER_SUITES["beir-paper"]["datasets"]:
        url, inner = paths.PUBLIC_DATASETS[f"beir/{entry['name']}"]
        assert url.endswith(f"/{entry['name']}.zip") and inner == entry["name"]


def test_beir_paper_is_mtebs_english_retrieval() -> None:
    """Same 15 tasks as MTEB(eng, v1) retrieval, same splits, same ignore_identical_ids, same forums."""
    mteb = pytest.importorskip("mteb")
    from lit_nomic.evaluation.beir import IDENTICAL_ID_TASKS

    ours_to_mteb = {
        "arguana": "ArguAna", "climate-fever": "ClimateFEVER", "cqadupstack": "CQADupstackRetrieval",
        "dbpedia-entity": "DBPedia", "fever": "FEVER", "fiqa": "FiQA2018", "hotpotqa": "HotpotQA",
        "msmarco": "MSMARCO", "nfcorpus": "NFCorpus", "nq": "NQ", "quora": "QuoraRetrieval",
        "scidocs": "SCIDOCS", "scifact": "SciFact", "webis-touche2020": "Touche2020", "trec-covid": "TRECCOVID",
    }  # fmt: skip
    bench = mteb.get_benchmark("MTEB(eng, v1)")
    retrieval = {t.metadata.name for t in bench.tasks if t.metadata.type == "Retrieval"}
    entries = {e["name"]: e for e in PAPER_SUITES["beir-paper"]["datasets"]}
    assert set(ours_to_mteb) == set(entries) and set(ours_to_mteb.values()) == retrieval
    for ours, theirs in ours_to_mteb.items():
        if ours == "cqadupstack":
            continue
        task = mteb.get_task(theirs)
        assert [entries[ours]["split"]] == task.metadata.eval_splits, ours
        assert bool(entries[ours].get("ignore_identical_ids", False)) == bool(task.ignore_identical_ids), ours
        assert (ours in IDENTICAL_ID_TASKS) == bool(task.ignore_identical_ids), ours
    for forum in CQADUPSTACK_FORUMS:
        task = mteb.get_task(f"CQADupstack{forum.capitalize()}Retrieval")
        assert task.metadata.eval_splits == ["test"] and not task.ignore_identical_ids


def test_beir_paper_cqadupstack_is_the_mean_of_its_forums_and_quora_never_finds_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    _forum(root / "beir" / "cqadupstack" / "android", "android")
    _forum(root / "beir" / "cqadupstack" / "gis", "gis")
    (root / "beir" / "cqadupstack" / "gis" / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\ta1\t1\n", encoding="utf-8"
    )  # gis: only q1 judged -> MRR 1.0 vs android's 0.75
    _write_beir(root / "beir" / "quora", QUORA_CORPUS, QUORA_QUERIES, QUORA_QRELS)
    _paper_subset(monkeypatch, {"cqadupstack": ["android", "gis"], "quora": None})

    out = tmp_path / "out"
    results = evaluate(_encoder(), "beir-paper", output_dir=out, data_root=root)
    keys = [(r["dataset"], r["language"], r["split"]) for r in results]
    assert keys == [
        ("cqadupstack", "android", "test"),
        ("cqadupstack", "gis", "test"),
        ("quora", None, "test"),
    ]
    by = {(r["dataset"], r["language"]): r for r in results}
    android, gis, quora = by[("cqadupstack", "android")], by[("cqadupstack", "gis")], by[("quora", None)]
    assert android["metrics"]["mrr@10"] == pytest.approx(0.75)
    assert gis["metrics"]["mrr@10"] == pytest.approx(1.0)
    assert android["extra"]["source"].endswith("beir/cqadupstack/android")

    # each forum's result is the forum evaluated on its own folder
    for forum, r in (("android", android), ("gis", gis)):
        alone = evaluate(
            _encoder(), root / "beir" / "cqadupstack" / forum, output_dir=tmp_path / f"alone-{forum}"
        )
        assert alone[0]["main_score"] == r["main_score"] and alone[0]["metrics"] == r["metrics"]

    # the table's CQADupStack column is the mean over its forums
    table = build_table(load_results(out))
    assert table.columns == ["cqadupstack", "quora", "Average"]
    assert table.get("bow", "cqadupstack") == pytest.approx((android["main_score"] + gis["main_score"]) / 2)
    assert "| bow | cqadupstack | **avg (2)** |" in format_table(results)

    # Quora: the documents are embedded like the queries, and a query never retrieves itself
    assert quora["settings"]["ignore_identical_ids"] is True
    assert quora["query_prefix"] == quora["document_prefix"] == Q_PREFIX
    assert android["document_prefix"] == D_PREFIX
    assert set(quora["per_query"]) == set(QUORA_QUERIES)
    assert all(row["mrr@10"] == 1.0 and row["precision@1"] == 1.0 for row in quora["per_query"].values())
    # the same folder with self-hits kept: each query's twin is ranked first, its duplicate second
    kept = tmp_path / "kept.yaml"
    kept.write_text(
        yaml.safe_dump({"datasets": [{"path": str(root / "beir" / "quora"), "ignore_identical_ids": False}]})
    )
    selfish = evaluate(_encoder(), str(kept), output_dir=tmp_path / "kept")[0]
    assert selfish["metrics"]["mrr@10"] == pytest.approx(0.5) and selfish["metrics"]["precision@1"] == 0.0


def _miracl_language(
    root: Path, lang: str, docs: dict[str, str], topics: dict[str, str], qrels: list[str]
) -> None:
    """The official layout: topics/, qrels/ and gzipped corpus shards under corpus/."""
    folder = root / "miracl" / lang
    for sub in ("topics", "qrels", "corpus"):
        (folder / sub).mkdir(parents=True)
    (folder / "topics" / f"topics.miracl-v1.0-{lang}-dev.tsv").write_text(
        "".join(f"{q}\t{t}\n" for q, t in topics.items()), encoding="utf-8"
    )
    (folder / "qrels" / f"qrels.miracl-v1.0-{lang}-dev.tsv").write_text(
        "\n".join(qrels) + "\n", encoding="utf-8"
    )
    items = list(docs.items())
    for shard, part in enumerate((items[: len(items) // 2], items[len(items) // 2 :])):
        with gzip.open(folder / "corpus" / f"docs-{shard}.jsonl.gz", "wt", encoding="utf-8") as fh:
            for doc_id, text in part:
                fh.write(json.dumps({"docid": doc_id, "title": doc_id.split("#")[0], "text": text}) + "\n")


def test_miracl_dev_two_languages_in_the_official_layout(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _miracl_language(
        root,
        "sw",
        {"Nairobi#0": "mji mkuu wa kenya", "Simba#0": "mnyama wa porini", "Chai#0": "kinywaji cha moto"},
        {"1": "mji mkuu wa kenya ni upi", "2": "kinywaji cha moto asubuhi"},
        ["1 Q0 Nairobi#0 1", "1 Q0 Simba#0 0", "2 Q0 Chai#0 1"],
    )
    _miracl_language(
        root,
        "fi",
        {"Helsinki#0": "suomen pääkaupunki", "Sauna#0": "kuuma huone", "Järvi#0": "suomen järvi vesi"},
        {"7": "suomen järvi", "8": "kuuma sauna"},
        ["7 Q0 Järvi#0 1", "8 Q0 Helsinki#0 1"],  # query 8's judged document shares no word with it
    )
    results = evaluate(
        _encoder(), "miracl-dev", languages=["sw", "fi"], output_dir=tmp_path / "out", data_root=root
    )
    assert [(r["dataset"], r["language"], r["split"]) for r in results] == [
        ("miracl", "sw", "dev"),
        ("miracl", "fi", "dev"),
    ]
    sw, fi = results
    assert sw["counts"]["num_documents"] == 3 and sw["counts"]["num_queries"] == 2
    assert sw["metrics"]["mrr@10"] == 1.0 and sw["main_score"] == 1.0
    assert fi["per_query"]["7"]["mrr@10"] == 1.0 and fi["per_query"]["8"]["mrr@10"] < 1.0
    assert fi["extra"]["source"] == "<data_root>/miracl/fi"

    # without --languages all 16 are required: one line naming the folders and what to fetch
    with pytest.raises(FileNotFoundError) as err:
        resolve_data("miracl-dev", data_root=root)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"'miracl' is missing 14 of 16 folders under {root / 'miracl'}: ar, bn, en," in msg
    assert "miracl/miracl-corpus" in msg and "topics.miracl-v1.0-<lang>-dev.tsv" in msg


def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """No network: every download attempt fails like a machine without DNS; returns the URLs tried."""
    tried: list[str] = []

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        tried.append(url)
        raise urllib.error.URLError("network disabled")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    return tried


def test_missing_data_fails_in_one_line_naming_folder_and_what_to_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_model: Path
) -> None:
    tried = _offline(monkeypatch, tmp_path)
    root = tmp_path / "empty"
    root.mkdir()
    argv = ["eval", "--model", str(tiny_model), "--output", str(tmp_path / "o"), "--data_root", str(root)]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--data", "beir-paper", "--device", "cpu"])
    assert exc.value.code == 2
    *progress, line = capsys.readouterr().err.strip().splitlines()
    assert len(progress) == 15 and all(p.startswith("downloading https://") for p in progress)
    assert line.startswith("lit-nomic eval: error: suite 'beir-paper': datasets[0]: suite 'arguana': ")
    assert f"no folder {root / 'beir' / 'arguana'}" in line
    assert (
        "downloading it from https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/arguana.zip"
        in line
    )
    assert "network disabled" in line and "(and 14 more missing dataset(s) of this suite)" in line
    assert len(tried) == 15  # every dataset was tried before giving up
    assert not (tmp_path / "cache" / "datasets" / "beir" / "arguana").exists()

    with pytest.raises(SystemExit):
        main([*argv, "--data", "miracl-dev", "--device", "cpu"])
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and len(tried) == 15  # MIRACL is never downloaded
    assert (
        f"no folder {root / 'miracl'}" in line
        and "it is not downloaded automatically: fetch MIRACL by hand" in line
    )


def test_missing_beir_dataset_is_downloaded_then_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _write_beir(tmp_path / "zip-src" / "quora", QUORA_CORPUS, QUORA_QUERIES, QUORA_QRELS)
    archive = tmp_path / "quora.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.rglob("*")):
            zf.write(f, f.relative_to(src.parent).as_posix())
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(paths.PUBLIC_DATASETS, "beir/quora", (archive.as_uri(), "quora"))
    root = tmp_path / "root"
    (spec,) = resolve_data("quora", data_root=root)
    assert spec.path == tmp_path / "cache" / "datasets" / "beir" / "quora" and spec.kind == "beir"
    archive.unlink()
    (again,) = resolve_data("quora", data_root=root)  # from the cache, no download
    assert again.path == spec.path
    result = evaluate(_encoder(), "quora", data_root=root, output_dir=tmp_path / "out")[0]
    assert result["settings"]["ignore_identical_ids"] is True and result["main_score"] == 1.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A tiny randomly initialised MoE encoder with MiniLM's tokenizer, saved as a model folder."""
    from lit_nomic.config import preset
    from lit_nomic.model.embedder import Embedder
    from lit_nomic.model.encoder import Encoder

    torch.manual_seed(0)
    source = Embedder.from_pretrained(minilm_dir)
    config = preset("tiny-moe", vocab_size=30522)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    Embedder(Encoder(config), source.tokenizer, "tiny").save_pretrained(folder)
    return folder


def test_dtype_is_recorded_and_keeps_its_own_result_file(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _write_beir(tmp_path / "data" / "toy", QUORA_CORPUS, QUORA_QUERIES, QUORA_QRELS)
    out, cache = tmp_path / "out", tmp_path / "cache"
    base = [
        "eval",
        "--model",
        str(tiny_model),
        "--data",
        str(folder),
        "--output",
        str(out),
        "--cache_dir",
        str(cache),
    ]
    main([*base, "--device", "cpu"])
    assert len(list(cache.glob("*.npy"))) == 2  # corpus + queries
    main([*base, "--device", "cpu", "--dtype", "bfloat16"])
    a, b = sorted(load_results(out), key=lambda r: "dtype" in r["settings"])
    assert "dtype" not in a["settings"] and a["extra"]["dtype"] == "float32" and a["extra"]["device"] == "cpu"
    assert b["settings"]["dtype"] == "bfloat16" and b["extra"]["dtype"] == "bfloat16"
    assert a["model_hash"] == b["model_hash"]  # the same weights, evaluated in another precision
    assert a["result_id"] != b["result_id"] and a["_path"] != b["_path"]
    # bf16 vectors are cached apart from the float32 ones, and they differ
    import numpy as np

    files = sorted(cache.glob("*corpus*.npy"))
    assert len(files) == 2
    e1, e2 = (np.load(f) for f in files)
    assert e1.shape == e2.shape and not np.array_equal(e1, e2)
    assert float(np.abs(e1 - e2).max()) < 0.05  # the same model, only rounded differently
    # a rerun in float32 replaces its own file only
    main([*base, "--device", "cpu", "--dtype", "float32"])
    assert sorted(p.name for p in Path(a["_path"]).parent.iterdir()) == sorted(
        {Path(a["_path"]).name, Path(b["_path"]).name}
    )
    capsys.readouterr()
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda but torch sees no CUDA device"):
            main([*base, "--device", "cuda"])
    with pytest.raises(SystemExit, match=r"--device 'gpu0' is not a device \(cpu, cuda, cuda:N\)"):
        main([*base, "--device", "gpu0"])
    with pytest.raises(SystemExit):
        main([*base, "--dtype", "int8"])
    assert "int8" in capsys.readouterr().err
