"""BEIR loader: real SciFact counts, mteb's document-text convention, and named errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_nomic.evaluation.beir import beir_splits, load_beir
from lit_nomic.evaluation.retrieval_data import Document, subsample


def _write_beir(
    root: Path,
    corpus: list[dict] | str,
    queries: list[dict] | str,
    qrels: str,
    split: str = "test",
) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
        (root / name).write_text(text, encoding="utf-8")
    (root / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
    return root


CORPUS = [
    {"_id": "d1", "title": "Title one", "text": "Body one."},
    {"_id": "d2", "title": "", "text": "  Body two.  "},
    {"_id": 3, "text": "Numeric id, no title."},
]
QUERIES = [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}, {"_id": "q3", "text": "unjudged"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\t3\t2\nq2\td2\t0\n"


def test_small_folder_roundtrip(tmp_path: Path) -> None:
    ds = load_beir(_write_beir(tmp_path, CORPUS, QUERIES, QRELS))
    assert ds.doc_ids == ["d1", "d2", "3"]
    assert ds.query_ids == ["q1"]  # q3 has no judgments in this split, q2 only a 0 judgment
    assert ds.qrels == {"q1": {"d1": 1, "3": 2}}
    assert ds.queries_without_positive == ("q2",)
    assert ds.num_relevant == 2
    assert beir_splits(tmp_path) == ["test"]
    assert not ds.ignore_identical_ids


def test_document_text_matches_mteb() -> None:
    corpus_to_dict = pytest.importorskip("mteb._create_dataloaders")._corpus_to_dict
    docs = [
        Document("a", "Title", "text"),
        Document("b", "", "  text with spaces  "),
        Document("c", "Title ", " text"),
        Document("d", "T", ""),
    ]
    for doc in docs:
        expected = corpus_to_dict({"id": doc.id, "title": doc.title, "text": doc.text})["text"]
        assert doc.full_text() == expected
    assert docs[0].full_text() == "Title text"


@pytest.mark.parametrize(
    ("corpus", "queries", "qrels", "message"),
    [
        (
            '{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": \n',
            QUERIES,
            QRELS,
            r"corpus\.jsonl:2: malformed JSON",
        ),
        ([{"_id": "d1", "title": "t"}], QUERIES, QRELS, r"corpus\.jsonl:1: missing field 'text'"),
        ([{"text": "no id"}], QUERIES, QRELS, r"corpus\.jsonl:1: missing field '_id'"),
        (
            [{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}],
            QUERIES,
            QRELS,
            r"corpus\.jsonl:2: duplicate document id 'd1' \(first at line 1\)",
        ),
        ("\n\n", QUERIES, QRELS, r"corpus\.jsonl: empty corpus"),
        (
            CORPUS,
            [{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}],
            QRELS,
            r"queries\.jsonl:2: duplicate query id 'q1'",
        ),
        (
            CORPUS,
            QUERIES,
            "query-id\tcorpus-id\tscore\nq1\td9\t1\n",
            r"test\.tsv:2: corpus id 'd9' \(query 'q1'\) is not in corpus",
        ),
        (
            CORPUS,
            QUERIES,
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nqX\td1\t1\n",
            r"test\.tsv:3: query id 'qX' is not in queries",
        ),
        (
            CORPUS,
            QUERIES,
            "query-id\tcorpus-id\tscore\nq1\td1\t0.5\n",
            r"test\.tsv:2: score '0\.5' .* is not an integer",
        ),
        (CORPUS, QUERIES, "qid\tdocid\tscore\nq1\td1\t1\n", r"test\.tsv:1: expected header"),
        (
            CORPUS,
            QUERIES,
            "query-id\tcorpus-id\tscore\nq1\td1\n",
            r"test\.tsv:2: expected 3 tab-separated columns",
        ),
        (
            CORPUS,
            QUERIES,
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n",
            r"test\.tsv:3: .* judged 2 here but 1 at line 2",
        ),
        (
            [{"_id": "d1", "text": "x"}, {"_id": "d2", "title": " ", "text": "  "}],
            QUERIES,
            QRELS,
            r"corpus\.jsonl:2: document 'd2' has empty 'title' and 'text'",
        ),
        (
            CORPUS,
            [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": " "}],
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n",
            r"queries\.jsonl:2: query 'q2' has an empty 'text'",
        ),
        (
            CORPUS,
            QUERIES,
            "query-id\tcorpus-id\tscore\nq1\td1\t0\nq2\td2\t0\n",
            r"test\.tsv: none of the 2 judged queries has a relevant document \(score > 0\)",
        ),
    ],
)
def test_errors_name_file_line_and_id(tmp_path: Path, corpus, queries, qrels, message: str) -> None:  # noqa: ANN001
    folder = _write_beir(tmp_path, corpus, queries, qrels)
    with pytest.raises(ValueError, match=message):
        load_beir(folder)


def test_empty_query_outside_the_split_is_ignored(tmp_path: Path) -> None:
    # like the training reader, only the queries a split judges must have text
    queries = [*QUERIES, {"_id": "q4", "text": ""}]
    assert load_beir(_write_beir(tmp_path, CORPUS, queries, QRELS)).query_ids == ["q1"]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    folder = _write_beir(tmp_path, CORPUS, QUERIES, QRELS)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        path = folder / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    ds = load_beir(folder)
    assert ds.doc_ids == ["d1", "d2", "3"] and ds.query_ids == ["q1"]


def test_missing_split_lists_available(tmp_path: Path) -> None:
    folder = _write_beir(tmp_path, CORPUS, QUERIES, QRELS, split="dev")
    with pytest.raises(FileNotFoundError, match=r"no qrels for split 'test'; available splits: \['dev'\]"):
        load_beir(folder, "test")


def test_real_scifact_counts(scifact_dir: Path) -> None:
    test = load_beir(scifact_dir, "test")
    assert (len(test.corpus), len(test.queries), sum(len(v) for v in test.qrels.values())) == (5183, 300, 339)
    train = load_beir(scifact_dir, "train")
    assert (len(train.queries), sum(len(v) for v in train.qrels.values())) == (809, 919)
    doc = test.corpus["4983"]
    assert test.doc_texts[0] == doc.title + " " + doc.text
    assert test.name == "scifact" and not test.ignore_identical_ids


def test_subsample_keeps_judged_documents(scifact_dir: Path) -> None:
    full = load_beir(scifact_dir, "test")
    small = subsample(full, 60, max_queries=20, seed=3)
    assert small.name == "scifact-sub60"
    assert len(small.corpus) == 60 and len(small.queries) == 20
    for q in small.queries:
        assert all(d in small.corpus for d in small.qrels[q])
    assert subsample(full, 60, max_queries=20, seed=3).doc_ids == small.doc_ids  # deterministic
    with pytest.raises(ValueError, match="judge .* documents, more than max_docs=5"):
        subsample(full, 5, max_queries=20)
