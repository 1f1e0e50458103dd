"""Bad evaluation inputs end in one line naming the file and line, never a traceback (issue 9, C and E)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from lexical_encoder import HashingEncoder

from lit_nomic import cli
from lit_nomic.data.formats import iter_jsonl, read_text
from lit_nomic.evaluation.beir import load_beir
from lit_nomic.evaluation.multilingual import load_miracl
from lit_nomic.evaluation.pairs import load_stsb_multi_mt
from lit_nomic.evaluation.results import build_result, load_result, write_result

DOCS = [{"_id": f"d{i}", "title": f"title {i}", "text": f"document number {i} " * 20} for i in range(400)]
QUERIES = [{"_id": "q1", "text": "document number 3"}, {"_id": "q2", "text": "title 7"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td3\t1\nq2\td7\t1\n"


def _beir(
    root: Path, *, corpus: bytes | None = None, queries: bytes | None = None, qrels: str = QRELS
) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_bytes(corpus or "".join(json.dumps(d) + "\n" for d in DOCS).encode())
    (root / "queries.jsonl").write_bytes(queries or "".join(json.dumps(q) + "\n" for q in QUERIES).encode())
    (root / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return root


def _truncated_gz(path: Path) -> Path:
    data = gzip.compress("".join(json.dumps(d) + "\n" for d in DOCS).encode())
    path.write_bytes(data[: len(data) // 2])
    return path


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    bad_queries = b'{"_id": "q1", "text": "fine"}\n{"_id": "q2", "text": "caf\xe9"}\n'
    folder = _beir(tmp_path / "b", queries=bad_queries)
    with pytest.raises(ValueError, match=r"queries\.jsonl:2: invalid UTF-8 \(byte b'\\xe9'"):
        load_beir(folder)
    qrels = tmp_path / "q" / "qrels" / "test.tsv"
    _beir(tmp_path / "q")
    qrels.write_bytes(b"query-id\tcorpus-id\tscore\nq1\td3\t1\nq\xff2\td7\t1\n")
    with pytest.raises(ValueError, match=r"test\.tsv:3: invalid UTF-8"):
        load_beir(tmp_path / "q")
    sts = tmp_path / "stsb-de-test.csv"
    sts.write_bytes(b"a,b,1.0\nc,\x80d,2.0\n")
    with pytest.raises(ValueError, match=r"stsb-de-test\.csv:2: invalid UTF-8"):
        load_stsb_multi_mt(tmp_path, "de")
    whole = tmp_path / "x.json"
    whole.write_bytes(b'{\n  "a": 1,\n  "b": "\xc3"\n}\n')
    with pytest.raises(ValueError, match=r"x\.json:3: invalid UTF-8 \(byte b'\\xc3' at column 9\)"):
        read_text(whole)


def test_truncated_or_fake_gzip_names_file_and_line(tmp_path: Path) -> None:
    path = _truncated_gz(tmp_path / "corpus.jsonl.gz")
    with pytest.raises(ValueError, match=r"corpus\.jsonl\.gz:\d+: truncated or corrupt gzip file"):
        list(iter_jsonl(path))
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_text('{"_id": "d1"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"fake\.jsonl\.gz:1: truncated or corrupt gzip file"):
        list(iter_jsonl(fake))
    lang = tmp_path / "miracl" / "de"
    lang.mkdir(parents=True)
    (lang / "topics.dev.tsv").write_text("1\tfrage\n", encoding="utf-8")
    (lang / "qrels.dev.tsv").write_text("1\tQ0\td3\t1\n", encoding="utf-8")
    _truncated_gz(lang / "corpus.jsonl.gz")
    with pytest.raises(ValueError, match=r"de/corpus\.jsonl\.gz:\d+: truncated or corrupt gzip"):
        load_miracl(lang, "dev")


def _run_eval(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data: str) -> int:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "load_any_model", lambda model: HashingEncoder(dim=64))
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", "--model", "bow", "--data", data, "--output", str(tmp_path / "out")])
    return int(info.value.code)


def _one_line(capsys: pytest.CaptureFixture[str], prefix: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: str(p / "no_such_dataset"), r"dataset '.*no_such_dataset' is neither a named suite"),
        (
            lambda p: str(_beir(p / "b", qrels="query-id\tcorpus-id\tscore\nq1\td3\tyes\n")),
            r"test\.tsv:2: score 'yes'",
        ),
        (
            lambda p: str(_beir(p / "b", qrels="query-id\tcorpus-id\tscore\nq1\td3\n")),
            r"test\.tsv:2: expected 3",
        ),
        (
            lambda p: str(_beir(p / "b", corpus=b'{"_id": "d1", "text": "\xff"}\n')),
            r"corpus\.jsonl:1: invalid UTF-8",
        ),
        (
            lambda p: str(
                _beir(
                    p / "b",
                    queries=b'{"_id": "q1", "text": ""}\n',
                    qrels="query-id\tcorpus-id\tscore\nq1\td3\t1\n",
                )
            ),
            r"queries\.jsonl:1: query 'q1' has an empty",
        ),
    ],
)
def test_eval_bad_input_is_one_line(  # noqa: ANN001
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], setup, message: str
) -> None:
    assert _run_eval(monkeypatch, tmp_path, setup(tmp_path)) == 2
    line = _one_line(capsys, "lit-nomic eval: error: ")
    assert pytest.importorskip("re").search(message, line), line


def test_eval_truncated_gzip_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lang = tmp_path / "miracl" / "de"
    lang.mkdir(parents=True)
    (lang / "topics.dev.tsv").write_text("1\tfrage\n", encoding="utf-8")
    (lang / "qrels.dev.tsv").write_text("1\tQ0\td3\t1\n", encoding="utf-8")
    _truncated_gz(lang / "corpus.jsonl.gz")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "load_any_model", lambda model: HashingEncoder(dim=64))
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", "--model", "bow", "--data", str(lang), "--split", "dev", "--output", "out"])
    assert info.value.code == 2
    assert "corpus.jsonl.gz:" in _one_line(capsys, "lit-nomic eval: error: ")


def _good_result() -> dict:
    return build_result(
        model_name="m",
        model_hash="h" * 12,
        dataset="scifact",
        task_type="retrieval",
        split="test",
        language=None,
        metrics={"ndcg@10": 0.5},
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"results folder does not exist"),
        ("", r"no result JSONs found"),
        (b'{"schema_version": 2,\n "model_name": \n', r"bad\.json:3: malformed JSON"),
        (b'{"model_name": "caf\xe9"}', r"bad\.json:1: invalid UTF-8"),
        (b"[1, 2]", r"bad\.json: expected a JSON object"),
        ("drop:model_hash", r"bad\.json: missing field 'model_hash'"),
        ("metric:1.5", r"bad\.json: metric 'ndcg@10'=1.5 outside"),
    ],
)
def test_table_bad_input_is_one_line(  # noqa: ANN001
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content, message: str
) -> None:
    folder = tmp_path / "runs"
    if content is not None:
        folder.mkdir()
        write_result(folder, {**_good_result(), "model_name": "ok"})
        if content == "":
            for p in folder.rglob("*.json"):
                p.unlink()
        elif isinstance(content, bytes):
            (folder / "bad.json").write_bytes(content)
        else:
            obj = _good_result()
            if content.startswith("drop:"):
                del obj[content[5:]]
            else:
                obj["metrics"]["ndcg@10"] = float(content[7:])
            (folder / "bad.json").write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        cli.main(["table", "--results", str(folder), "--output", str(tmp_path / "tables")])
    assert info.value.code == 2
    line = _one_line(capsys, "lit-nomic table: error: ")
    assert pytest.importorskip("re").search(message, line), line


def test_result_json_with_bom_loads(tmp_path: Path) -> None:
    path = write_result(tmp_path, _good_result())
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_result(path)["model_name"] == "m"
