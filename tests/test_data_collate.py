"""Collation: prefixes, per-source max lengths, dynamic padding, negatives layout, duplicate ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lit_nomic.data.beir_pairs import BeirPairs
from lit_nomic.data.collate import PairCollator
from lit_nomic.data.mixture import SourceSpec
from lit_nomic.data.records import PairRecord, TrainingPair, choose, stable_text_hash
from lit_nomic.data.sampler import row_rng


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> PairCollator:
    return PairCollator(str(minilm_dir))


def test_contract_prefixes_padding_and_truncation(minilm: PairCollator) -> None:
    spec = SourceSpec("s", "x", max_query_length=8, max_document_length=16, num_negatives=2)
    pairs = [
        TrainingPair("short", "a tiny doc", ("neg one", "neg two")),
        TrainingPair("a much longer query that will surely be cut", "doc " * 40, ("n3", "n4 " * 30)),
    ]
    batch = minilm(pairs, spec, source_index=3)
    assert batch["source"] == "s" and batch["source_index"] == 3
    for key in ("query", "doc", "neg"):
        ids, mask = batch[f"{key}_input_ids"], batch[f"{key}_attention_mask"]
        assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape
        assert mask.sum(1).max() == ids.shape[1]  # padded to the longest row, not to max length
    assert batch["query_input_ids"].shape == (2, 8)  # truncated at max_query_length
    assert batch["doc_input_ids"].shape == (2, 16)
    assert batch["neg_input_ids"].shape[0] == 4
    tok = minilm.tokenizer
    assert tok.decode(batch["query_input_ids"][0], skip_special_tokens=True) == "search _ query : short"
    assert tok.decode(batch["doc_input_ids"][0], skip_special_tokens=True) == "search _ document : a tiny doc"
    # negatives of row i are rows i*n .. (i+1)*n - 1, with the document prefix
    negs = [tok.decode(row, skip_special_tokens=True) for row in batch["neg_input_ids"]]
    assert negs[:3] == [
        "search _ document : neg one",
        "search _ document : neg two",
        "search _ document : n3",
    ]
    assert negs[3].startswith("search _ document : n4")
    pad = tok.pad_token_id
    assert (batch["query_input_ids"][0][batch["query_attention_mask"][0] == 0] == pad).all()
    assert "token_type_ids" not in batch and "query_token_type_ids" not in batch


def test_doc_ids_equal_exactly_for_identical_positives(minilm: PairCollator) -> None:
    docs = ["alpha", "beta", "alpha", "gamma", "beta"]
    batch = minilm([TrainingPair(f"q{i}", d) for i, d in enumerate(docs)], SourceSpec("s", "x"), 0)
    ids = batch["doc_ids"]
    assert ids.dtype == torch.int64 and ids.shape == (5,)
    same = (ids[:, None] == ids[None, :]).numpy()
    expected = np.array([[a == b for b in docs] for a in docs])
    assert np.array_equal(same, expected)
    assert ids[0].item() == stable_text_hash("alpha")  # process-independent, unlike hash()
    assert len(set(batch["query_ids"].tolist())) == 5


def test_scifact_batch_flags_its_real_duplicate_documents(minilm: PairCollator, scifact_dir: Path) -> None:
    source = BeirPairs("scifact", scifact_dir)
    texts = [source.record(i).positives[0] for i in range(len(source))]
    # pick rows so that one document appears twice and the others once
    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        by_text.setdefault(text, []).append(i)
    dup_rows = next(rows for rows in by_text.values() if len(rows) >= 2)[:2]
    singles = [rows[0] for rows in by_text.values() if len(rows) == 1][:6]
    rows = [dup_rows[0], *singles[:3], dup_rows[1], *singles[3:]]
    pairs = [TrainingPair(source.record(r).queries[0], texts[r]) for r in rows]
    batch = minilm(pairs, SourceSpec("scifact", "beir/scifact", format="beir", max_document_length=64), 0)
    ids = batch["doc_ids"]
    off_diagonal = (ids[:, None] == ids[None, :]) & ~torch.eye(len(rows), dtype=torch.bool)
    assert off_diagonal.nonzero().tolist() == [[0, 4], [4, 0]]


def test_xlm_roberta_tokenizer_from_the_data_root(shared_data: Path) -> None:
    collator = PairCollator("xlm_roberta_tokenizer", root=shared_data)
    spec = SourceSpec("s", "x", query_prefix="", document_prefix="", max_query_length=6)
    batch = collator([TrainingPair("Hello world", "Hello"), TrainingPair("Hi", "x")], spec, 0)
    assert batch["query_input_ids"][0].tolist() == [0, 35378, 8999, 2]
    assert batch["query_input_ids"][1, -1].item() == collator.tokenizer.pad_token_id == 1
    assert batch["query_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_choose_is_deterministic_per_epoch_and_samples_without_replacement() -> None:
    record = PairRecord(("qa", "qb"), ("p1", "p2", "p3"), tuple(f"n{i}" for i in range(6)))
    picks = {epoch: choose(record, 3, lambda e=epoch: row_rng(7, e, 0, 42)) for epoch in range(8)}
    assert picks[0] == choose(record, 3, lambda: row_rng(7, 0, 0, 42))
    assert len({p.document for p in picks.values()}) > 1 and len({p.query for p in picks.values()}) == 2
    for pair in picks.values():
        assert len(set(pair.negatives)) == 3 and set(pair.negatives) <= set(record.negatives)
    plain = PairRecord(("q",), ("d",), ("n1", "n2"))
    assert choose(plain, 2, lambda: pytest.fail("no RNG needed without a choice")) == TrainingPair(
        "q", "d", ("n1", "n2")
    )
