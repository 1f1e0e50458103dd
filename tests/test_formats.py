"""The shared reader layer (lit_nomic.data.formats): the BEIR text rule that training, evaluation and
curation all read documents with, and the one error type naming file and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lit_nomic.curation.mine import read_corpus
from lit_nomic.data import formats
from lit_nomic.data.beir_pairs import BeirPairs
from lit_nomic.data.formats import DataFormatError, Document, beir_document_text, iter_jsonl, load_qrels_tsv
from lit_nomic.evaluation.beir import load_beir


@pytest.mark.parametrize(
    ("title", "text", "expected"),
    [
        ("A title", "The body.", "A title The body."),  # title present: joined by one space
        ("", "The body.", "The body."),  # title empty: the text alone, no leading space
        ("A title", "", "A title"),  # text empty: the title alone, no trailing space
        ("  ", "  The body. ", "The body."),  # whitespace-only title: stripped away
        # mteb's rule strips the ends only: inner spaces of title + " " + text are kept as written
        ("A title ", " The body.", "A title   The body."),
        ("", "", ""),
    ],
)
def test_beir_text_rule(title: str, text: str, expected: str) -> None:
    assert beir_document_text(title, text) == expected
    assert Document("d", title, text).full_text() == expected


def _beir(root: Path, docs: list[dict]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"query {i}?"} for i in range(len(docs))]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    rows = "".join(f"q{i}\t{d['_id']}\t1\n" for i, d in enumerate(docs))
    for split in ("train", "test"):
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return root


DOCS = [
    {"_id": "d0", "title": "Title", "text": "Body."},
    {"_id": "d1", "title": "", "text": " Body only. "},
    {"_id": "d2", "title": "Title only", "text": ""},
    {"_id": "d3", "title": "Spaced title ", "text": "  spaced body"},  # the old training rule differed
    {"_id": "d4", "text": "No title field."},
]


def test_training_evaluation_and_curation_read_the_same_document_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _beir(tmp_path / "b", DOCS)
    expected = [beir_document_text(d.get("title", ""), d["text"]) for d in DOCS]
    train = BeirPairs("b", folder)
    assert [train.record(i).positives[0] for i in range(len(train))] == expected
    assert load_beir(folder, "test").doc_texts == expected
    assert read_corpus(folder / "corpus.jsonl")[1] == expected

    # all three go through the one function: replacing it changes what each of them reads
    calls: list[tuple[str, str]] = []

    def spy(title: str, text: str) -> str:
        calls.append((title, text))
        return f"<{title}|{text}>"

    monkeypatch.setattr(formats, "beir_document_text", spy)
    marked = [f"<{d.get('title', '')}|{d['text']}>" for d in DOCS]
    assert [train.record(i).positives[0] for i in range(len(train))] == marked
    assert load_beir(folder, "test").doc_texts == marked
    assert len(calls) == 2 * len(DOCS)


def test_errors_are_data_format_errors_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a"}\n{"_id": \n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: malformed JSON") as info:
        list(iter_jsonl(bad))
    assert info.value.where == f"{bad}:2" and isinstance(info.value, ValueError)
    gz = tmp_path / "x.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"a": 1}\n' * 1000)[:40])
    with pytest.raises(DataFormatError, match=r"x\.jsonl\.gz:\d+: truncated or corrupt gzip"):
        list(iter_jsonl(gz))
    qrels = tmp_path / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\tyes\n")
    with pytest.raises(DataFormatError, match=r"test\.tsv:2: score 'yes' .* is not an integer"):
        load_qrels_tsv(qrels)
