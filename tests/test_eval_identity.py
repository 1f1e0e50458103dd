"""Result identity: every score-changing setting is recorded and gets its own file; tables never
drop a result silently (issue 9, A and B)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lexical_encoder import HashingEncoder

from lit_nomic import cli
from lit_nomic.evaluation.encoders import EmbeddingCache, encode_texts
from lit_nomic.evaluation.report import build_table, to_markdown
from lit_nomic.evaluation.results import (
    IDENTITY_FIELDS,
    build_result,
    load_result,
    load_results,
    write_result,
)
from lit_nomic.evaluation.run import evaluate

CORPUS = [
    {"_id": "d1", "title": "Cats", "text": "cats purr and sleep all day"},
    {"_id": "d2", "title": "Dogs", "text": "dogs bark at the postman"},
    {"_id": "d3", "title": "", "text": "the stock market fell sharply today"},
    {"_id": "d4", "title": "Rain", "text": "rain is expected tomorrow in the north"},
]
QUERIES = [
    {"_id": "q1", "text": "why do cats purr"},
    {"_id": "q2", "text": "dogs barking"},
    {"_id": "q3", "text": "weather tomorrow"},
]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td4\t2\nq3\td3\t0\n"


def _beir(root: Path, qrels: str = QRELS) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES), encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return root


def _encoder(max_length: int | None = None) -> HashingEncoder:
    enc = HashingEncoder(dim=256, name="bow", query_prefix="q: ", document_prefix="d: ")
    if max_length is not None:
        enc.max_seq_length = max_length  # type: ignore[attr-defined]  # as `lit-nomic eval --max_length`
    return enc


def test_every_setting_gets_its_own_file_and_is_recorded(tmp_path: Path) -> None:
    data, out = _beir(tmp_path / "tiny"), tmp_path / "out"
    runs = [
        evaluate(_encoder(), str(data), output_dir=out),
        evaluate(_encoder(), str(data), output_dir=out, query_prefix="search_query: "),
        evaluate(_encoder(), str(data), output_dir=out, document_prefix="search_document: "),
        evaluate(_encoder(max_length=8), str(data), output_dir=out),
        evaluate(_encoder(max_length=16), str(data), output_dir=out),
        evaluate(_encoder(), str(data), output_dir=out, top_k=2),
        evaluate(_encoder(), str(data), output_dir=out, matryoshka_dim=64),
    ]
    results = [r for run in runs for r in run]
    assert len({r["_path"] for r in results}) == len(runs) == len(load_results(out))
    assert len({r["result_id"] for r in results}) == len(runs)
    by_id = {r["result_id"]: r for r in load_results(out)}
    for r in results:
        on_disk = by_id[r["result_id"]]
        assert r["result_id"] in Path(r["_path"]).name
        for key in IDENTITY_FIELDS:
            assert on_disk[key] == r[key], key
    assert [r["max_length"] for r in results] == [None, None, None, 8, 16, None, None]
    assert (
        results[1]["query_prefix"] == "search_query: "
        and results[2]["document_prefix"] == "search_document: "
    )
    assert results[0]["settings"] == {"search_backend": "torch", "top_k": 1000, "ignore_identical_ids": False}
    assert results[5]["settings"]["top_k"] == 2
    # an identical re-run replaces its own file instead of adding one
    again = evaluate(_encoder(max_length=8), str(data), output_dir=out)
    assert again[0]["_path"] == results[3]["_path"] and len(load_results(out)) == len(runs)


def test_per_query_scores_are_stored_and_all_zero_queries_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qrels = QRELS + "q2\td3\t0\n"  # still a positive for q2
    data = _beir(tmp_path / "tiny", qrels.replace("q3\td4\t2\n", ""))  # q3: only a 0 judgment
    (r,) = evaluate(_encoder(), str(data), output_dir=tmp_path / "out")
    assert "1 judged query without a relevant document" in capsys.readouterr().err
    assert r["counts"]["num_queries_without_positive"] == 1 and r["counts"]["num_evaluated_queries"] == 2
    assert r["excluded_queries"] == {"no_positive_qrels": ["q3"]}
    stored = load_result(r["_path"])["per_query"]
    assert set(stored) == {"q1", "q2"}
    for metric in ("ndcg@10", "recall@100", "mrr@10"):
        assert r["metrics"][metric] == pytest.approx(sum(row[metric] for row in stored.values()) / 2)


def test_cache_key_includes_prefix_and_max_length(tmp_path: Path) -> None:
    calls: list[int] = []

    class Counting(HashingEncoder):
        def encode(self, texts, prefix="", batch_size=64, show_progress=False):  # noqa: ANN001, ANN201
            calls.append(len(texts))
            return super().encode(texts, prefix, batch_size, show_progress)

    kwargs = dict(batch_size=4, model_hash="m", dataset="ds", split="test", role="corpus")
    enc = Counting(dim=32)
    for max_length, prefix in [(None, ""), (8, ""), (16, ""), (16, "p: "), (16, "")]:
        enc.max_seq_length = max_length  # type: ignore[attr-defined]
        encode_texts(enc, ["a b", "c"], prefix=prefix, cache=EmbeddingCache(tmp_path), **kwargs)
    assert len(calls) == 4 and len(list(tmp_path.glob("*.npy"))) == 4  # the last one is a hit


def test_hand_edited_identity_is_rejected(tmp_path: Path) -> None:
    path = write_result(tmp_path, _r("A", "aaaa1111", "scifact", 0.5))
    obj = json.loads(path.read_text(encoding="utf-8"))
    obj["query_prefix"] = "edited: "
    path.write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(ValueError, match=r"result_id .* does not match its identity fields"):
        load_result(path)


def test_version_1_files_still_load(tmp_path: Path) -> None:
    old = {
        k: v
        for k, v in _r("A", "aaaa1111", "scifact", 0.5).items()
        if k not in ("result_id", "max_length", "settings", "per_query", "excluded_queries")
    }
    old["schema_version"] = 1
    (tmp_path / "test.json").write_text(json.dumps(old), encoding="utf-8")
    loaded = load_result(tmp_path / "test.json")
    assert loaded["max_length"] is None and loaded["settings"] == {} and len(loaded["result_id"]) == 12


def _r(
    name: str,
    model_hash: str,
    dataset: str,
    score: float,
    *,
    task: str = "retrieval",
    language: str | None = None,
    max_length: int | None = None,
    date: str | None = None,
) -> dict:
    metric = {"retrieval": "ndcg@10", "sts": "spearman"}[task]
    r = build_result(
        model_name=name,
        model_hash=model_hash,
        dataset=dataset,
        task_type=task,
        split="test",
        language=language,
        metrics={metric: score},
        query_prefix="q: " if task == "retrieval" else None,
        prefix="c: " if task == "sts" else None,
        max_length=max_length,
        settings={"top_k": 1000} if task == "retrieval" else None,
    )
    if date is not None:
        r["date"] = date
    return r


def test_ablations_sharing_a_name_get_distinct_rows() -> None:
    results = [
        _r("moe", "aaaa1111xxxx", "scifact", 0.60),
        _r("moe", "bbbb2222xxxx", "scifact", 0.70),
        _r("moe", "aaaa1111xxxx", "stsb", 0.50, task="sts", language="en"),
        _r("moe", "bbbb2222xxxx", "stsb", 0.40, task="sts", language="en"),
        _r("dense", "cccc3333xxxx", "scifact", 0.65),
    ]
    table = build_table(results)
    assert table.rows == ["moe [#aaaa1111]", "moe [#bbbb2222]", "dense"]
    assert table.get("moe [#aaaa1111]", "Average") == pytest.approx(0.55)
    assert table.get("moe [#bbbb2222]", "Average") == pytest.approx(0.55)
    assert table.get("moe [#bbbb2222]", "scifact") == 0.70
    assert any("'moe' differ in model_hash" in n for n in table.notes)
    assert "| moe [#aaaa1111] | 60.00 | **50.00** | **55.00** |" in to_markdown(table)


def test_settings_sharing_a_name_get_distinct_rows() -> None:
    table = build_table(
        [_r("m", "h" * 12, "scifact", 0.5, max_length=128), _r("m", "h" * 12, "scifact", 0.6, max_length=512)]
    )
    assert table.rows == ["m [max_length=128]", "m [max_length=512]"]
    assert table.get("m [max_length=512]", "scifact") == 0.6


def test_identical_reruns_keep_the_newest_with_a_note() -> None:
    old = _r("m", "h" * 12, "scifact", 0.5, date="2026-01-01T00:00:00+00:00")
    new = _r("m", "h" * 12, "scifact", 0.6, date="2026-02-01T00:00:00+00:00")
    for order in ([old, new], [new, old]):
        table = build_table(order)
        assert table.rows == ["m"] and table.get("m", "scifact") == 0.6
        assert len(table.notes) == 1 and "1 identical re-run(s) of m on scifact" in table.notes[0]


def test_results_a_custom_row_key_cannot_separate_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"row 'all', scifact: 2 different results .* cannot be told apart"):
        build_table(
            [_r("a", "h" * 12, "scifact", 0.5), _r("b", "h" * 12, "scifact", 0.6)], row_key=lambda r: "all"
        )


def test_cli_table_prints_notes_and_keeps_every_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "runs"
    for r in (
        _r("moe", "aaaa1111xxxx", "scifact", 0.60),
        _r("moe", "bbbb2222xxxx", "scifact", 0.70),
    ):
        write_result(results, r)
    cli.main(["table", "--results", str(results), "--output", str(tmp_path / "tables")])
    err = capsys.readouterr().err
    assert "note: results named 'moe' differ in model_hash" in err
    md = (tmp_path / "tables" / "results.md").read_text(encoding="utf-8")
    assert "| moe [#aaaa1111] | 60.00 | 60.00 |" in md and "| moe [#bbbb2222] | **70.00** | **70.00** |" in md
