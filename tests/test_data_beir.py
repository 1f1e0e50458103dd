"""BEIR folders and SciTLDR as training pairs (real SciFact / SciTLDR plus synthetic bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_nomic.data.beir_pairs import BeirPairs
from lit_nomic.data.records import DataFormatError, PairRecord
from lit_nomic.data.scitldr import SciTldrPairs


def make_beir(
    root: Path, qrels: str, corpus: list[dict] | None = None, queries: list[dict] | None = None
) -> Path:
    (root / "qrels").mkdir(parents=True)
    corpus = corpus or [
        {"_id": "d1", "title": "Title one", "text": "Body one."},
        {"_id": "d2", "title": "", "text": "Body two."},
        {"_id": "d3", "title": "Unjudged", "text": "Never read."},
    ]
    queries = queries or [{"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "second?"}]
    (root / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "train.tsv").write_text(qrels)
    return root


def test_synthetic_beir_pairs_header_scores_and_titles(tmp_path: Path) -> None:
    folder = make_beir(
        tmp_path / "b", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t0\nq1\td2\t1\n"
    )
    source = BeirPairs("b", folder)
    assert len(source) == 3  # score 0 is not a positive
    assert [source.record(i) for i in range(3)] == [
        PairRecord(("first?",), ("Title one Body one.",)),
        PairRecord(("second?",), ("Body two.",)),  # empty title: no leading space
        PairRecord(("first?",), ("Body two.",)),
    ]


def test_unknown_corpus_id_names_qrels_line(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\tmissing\t1\n")
    with pytest.raises(DataFormatError, match=r"train\.tsv:3: corpus id 'missing' has no usable line"):
        BeirPairs("b", folder)
    skipping = BeirPairs("b", folder, on_error="skip")
    assert len(skipping) == 1 and skipping.skipped == 1


def test_bad_qrels_and_corpus_lines(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b1", "q1\td1\tyes\n")
    # a non-integer score on line 1 is a header; there are no positives left
    with pytest.raises(DataFormatError, match="no positive qrels"):
        BeirPairs("b1", folder)
    folder = make_beir(tmp_path / "b2", "q1\td1\t1\nq1\td1\tmaybe\n")
    with pytest.raises(DataFormatError, match=r"train\.tsv:2: score 'maybe' is not an integer"):
        BeirPairs("b2", folder)
    folder = make_beir(tmp_path / "b3", "q1\td1\t1\n", corpus=[{"_id": "d1", "title": "", "text": "  "}])
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:1: document has empty 'title' and 'text'"):
        BeirPairs("b3", folder)


def test_missing_split_file_names_source(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b", "q1\td1\t1\n")
    with pytest.raises(FileNotFoundError, match="source 'b'.*'dev.tsv'"):
        BeirPairs("b", folder, split="dev")


def test_scifact_train_pairs_match_the_files(scifact_dir: Path) -> None:
    source = BeirPairs("scifact", scifact_dir, split="train")
    assert len(source) == 919
    queries = {}
    with open(scifact_dir / "queries.jsonl", encoding="utf-8") as handle:
        for line in handle:
            obj = json.loads(line)
            queries[obj["_id"]] = obj["text"]
    qrels = [line.split("\t") for line in (scifact_dir / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    wanted = {qrels[0][1], qrels[-1][1]}
    docs = {}
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            obj = json.loads(line)
            if obj["_id"] in wanted:
                docs[obj["_id"]] = obj["title"] + " " + obj["text"]
    for index, row in ((0, qrels[0]), (918, qrels[-1])):
        assert source.record(index) == PairRecord((queries[row[0]],), (docs[row[1]],))
    # SciFact repeats documents across claims: duplicate positives are the norm, not an edge case
    assert len({source.record(i).positives for i in range(919)}) == 565


def test_scitldr_tldr_and_title_queries(shared_data: Path) -> None:
    folder = shared_data / "scitldr"
    tldr = SciTldrPairs("tldr", folder, split="train")
    title = SciTldrPairs("title", folder / "SciTLDR-A.train.jsonl", query_field="title")
    assert len(tldr) == len(title) == 1992
    with open(folder / "SciTLDR-A.train.jsonl", encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    abstract = " ".join(s.strip() for s in first["source"])
    assert tldr.record(0) == PairRecord(tuple(first["target"]), (abstract,))
    assert title.record(0) == PairRecord((first["title"],), (abstract,))
    # line 1538 has an empty sentence inside its abstract: dropped, not an error and not an extra space
    with open(folder / "SciTLDR-A.train.jsonl", encoding="utf-8") as handle:
        line_1538 = json.loads(handle.readlines()[1537])
    assert any(not s.strip() for s in line_1538["source"])
    assert tldr.record(1537).positives == (" ".join(s.strip() for s in line_1538["source"] if s.strip()),)
