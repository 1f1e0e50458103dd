"""Multilingual retrieval sets: MIRACL and XQuAD-R, each read into :class:`RetrievalDataset` s.

**MIRACL**: per-language folders with TREC topics/qrels and a JSONL corpus. Accepted layout per
language folder (the compact names first, then the official release names):

* topics: ``topics.<split>.tsv`` or ``topics/topics.miracl-v1.0-<lang>-<split>.tsv`` — ``qid<TAB>query``
* qrels:  ``qrels.<split>.tsv``  or ``qrels/qrels.miracl-v1.0-<lang>-<split>.tsv`` — ``qid Q0 docid rel``
* corpus: ``corpus.jsonl[.gz]`` or ``corpus/*.jsonl[.gz]`` — objects with ``docid`` (or ``_id``),
  ``title``, ``text``

A MIRACL root holds one such folder per language, named by its ISO code.

**XQuAD-R** (LAReQA), turned into retrieval tasks: question -> paragraph, per language and
cross-lingual. The source is SQuAD-v1.1 JSON per language (``<lang>.json``) with
``sentences``/``sentence_breaks`` added to every paragraph. The 11 files are parallel: same article
titles, same paragraph order and the same question ids per paragraph, which is verified rather than
assumed, because a single misaligned paragraph would make every cross-lingual judgment wrong.

* monolingual task ``xquad_r`` / language ``de``: German questions, German paragraphs;
* cross-lingual task ``xquad_r_cross`` / language ``de-en``: German questions, English paragraphs
  (the Nomic/MIRACL-style way to test cross-lingual alignment);
* ``granularity="sentence"``: candidates are the paragraph sentences and the answer sentence (the
  one whose span contains the answer start) is relevant, as in the LAReQA paper.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lit_nomic.data.formats import field_str, iter_jsonl, iter_lines, read_text
from lit_nomic.evaluation.retrieval_data import Document, RetrievalDataset


# -------------------- MIRACL
def _first_existing(candidates: list[Path], what: str, folder: Path) -> Path:
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"{folder}: no {what}; looked for {[str(c.relative_to(folder)) for c in candidates]}"
    )


def _miracl_tsv(folder: Path, split: str, kind: str) -> Path:
    """``<kind>.<split>.tsv``, or the MIRACL release layout ``<kind>/<kind>.miracl-v1.0-<lang>-<split>.tsv``."""
    lang = folder.name
    return _first_existing(
        [folder / f"{kind}.{split}.tsv", folder / kind / f"{kind}.miracl-v1.0-{lang}-{split}.tsv"],
        f"{kind} for split {split!r}",
        folder,
    )


def topics_path(folder: Path, split: str) -> Path:
    return _miracl_tsv(folder, split, "topics")


def qrels_path(folder: Path, split: str) -> Path:
    return _miracl_tsv(folder, split, "qrels")


def corpus_files(folder: Path) -> list[Path]:
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (folder / name).is_file():
            return [folder / name]
    if (folder / "corpus").is_dir():
        files = sorted([*(folder / "corpus").glob("*.jsonl"), *(folder / "corpus").glob("*.jsonl.gz")])
        if files:
            return files
    raise FileNotFoundError(f"{folder}: no corpus.jsonl, corpus.jsonl.gz or corpus/*.jsonl[.gz]")


def is_miracl_language_folder(path: Path) -> bool:
    has_topics = any(path.glob("topics.*.tsv")) or (path / "topics").is_dir()
    has_qrels = any(path.glob("qrels.*.tsv")) or (path / "qrels").is_dir()
    try:
        corpus_files(path)
    except FileNotFoundError:
        return False
    return has_topics and has_qrels and not (path / "queries.jsonl").exists()


def miracl_languages(root: str | os.PathLike) -> list[str]:
    base = Path(root)
    return sorted(p.name for p in base.iterdir() if p.is_dir() and is_miracl_language_folder(p))


def load_topics(path: Path) -> dict[str, str]:
    topics: dict[str, str] = {}
    for lineno, line in iter_lines(path):
        line = line.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'qid<TAB>query', got {len(parts)} fields")
        qid, text = parts[0].strip(), parts[1]
        if qid in topics:
            raise ValueError(f"{path}:{lineno}: duplicate query id {qid!r}")
        topics[qid] = text
    return topics


def load_trec_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise ValueError(f"{path}:{lineno}: expected 'qid Q0 docid rel', got {len(parts)} fields")
        qid, _, doc_id, raw = parts
        try:
            rel = int(raw)
        except ValueError:
            raise ValueError(
                f"{path}:{lineno}: relevance {raw!r} of query {qid!r}, doc {doc_id!r} is not an integer"
            ) from None
        prev = qrels.get(qid, {}).get(doc_id)
        if prev is not None and prev != rel:
            raise ValueError(f"{path}:{lineno}: query {qid!r}, doc {doc_id!r} judged both {prev} and {rel}")
        qrels.setdefault(qid, {})[doc_id] = rel
    return qrels


def load_miracl_corpus(files: list[Path]) -> dict[str, Document]:
    corpus: dict[str, Document] = {}
    origin: dict[str, str] = {}
    for path in files:
        for lineno, obj in iter_jsonl(path):
            key = "docid" if "docid" in obj else "_id"
            doc_id = field_str(obj, key, path, lineno)
            if doc_id in corpus:
                raise ValueError(
                    f"{path}:{lineno}: duplicate document id {doc_id!r} (first at {origin[doc_id]})"
                )
            corpus[doc_id] = Document(
                id=doc_id,
                title=field_str(obj, "title", path, lineno, required=False),
                text=field_str(obj, "text", path, lineno),
            )
            origin[doc_id] = f"{path}:{lineno}"
    if not corpus:
        raise ValueError(f"empty corpus in {[str(f) for f in files]}")
    return corpus


def load_miracl(folder: str | os.PathLike, split: str = "dev", *, name: str = "miracl") -> RetrievalDataset:
    """One language of MIRACL; the folder name is the language code."""
    path = Path(folder)
    t_path, q_path = topics_path(path, split), qrels_path(path, split)
    topics = load_topics(t_path)
    qrels = load_trec_qrels(q_path)
    corpus = load_miracl_corpus(corpus_files(path))
    for qid, docs in qrels.items():
        if qid not in topics:
            raise ValueError(f"{q_path}: query id {qid!r} is not in {t_path.name}")
        for doc_id in docs:
            if doc_id not in corpus:
                raise ValueError(f"{q_path}: doc id {doc_id!r} (query {qid!r}) is not in the corpus")
    if not qrels:
        raise ValueError(f"{q_path}: no judgments")
    return RetrievalDataset(
        name=name,
        split=split,
        corpus=corpus,
        queries={q: t for q, t in topics.items() if q in qrels},
        qrels=qrels,
        language=path.name,
        source=str(path),
    )


# -------------------- XQuAD-R
XQUAD_R_LANGUAGES: tuple[str, ...] = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")
Granularity = Literal["paragraph", "sentence"]


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    paragraph_id: str
    answer_start: int


@dataclass(frozen=True)
class Paragraph:
    id: str
    title: str
    context: str
    sentences: tuple[str, ...]
    sentence_breaks: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class XQuADRLanguage:
    language: str
    paragraphs: tuple[Paragraph, ...]
    questions: tuple[Question, ...]
    structure: tuple[tuple[str, tuple[str, ...]], ...]  # (paragraph id, question ids) for alignment checks


def is_xquad_r_folder(path: Path) -> bool:
    return all((path / f"{lang}.json").is_file() for lang in ("en", "de"))


def xquad_r_languages(root: str | os.PathLike) -> list[str]:
    return [lang for lang in XQUAD_R_LANGUAGES if (Path(root) / f"{lang}.json").is_file()]


def load_xquad_r_language(root: str | os.PathLike, language: str) -> XQuADRLanguage:
    path = Path(root) / f"{language}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no XQuAD-R file for language {language!r}")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: expected a SQuAD-style object with a 'data' list")
    paragraphs: list[Paragraph] = []
    questions: list[Question] = []
    structure: list[tuple[str, tuple[str, ...]]] = []
    for a_idx, article in enumerate(data["data"]):
        title = article.get("title")
        if not isinstance(title, str) or not isinstance(article.get("paragraphs"), list):
            raise ValueError(f"{path}: data[{a_idx}] needs a string 'title' and a 'paragraphs' list")
        for p_idx, para in enumerate(article["paragraphs"]):
            where = f"{path}: data[{a_idx}].paragraphs[{p_idx}]"
            for key in ("context", "qas", "sentences", "sentence_breaks"):
                if key not in para:
                    raise ValueError(f"{where}: missing field {key!r}")
            pid = f"{a_idx:02d}-{title}-{p_idx}"
            breaks = tuple((int(s), int(e)) for s, e in para["sentence_breaks"])
            if len(breaks) != len(para["sentences"]):
                raise ValueError(
                    f"{where}: {len(para['sentences'])} sentences but {len(breaks)} sentence_breaks"
                )
            paragraphs.append(Paragraph(pid, title, para["context"], tuple(para["sentences"]), breaks))
            qids: list[str] = []
            for q_idx, qa in enumerate(para["qas"]):
                if "id" not in qa or "question" not in qa or not qa.get("answers"):
                    raise ValueError(
                        f"{where}.qas[{q_idx}]: needs 'id', 'question' and a non-empty 'answers'"
                    )
                questions.append(
                    Question(str(qa["id"]), qa["question"], pid, int(qa["answers"][0]["answer_start"]))
                )
                qids.append(str(qa["id"]))
            structure.append((pid, tuple(qids)))
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise ValueError(f"{path}: duplicate question id {q.id!r}")
        seen.add(q.id)
    return XQuADRLanguage(language, tuple(paragraphs), tuple(questions), tuple(structure))


def _check_aligned(a: XQuADRLanguage, b: XQuADRLanguage) -> None:
    if a.structure == b.structure:
        return
    for (pa, qa), (pb, qb) in zip(a.structure, b.structure, strict=False):
        if pa != pb or qa != qb:
            raise ValueError(
                f"XQuAD-R {a.language} and {b.language} are not parallel: paragraph {pa!r} (questions {qa[:3]}...) "
                f"vs {pb!r} (questions {qb[:3]}...)"
            )
    raise ValueError(f"XQuAD-R {a.language} and {b.language} differ in their number of paragraphs")


def _sentence_of(para: Paragraph, answer_start: int) -> int:
    for i, (start, end) in enumerate(para.sentence_breaks):
        if start <= answer_start <= end:
            return i
    # answer start in the whitespace between two sentences: take the following sentence
    for i, (start, _) in enumerate(para.sentence_breaks):
        if start > answer_start:
            return i
    return len(para.sentence_breaks) - 1


def build_xquad_r_task(
    questions: XQuADRLanguage,
    passages: XQuADRLanguage,
    *,
    granularity: Granularity = "paragraph",
) -> RetrievalDataset:
    """Questions in one language against candidates in another (or the same) language."""
    _check_aligned(questions, passages)
    by_pid = {p.id: p for p in passages.paragraphs}
    corpus: dict[str, Document] = {}
    qrels: dict[str, dict[str, int]] = {}
    if granularity == "paragraph":
        for p in passages.paragraphs:
            corpus[p.id] = Document(p.id, "", p.context)
        for q in questions.questions:
            qrels[q.id] = {q.paragraph_id: 1}
    elif granularity == "sentence":
        for p in passages.paragraphs:
            for i, sentence in enumerate(p.sentences):
                corpus[f"{p.id}#s{i}"] = Document(f"{p.id}#s{i}", "", sentence)
        # the answer sentence is located in the *passage* language's paragraph: the same
        # question id has its own answer_start in every language
        answer_start = {q.id: q.answer_start for q in passages.questions}
        for q in questions.questions:
            para = by_pid[q.paragraph_id]
            qrels[q.id] = {f"{para.id}#s{_sentence_of(para, answer_start[q.id])}": 1}
    else:
        raise ValueError(f"granularity must be 'paragraph' or 'sentence', got {granularity!r}")
    mono = questions.language == passages.language
    suffix = "" if granularity == "paragraph" else "_sentence"
    return RetrievalDataset(
        name=("xquad_r" if mono else "xquad_r_cross") + suffix,
        split="test",
        corpus=corpus,
        queries={q.id: q.text for q in questions.questions},
        qrels=qrels,
        language=questions.language if mono else f"{questions.language}-{passages.language}",
    )


def xquad_r_tasks(
    root: str | os.PathLike,
    languages: Sequence[str] | None = None,
    *,
    monolingual: bool = True,
    cross_lingual_target: str | None = "en",
    granularity: Granularity = "paragraph",
) -> list[RetrievalDataset]:
    """Monolingual tasks for each language plus ``X -> target`` for each other language."""
    available = xquad_r_languages(root)
    langs = list(languages) if languages is not None else available
    unknown = [lang for lang in langs if lang not in available]
    if unknown:
        raise ValueError(f"XQuAD-R languages {unknown} not found under {root}; available: {available}")
    loaded = {lang: load_xquad_r_language(root, lang) for lang in langs}
    tasks: list[RetrievalDataset] = []
    if monolingual:
        tasks.extend(
            build_xquad_r_task(loaded[lang], loaded[lang], granularity=granularity) for lang in langs
        )
    if cross_lingual_target is not None:
        if cross_lingual_target not in loaded:
            loaded[cross_lingual_target] = load_xquad_r_language(root, cross_lingual_target)
        target = loaded[cross_lingual_target]
        tasks.extend(
            build_xquad_r_task(loaded[lang], target, granularity=granularity)
            for lang in langs
            if lang != cross_lingual_target
        )
    return tasks
