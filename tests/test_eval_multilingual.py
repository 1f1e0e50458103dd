"""MIRACL reader and the XQuAD-R -> retrieval conversion (on the real shared data)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lit_nomic.evaluation.multilingual import (
    XQUAD_R_LANGUAGES,
    build_xquad_r_task,
    load_miracl,
    load_xquad_r_language,
    miracl_languages,
    xquad_r_tasks,
)
from lit_nomic.evaluation.suites import detect_kind


def _miracl_lang(root: Path, lang: str, official_names: bool = False) -> Path:
    folder = root / lang
    folder.mkdir(parents=True)
    topics = "1\tWas ist die Hauptstadt von Frankreich?\n2\tWer schrieb Faust?\n3\tungejudged\n"
    qrels = "1\tQ0\t100#0\t1\n1\tQ0\t100#1\t0\n2\tQ0\t200#0\t1\n"
    docs = [
        {"docid": "100#0", "title": "Paris", "text": "Paris ist die Hauptstadt Frankreichs."},
        {"docid": "100#1", "title": "Paris", "text": "Die Seine fließt durch Paris."},
        {"docid": "200#0", "title": "Faust", "text": "Goethe schrieb Faust."},
    ]
    if official_names:
        (folder / "topics").mkdir()
        (folder / "qrels").mkdir()
        (folder / "topics" / f"topics.miracl-v1.0-{lang}-dev.tsv").write_text(topics, encoding="utf-8")
        (folder / "qrels" / f"qrels.miracl-v1.0-{lang}-dev.tsv").write_text(qrels, encoding="utf-8")
        (folder / "corpus").mkdir()
        with gzip.open(folder / "corpus" / "docs-0.jsonl.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    else:
        (folder / "topics.dev.tsv").write_text(topics, encoding="utf-8")
        (folder / "qrels.dev.tsv").write_text(qrels, encoding="utf-8")
        (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return folder


@pytest.mark.parametrize("official", [False, True])
def test_miracl_reader(tmp_path: Path, official: bool) -> None:
    folder = _miracl_lang(tmp_path, "de", official_names=official)
    ds = load_miracl(folder, "dev")
    assert ds.language == "de" and ds.name == "miracl" and ds.split == "dev"
    assert ds.query_ids == ["1", "2"]
    assert ds.qrels == {"1": {"100#0": 1, "100#1": 0}, "2": {"200#0": 1}}
    assert ds.corpus["200#0"].full_text() == "Faust Goethe schrieb Faust."
    assert miracl_languages(tmp_path) == ["de"]
    assert detect_kind(tmp_path) == "miracl" and detect_kind(folder) == "miracl"


def test_miracl_errors(tmp_path: Path) -> None:
    folder = _miracl_lang(tmp_path, "fr")
    with pytest.raises(FileNotFoundError, match="no topics for split 'test'"):
        load_miracl(folder, "test")
    (folder / "qrels.dev.tsv").write_text("1 Q0 100#0 yes\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"qrels\.dev\.tsv:1: relevance 'yes' .* is not an integer"):
        load_miracl(folder, "dev")
    (folder / "qrels.dev.tsv").write_text("1 Q0 999#9 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"doc id '999#9' \(query '1'\) is not in the corpus"):
        load_miracl(folder, "dev")
    (folder / "qrels.dev.tsv").write_text("7 Q0 100#0 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"query id '7' is not in topics\.dev\.tsv"):
        load_miracl(folder, "dev")
    (folder / "topics.dev.tsv").write_text("1\ta\tb\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"topics\.dev\.tsv:1: expected 'qid<TAB>query'"):
        load_miracl(folder, "dev")


@pytest.fixture(scope="module")
def xquad_root(shared_data: Path) -> Path:
    root = shared_data / "xquad_r"
    if not root.is_dir():
        pytest.skip("xquad_r not in the shared data")
    return root


def test_xquad_r_tasks_real_data(xquad_root: Path) -> None:
    tasks = xquad_r_tasks(xquad_root, ["de", "en", "zh"])
    assert [(t.name, t.language) for t in tasks] == [
        ("xquad_r", "de"),
        ("xquad_r", "en"),
        ("xquad_r", "zh"),
        ("xquad_r_cross", "de-en"),
        ("xquad_r_cross", "zh-en"),
    ]
    for t in tasks:
        assert len(t.corpus) == 240 and len(t.queries) == 1190
        assert all(len(rel) == 1 for rel in t.qrels.values())
    de, cross = tasks[0], tasks[3]
    # the same German question points at the German paragraph (mono) and the English one (cross)
    qid = "56beb4343aeaaa14008c925b"  # "How many points did the Panthers defense surrender?"
    assert de.qrels[qid] == cross.qrels[qid] == {"00-Super_Bowl_50-0": 1}
    assert de.queries[qid] == cross.queries[qid]
    assert cross.corpus["00-Super_Bowl_50-0"].text.startswith("The Panthers defense gave up just 308 points")
    assert de.corpus["00-Super_Bowl_50-0"].text != cross.corpus["00-Super_Bowl_50-0"].text


def test_xquad_r_sentence_granularity(xquad_root: Path) -> None:
    en = load_xquad_r_language(xquad_root, "en")
    task = build_xquad_r_task(en, en, granularity="sentence")
    assert task.name == "xquad_r_sentence" and len(task.corpus) == 1180  # LAReQA's candidate count for en
    raw = json.loads((xquad_root / "en.json").read_text(encoding="utf-8"))
    answers = {
        qa["id"]: qa["answers"][0]["text"] for a in raw["data"] for p in a["paragraphs"] for qa in p["qas"]
    }
    inside = sum(answers[q] in task.corpus[next(iter(task.qrels[q]))].text for q in task.queries)
    assert inside >= 1180  # the rest are answers spanning a sentence break


def test_xquad_r_misalignment_is_reported(tmp_path: Path, xquad_root: Path) -> None:
    for lang in ("en", "de"):
        data = json.loads((xquad_root / f"{lang}.json").read_text(encoding="utf-8"))
        data["data"] = data["data"][:2]
        if lang == "de":
            data["data"][1]["paragraphs"][0]["qas"] = data["data"][1]["paragraphs"][0]["qas"][1:]
        (tmp_path / f"{lang}.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match="XQuAD-R de and en are not parallel: paragraph '01-Warsaw-0'"):
        xquad_r_tasks(tmp_path, ["de"], monolingual=False)
    with pytest.raises(ValueError, match=r"languages \['xx'\] not found"):
        xquad_r_tasks(tmp_path, ["xx"])
    assert set(XQUAD_R_LANGUAGES) >= {"en", "de"}
