"""JSONL/JSONL.gz readers: offset index, seek reads, column mapping, bad-input policy, gz cache."""

from __future__ import annotations

import gzip
import json
import logging
import pickle
from pathlib import Path

import pytest

from lit_nomic.data.jsonl import ColumnExtractor, JsonlPairs
from lit_nomic.data.records import DataFormatError, PairRecord
from lit_nomic.data.shards import resolve_shards


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def pairs(start: int, count: int) -> list[dict]:
    return [{"query": f"q{i} ünïcode", "document": f"d{i}"} for i in range(start, start + count)]


def test_reads_every_pair_in_order_across_plain_and_gz_shards(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "part-000.jsonl", pairs(0, 5))
    write_jsonl(folder / "part-001.jsonl.gz", pairs(5, 4), gz=True)
    write_jsonl(folder / "part-002.jsonl", pairs(9, 3))
    (folder / "notes.txt").write_text("not a shard")
    cache = tmp_path / "cache"
    source = JsonlPairs("toy", folder, cache_dir=cache)
    assert len(source) == 12
    got = [source.record(i) for i in range(12)]
    assert got == [PairRecord((f"q{i} ünïcode",), (f"d{i}",)) for i in range(12)]
    # random access order does not matter (reads are by offset, not sequential)
    assert source.record(7) == got[7] and source.record(0) == got[0]
    assert len(list(cache.iterdir())) == 1  # the .gz shard was decompressed once into the cache


def test_gz_cache_is_reused_and_keyed_by_content(tmp_path: Path) -> None:
    shard = write_jsonl(tmp_path / "a.jsonl.gz", pairs(0, 3), gz=True)
    cache = tmp_path / "cache"
    JsonlPairs("a", shard, cache_dir=cache)
    (cached,) = cache.iterdir()
    before = cached.stat().st_mtime_ns
    assert JsonlPairs("a", shard, cache_dir=cache).record(2).queries == ("q2 ünïcode",)
    assert cached.stat().st_mtime_ns == before  # not rewritten
    write_jsonl(shard, pairs(10, 4), gz=True)  # new content -> new key
    assert JsonlPairs("a", shard, cache_dir=cache).record(3).queries == ("q13 ünïcode",)
    assert len(list(cache.iterdir())) == 2


def test_corrupt_gz_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"query": "a", "document": "b"}\n')[:-12])
    with pytest.raises(DataFormatError, match="broken.jsonl.gz"):
        JsonlPairs("b", bad, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.tmp*"))


def test_glob_and_single_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "x-1.jsonl", pairs(0, 2))
    write_jsonl(tmp_path / "x-2.jsonl", pairs(2, 2))
    write_jsonl(tmp_path / "y.jsonl", pairs(100, 1))
    assert len(JsonlPairs("g", str(tmp_path / "x-*.jsonl"))) == 4
    assert JsonlPairs("f", tmp_path / "y.jsonl").record(0).positives == ("d100",)


def test_columns_pos_lists_and_negatives(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"q": "a", "pos": ["p1", "p2"], "neg": ["n1", "n2", "n3"]},
            {"q": ["a1", "a2"], "pos": "p", "neg": ["n1", "n2"]},
        ],
    )
    source = JsonlPairs("t", path, ColumnExtractor(query="q", num_negatives=2))
    assert source.record(0) == PairRecord(("a",), ("p1", "p2"), ("n1", "n2", "n3"))
    assert source.record(1) == PairRecord(("a1", "a2"), ("p",), ("n1", "n2"))
    # negatives are not read (nor required) when none are requested
    assert JsonlPairs("t0", path, ColumnExtractor(query="q")).record(0).negatives == ()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "a", "document": ', r"bad\.jsonl:3: malformed JSON"),
        ('["query", "document"]', r"bad\.jsonl:3: expected a JSON object, got list"),
        ('{"query": "a"}', r"bad\.jsonl:3: missing field 'document' \(or 'pos'\)"),
        (
            '{"query": 7, "document": "b"}',
            r"bad\.jsonl:3: field 'query' must be a string or a list of strings, got int",
        ),
        ('{"query": "  ", "document": "b"}', r"bad\.jsonl:3: field 'query' is empty"),
        (
            '{"query": "a", "document": ["b", 3]}',
            r"bad\.jsonl:3: field document\[1\] must be a string, got int",
        ),
    ],
)
def test_bad_line_raises_with_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "a", "document": "b"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=message):
        JsonlPairs("bad", path)


def test_too_few_negatives_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "n.jsonl", [{"query": "a", "document": "b", "neg": ["x"]}])
    with pytest.raises(DataFormatError, match=r"n\.jsonl:1: field 'neg' has 1 item\(s\), need at least 2"):
        JsonlPairs("n", path, ColumnExtractor(num_negatives=2))


def test_skip_policy_counts_logs_and_keeps_good_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"query": "q0", "document": "d0"},
        "{broken",
        {"query": "q2", "document": ""},
        {"query": "q3", "document": "d3"},
        {"query": "q4"},
        "",
        {"query": "q6", "document": "d6"},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="lit_nomic.data.records"):
        source = JsonlPairs("mixed", path, on_error="skip")
    assert len(source) == 3  # the blank line is not a record, so it is neither kept nor counted
    assert [source.record(i).queries[0] for i in range(3)] == ["q0", "q3", "q6"]
    assert source.skipped == 3
    assert source.skip_report.examples[0].endswith(
        "mixed.jsonl:2: malformed JSON (Expecting property name enclosed in double quotes)"
    )
    assert "mixed.jsonl:3: field 'document' is empty" in source.skip_report.examples[1]
    assert "'mixed': skipped 3 bad record(s)" in caplog.text


def test_all_lines_bad_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "none.jsonl", ["{", "{"])
    with pytest.raises(DataFormatError, match="has no usable records \\(2 skipped\\)"):
        JsonlPairs("none", path, on_error="skip")


def test_missing_path_names_data_env(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="LIT_NOMIC_DATA"):
        resolve_shards("no/such/shards-*.jsonl", root=tmp_path)


def test_reader_survives_pickling_like_a_spawned_worker(tmp_path: Path) -> None:
    source = JsonlPairs("p", write_jsonl(tmp_path / "p.jsonl", pairs(0, 6)))
    assert source.record(5).queries == ("q5 ünïcode",)  # opens a descriptor in this process
    clone = pickle.loads(pickle.dumps(source))
    assert [clone.record(i) for i in range(6)] == [source.record(i) for i in range(6)]


def test_index_out_of_range_names_source(tmp_path: Path) -> None:
    source = JsonlPairs("small", write_jsonl(tmp_path / "s.jsonl", pairs(0, 2)))
    with pytest.raises(IndexError, match="source 'small': row 2 out of range"):
        source.record(2)


def test_medquad_question_answer_pairs(shared_data: Path) -> None:
    path = shared_data / "medquad" / "medquad_qa.jsonl"
    source = JsonlPairs("medquad", path, ColumnExtractor(query="question", document="answer"))
    assert len(source) == 16407
    with open(path, encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert source.record(0) == PairRecord((first["question"],), (first["answer"],))
    with open(path, encoding="utf-8") as handle:
        *_, last_line = handle
    last = json.loads(last_line)
    assert source.record(len(source) - 1) == PairRecord((last["question"],), (last["answer"],))
