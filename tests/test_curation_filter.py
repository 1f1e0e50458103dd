"""lit-nomic filter: chunked top-k consistency filtering on real MedQuAD / SciFact slices with MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_nomic.curation.common import CurationError, EncodeSettings, encoder_identity
from lit_nomic.curation.filter import FilterSettings, consistency_filter, pair_ranks
from lit_nomic.curation.inputs import open_pair_sources, pair_specs
from lit_nomic.data.mixture import SourceSpec, open_source
from lit_nomic.data.records import DataFormatError
from lit_nomic.evaluation.encoders import EmbeddingCache


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path):
    from lit_nomic.model.embedder import Embedder

    model = Embedder.from_pretrained(str(minilm_dir))
    cache = EmbeddingCache()  # memory layer: every test after the first reuses the vectors
    enc = EncodeSettings(
        model, "", "", batch_size=16, show_progress=False, cache=cache, model_hash=model.model_hash
    )
    return enc, encoder_identity(model, "", "")


@pytest.fixture(scope="module")
def medquad_pairs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 40 MedQuAD pairs (real text, columns question/answer)."""
    lines = (shared_data / "medquad" / "medquad_qa.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    path = tmp_path_factory.mktemp("medquad") / "medquad40.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _open(path: Path):
    specs = pair_specs(str(path), query_column="question", document_column="answer")
    return specs, open_pair_sources(specs)


def _run(minilm, path: Path, out: Path, **kw):
    enc, ident = minilm
    specs, sources = _open(path)
    settings = FilterSettings(chunk_size=kw.pop("chunk_size", 20), **kw)
    return consistency_filter(specs, sources, enc, out, settings, model_identity=ident, **{})


def _ranks(out: Path) -> dict[str, str]:
    ranks = {}
    for tsv in sorted((out / "chunks").rglob("*.ranks.tsv")):
        for line in tsv.read_text(encoding="utf-8").splitlines()[1:]:
            pid, rank, _, _ = line.split("\t")
            ranks[pid] = rank
    return ranks


def _kept(out: Path) -> list[str]:
    return (out / "kept_ids.txt").read_text(encoding="utf-8").split()


def test_rank_three_dropped_at_top2_kept_at_top3(minilm, medquad_pairs: Path, tmp_path: Path) -> None:
    r2 = _run(minilm, medquad_pairs, tmp_path / "k2", top_k=2, search="torch")
    r3 = _run(minilm, medquad_pairs, tmp_path / "k3", top_k=3, search="torch")
    ranks = _ranks(tmp_path / "k2")
    third = sorted(pid for pid, r in ranks.items() if r == "3")
    assert third, "the slice should hold pairs ranked 3rd in their chunk"
    for pid in third:
        assert pid not in _kept(tmp_path / "k2") and pid in _kept(tmp_path / "k3")
    assert _kept(tmp_path / "k2") == [p for p, r in ranks.items() if r in ("1", "2")]
    assert r3.report["total"]["kept"] - r2.report["total"]["kept"] == len(third)
    # the ranks agree with a brute-force count over the chunk's documents
    enc, _ = minilm
    specs, sources = _open(medquad_pairs)
    rows = [int(p.split(":")[1]) for p in third]
    recs = [sources[0].record(i) for i in range(20)]
    docs = np.asarray(enc.encoder.encode([r.positives[0] for r in recs], batch_size=16), dtype=np.float64)
    for row in (r for r in rows if r < 20):
        q = np.asarray(enc.encoder.encode([recs[row].queries[0]]), dtype=np.float64)[0]
        scores = docs @ q
        assert int((scores > scores[row]).sum()) + 1 == 3
    # report: per source and per language counts, and the histogram adds up
    rep = r2.report
    assert rep["per_source"]["medquad40"]["pairs"] == 40
    assert rep["per_language"]["unknown"]["kept"] == rep["total"]["kept"]
    assert sum(rep["rank_histogram"].values()) == 40


def test_ties_count_for_the_pair_and_same_query_positives_do_not_count() -> None:
    e = np.eye(4, dtype=np.float32)
    queries = np.stack([e[0], e[1]])
    # doc 0 ties doc 1 exactly for query 0; doc 2 outranks both for query 0
    docs = np.stack([(e[0] + e[2]) / np.sqrt(2), (e[0] + e[3]) / np.sqrt(2), e[0], e[1]]).astype(np.float32)
    ranks, own = pair_ranks(queries, docs, np.array([0, 0, 1]), np.array([0, 1, 3]), depth=5, backend="torch")
    # pair 0 (q0, d0): d2 higher; d1 ties (and is a positive of q0 anyway); rank 2
    # pair 1 (q0, d1): d2 higher; d0 ties -> counts in its favour -> rank 2
    assert ranks.tolist() == [2, 2, 1]
    assert own[0] == own[1]
    ranks, _ = pair_ranks(queries[:1], docs, np.array([0]), np.array([1]), depth=5, backend="torch")
    assert ranks.tolist() == [2]  # d0 ties d1: not counted against it, d2 is


def test_ivf_probing_every_list_matches_exact_search() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((400, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[:50] + 0.5 * rng.standard_normal((50, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    pq, pd = np.arange(50), np.arange(50)
    exact, _ = pair_ranks(queries, docs, pq, pd, depth=10, backend="torch")
    ivf, _ = pair_ranks(queries, docs, pq, pd, depth=10, backend="faiss-ivf", ivf=(8, 8))
    assert ivf.tolist() == exact.tolist() and len(set(exact.tolist())) > 2


def test_faiss_and_torch_keep_the_same_pairs(minilm, medquad_pairs: Path, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    _run(minilm, medquad_pairs, tmp_path / "t", search="torch")
    _run(minilm, medquad_pairs, tmp_path / "f", search="faiss")
    assert _kept(tmp_path / "t") == _kept(tmp_path / "f")
    assert _ranks(tmp_path / "t") == _ranks(tmp_path / "f")
    for name in ("chunk-00000.jsonl", "chunk-00001.jsonl"):
        a = (tmp_path / "t" / "chunks" / "medquad40" / name).read_bytes()
        assert a == (tmp_path / "f" / "chunks" / "medquad40" / name).read_bytes()


def _tree(out: Path) -> dict[str, bytes]:
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and ".work" not in p.parts:
            data = p.read_bytes()
            if p.name == "mixture.yaml":
                data = data.replace(str(out).encode(), b"OUT")
            files[str(p.relative_to(out))] = data
    return files


def test_killed_filter_resumes_at_next_chunk_byte_identical(
    minilm, medquad_pairs: Path, tmp_path: Path
) -> None:
    enc, ident = minilm
    settings = FilterSettings(chunk_size=15, search="torch")  # chunks of 15, 15, 10
    specs, sources = _open(medquad_pairs)
    consistency_filter(specs, sources, enc, tmp_path / "whole", settings, model_identity=ident)

    class Killed(RuntimeError):
        pass

    def kill(name: str) -> None:
        raise Killed(name)

    with pytest.raises(Killed, match="chunk-00000"):
        consistency_filter(
            specs, sources, enc, tmp_path / "killed", settings, model_identity=ident, after_chunk=kill
        )
    assert not (tmp_path / "killed" / "report.json").exists()
    assert (tmp_path / "killed" / "chunks" / "medquad40" / "chunk-00000.json").is_file()
    assert not (tmp_path / "killed" / "chunks" / "medquad40" / "chunk-00001.json").exists()
    resumed = consistency_filter(specs, sources, enc, tmp_path / "killed", settings, model_identity=ident)
    assert resumed.processed == ["chunk-00001", "chunk-00002"]
    assert _tree(tmp_path / "killed") == _tree(tmp_path / "whole")
    # a third run does nothing; other settings in the same folder are refused
    assert (
        consistency_filter(specs, sources, enc, tmp_path / "killed", settings, model_identity=ident).processed
        == []
    )
    with pytest.raises(CurationError, match="different settings.*chunk_size|filter"):
        consistency_filter(
            specs, sources, enc, tmp_path / "killed", FilterSettings(chunk_size=20), model_identity=ident
        )


def test_shard_workers_share_a_folder_and_memmap_gives_the_same_output(
    minilm, medquad_pairs: Path, tmp_path: Path
) -> None:
    enc, ident = minilm
    specs, sources = _open(medquad_pairs)
    consistency_filter(
        specs, sources, enc, tmp_path / "one", FilterSettings(chunk_size=15), model_identity=ident
    )
    small = EncodeSettings(enc.encoder, "", "", batch_size=16, show_progress=False, in_memory_rows=7)
    a = consistency_filter(
        specs,
        sources,
        small,
        tmp_path / "two",
        FilterSettings(chunk_size=15, shard="0/2"),
        model_identity=ident,
    )
    assert a.report is None and a.processed == ["chunk-00000", "chunk-00002"]
    b = consistency_filter(
        specs,
        sources,
        small,
        tmp_path / "two",
        FilterSettings(chunk_size=15, shard="1/2"),
        model_identity=ident,
    )
    assert b.processed == ["chunk-00001"] and b.report is not None
    # blocks of 7 texts batch differently (last-digit float noise in the scores): same decisions
    assert _kept(tmp_path / "two") == _kept(tmp_path / "one")
    assert _ranks(tmp_path / "two") == _ranks(tmp_path / "one")
    for name in ("chunk-00000.jsonl", "chunk-00001.jsonl", "chunk-00002.jsonl"):
        one = (tmp_path / "one" / "chunks" / "medquad40" / name).read_bytes()
        assert (tmp_path / "two" / "chunks" / "medquad40" / name).read_bytes() == one
    assert not list((tmp_path / "two" / ".work").glob("*.npy"))  # memory-mapped blocks cleaned up


def test_kept_pairs_load_through_the_training_reader(minilm, medquad_pairs: Path, tmp_path: Path) -> None:
    result = _run(minilm, medquad_pairs, tmp_path / "o")
    source = open_source(SourceSpec(name="kept", path=str(tmp_path / "o" / "chunks" / "medquad40")))
    assert len(source) == result.report["total"]["kept"]
    first = json.loads(
        (tmp_path / "o" / "chunks" / "medquad40" / "chunk-00000.jsonl").read_text().splitlines()[0]
    )
    assert source.record(0).queries == (first["query"],) and source.record(0).positives == (
        first["document"],
    )
    specs, sources = _open(medquad_pairs)
    row = int(first["id"].split(":")[1])
    assert sources[0].record(row).queries[0] == first["query"]


def test_bad_input_names_file_and_line_or_is_counted(minilm, medquad_pairs: Path, tmp_path: Path) -> None:
    lines = medquad_pairs.read_text(encoding="utf-8").splitlines()[:12]
    obj = json.loads(lines[4])
    obj["answer"] = "  "
    lines[4] = json.dumps(obj)
    lines[7] = json.dumps({"question": "q only"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"{bad}:5: field 'answer' is empty"):
        _open(bad)
    specs = pair_specs(str(bad), query_column="question", document_column="answer")
    sources = open_pair_sources(specs, on_error="skip")
    enc, ident = minilm
    result = consistency_filter(
        specs, sources, enc, tmp_path / "o", FilterSettings(chunk_size=20), model_identity=ident
    )
    src = result.report["per_source"]["bad"]
    assert src["pairs"] == 10 and src["skipped_bad_input"] == 2
    assert f"{bad}:8: missing field 'answer'" in " ".join(src["skipped_examples"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="no usable records"):
        _open(empty)


def test_beir_split_and_cli(minilm_dir: Path, scifact_dir: Path, tmp_path: Path) -> None:
    """The CLI on a 30-pair BEIR folder cut from SciFact train: one located line for bad settings."""
    from lit_nomic.cli import main

    folder = tmp_path / "sf"
    (folder / "qrels").mkdir(parents=True)
    rows = (scifact_dir / "qrels" / "train.tsv").read_text().splitlines()[1:31]
    need_q = {r.split("\t")[0] for r in rows}
    need_d = {r.split("\t")[1] for r in rows}
    for name, need in (("queries.jsonl", need_q), ("corpus.jsonl", need_d)):
        kept = [ln for ln in (scifact_dir / name).read_text().splitlines() if json.loads(ln)["_id"] in need]
        (folder / name).write_text("\n".join(kept) + "\n")
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    torch.manual_seed(0)
    main(["filter", "--model", str(minilm_dir), "--data", str(folder), "--output", str(tmp_path / "o"),
          "--chunk_size", "30", "--search", "torch", "--batch_size", "16"])  # fmt: skip
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["total"]["pairs"] == 30 and report["per_source"]["sf"]["pairs"] == 30
    assert len(_kept(tmp_path / "o")) == report["total"]["kept"]
    with pytest.raises(SystemExit):
        main(["filter", "--model", str(minilm_dir), "--data", str(folder), "--output", str(tmp_path / "x"),
              "--top_k", "0"])  # fmt: skip
