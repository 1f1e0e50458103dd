"""Hard-negative mining with a teacher embedder (Nomic Embed v2 / NV-Retriever "positive-aware").

For every (query, positive) pair, the teacher retrieves ``candidates`` documents from a corpus; then

1. every **known positive** of the query is dropped: for a BEIR folder, every document judged
   relevant (score > 0) to the query in *any* qrels file of the folder; for pair data, every positive
   (all alternatives) of every pair with the same query text; in both cases also any corpus document
   whose text is identical to one of those positives (corpora hold duplicates);
2. every candidate scoring **above** ``relative_margin x positive score`` (the paper's 0.95 "percent
   of positive") and, when given, above ``positive score - absolute_margin`` is dropped (a score
   equal to the threshold is kept);
3. ``num_negatives`` of the rest are kept: the top ones (``window=None``), or drawn without
   replacement from the ranks ``window=(a, b)`` (1-based, inclusive, among the remaining candidates)
   with a generator seeded by ``(seed, pair id)``; they are written best first;
4. a pair left with fewer than ``min_negatives`` is dropped and counted.

All scores are float64 recomputations (:func:`lit_nomic.curation.common.rescore`), so faiss and the
torch search pick the same negatives. Ties in score are ordered by corpus row.

Output (all atomic)::

    settings.json          # teacher, margins, depth, data and corpus identity
    .work/corpus-00000.npy # corpus embeddings, one file per corpus shard (memory-mapped when read)
    triplets.jsonl         # {"query", "pos": [..], "neg": [..], "id", "query_id", "pos_id",
                           #  "neg_ids", "pos_score", "neg_scores"}: read by the training reader as is
    report.json            # pairs, written, dropped (too few negatives), candidates dropped as
                           # positives / above the margin, per source and language
    mixture.yaml           # the triplets as a training source with num_negatives = min_negatives

Corpus shards (``corpus_shard_size`` documents) are independent units: ``shard="i/n"`` embeds every
n-th one, so n workers can share the folder; the worker that finds all shards embedded searches and
writes the triplets (searching shard by shard and merging, so memory holds one shard's vectors).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from lit_nomic.curation.common import (
    CurationError,
    EncodeSettings,
    SearchSettings,
    atomic_write_json_sorted,
    check_settings_file,
    encode,
    knn,
    load_embeddings,
    parse_shard,
    rescore,
    resolve_backend,
    settings_hash,
    write_jsonl,
)
from lit_nomic.data.formats import (
    beir_document_text,
    beir_splits,
    field_str,
    iter_jsonl,
    load_qrels_tsv,
    load_queries,
)
from lit_nomic.data.records import stable_text_hash
from lit_nomic.fileio import atomic_write_text

__all__ = ["MineInput", "MinePair", "MineSettings", "beir_mine_input", "mine_negatives", "pairs_mine_input"]


@dataclass(frozen=True)
class MinePair:
    id: str
    query_key: str
    query: str
    positive: str
    positive_id: str
    source: str
    language: str | None = None


@dataclass
class MineInput:
    """Pairs, the corpus to draw negatives from, and every known positive (ids and texts) per query."""

    pairs: list[MinePair]
    corpus_ids: list[str]
    corpus_texts: list[str]
    known_ids: dict[str, set[str]]
    known_texts: dict[str, set[str]]
    identity: dict = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def check(self, corpus_where: str) -> None:
        if not self.corpus_texts:
            raise CurationError(f"{corpus_where}: empty corpus (no documents to mine negatives from)")
        if not self.pairs:
            raise CurationError(f"{corpus_where}: no (query, positive) pairs to mine for")


def _stat(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def beir_mine_input(folder: str | os.PathLike, split: str = "train", name: str | None = None) -> MineInput:
    """Pairs = the split's positive qrels (file order); corpus = ``corpus.jsonl``; known positives =
    the positive qrels of every split in ``qrels/``. Bad lines fail naming file and line."""
    from lit_nomic.evaluation.beir import load_beir

    path = Path(folder)
    ds = load_beir(path, split, name=name)
    all_queries = load_queries(path / "queries.jsonl")
    known_ids: dict[str, set[str]] = {}
    for other in beir_splits(path):
        qrels = load_qrels_tsv(
            path / "qrels" / f"{other}.tsv", known_queries=all_queries, known_docs=ds.corpus
        )
        for q, docs in qrels.items():
            known_ids.setdefault(q, set()).update(d for d, s in docs.items() if s > 0)
    texts = {d.id: d.full_text() for d in ds.corpus.values()}
    pairs = []
    for q, docs in ds.qrels.items():
        for d, s in docs.items():
            if s > 0:
                pairs.append(MinePair(f"{q}:{d}", q, ds.queries[q], texts[d], d, ds.name))
    known_texts = {q: {texts[d] for d in ids} for q, ids in known_ids.items()}
    files = [_stat(path / "corpus.jsonl"), _stat(path / "queries.jsonl")]
    files += [_stat(path / "qrels" / f"{s}.tsv") for s in beir_splits(path)]
    return MineInput(
        pairs,
        list(texts),
        list(texts.values()),
        known_ids,
        known_texts,
        identity={"beir": str(path), "split": split, "files": files},
    )


def read_corpus(path: str | os.PathLike) -> tuple[list[str], list[str], dict]:
    """A corpus JSONL: ``_id``/``id`` (default: ``line<N>``), ``text`` and optional ``title``.

    BEIR's ``corpus.jsonl`` is one. Empty documents and duplicate ids fail naming file and line.
    """
    p = Path(path)
    ids: list[str] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(p):
        raw_id = obj.get("_id", obj.get("id", f"line{lineno}"))
        doc_id = str(raw_id)
        if doc_id in seen:
            raise CurationError(
                f"{p}:{lineno}: duplicate document id {doc_id!r} (first at line {seen[doc_id]})"
            )
        text = field_str(obj, "text", p, lineno)
        title = field_str(obj, "title", p, lineno, required=False)
        joined = beir_document_text(title, text)
        if not joined:
            raise CurationError(f"{p}:{lineno}: document {doc_id!r} has empty 'title' and 'text'")
        seen[doc_id] = lineno
        ids.append(doc_id)
        texts.append(joined)
    if not texts:
        raise CurationError(f"{p}: empty corpus (no documents to mine negatives from)")
    return ids, texts, {"corpus": str(p), "files": [_stat(p)]}


def pairs_mine_input(specs, sources, corpus: str | None = None) -> MineInput:
    """Pairs from training sources (first query, first positive of each record); known positives are
    all positives of the same query text; the corpus is ``corpus`` or else the distinct positives."""
    from lit_nomic.curation.inputs import spec_identity

    pairs: list[MinePair] = []
    known_texts: dict[str, set[str]] = {}
    for spec, source in zip(specs, sources, strict=True):
        for i in range(len(source)):
            rec = source.record(i)
            key = f"{stable_text_hash(rec.queries[0]) & 0xFFFFFFFFFFFFFFFF:016x}"
            known_texts.setdefault(key, set()).update(rec.positives)
            pos_id = f"{stable_text_hash(rec.positives[0]) & 0xFFFFFFFFFFFFFFFF:016x}"
            pairs.append(
                MinePair(
                    f"{spec.name}:{i}",
                    key,
                    rec.queries[0],
                    rec.positives[0],
                    pos_id,
                    spec.name,
                    spec.language,
                )
            )
    identity: dict = {"sources": [spec_identity(sp, so) for sp, so in zip(specs, sources, strict=True)]}
    if corpus is not None:
        ids, texts, ident = read_corpus(corpus)
        identity |= ident
    else:
        distinct = list(dict.fromkeys(t for ks in known_texts.values() for t in sorted(ks)))
        texts = distinct
        ids = [f"{stable_text_hash(t) & 0xFFFFFFFFFFFFFFFF:016x}" for t in texts]
    skipped = {spec.name: source.skip_report.skipped for spec, source in zip(specs, sources, strict=True)}
    return MineInput(pairs, ids, texts, {}, known_texts, identity=identity, skipped=skipped)


@dataclass
class MineSettings(SearchSettings):
    num_negatives: int = 7
    min_negatives: int | None = None
    candidates: int = 100
    relative_margin: float | None = 0.95
    absolute_margin: float | None = None
    window: tuple[int, int] | None = None
    seed: int = 0
    corpus_shard_size: int = 1_000_000

    def check(self) -> None:
        self.check_positive("num_negatives", "candidates", "corpus_shard_size")
        if self.min_negatives is not None and not 1 <= self.min_negatives <= self.num_negatives:
            raise CurationError(
                f"--min_negatives must be in [1, num_negatives={self.num_negatives}], got {self.min_negatives}"
            )
        if self.relative_margin is not None and not 0 < self.relative_margin <= 1:
            raise CurationError(f"--relative_margin must be in (0, 1], got {self.relative_margin}")
        if self.absolute_margin is not None and self.absolute_margin < 0:
            raise CurationError(f"--absolute_margin must be >= 0, got {self.absolute_margin}")
        if self.window is not None:
            a, b = self.window
            if not 1 <= a <= b <= self.candidates:
                raise CurationError(f"--window must be a:b with 1 <= a <= b <= candidates, got {a}:{b}")
            if b - a + 1 < self.num_negatives:
                raise CurationError(
                    f"--window {a}:{b} holds fewer than num_negatives={self.num_negatives} ranks"
                )
        resolve_backend(self.search)

    @property
    def minimum(self) -> int:
        return self.min_negatives or self.num_negatives

    def identity(self) -> dict:
        out = {
            k: getattr(self, k)
            for k in (
                "num_negatives",
                "candidates",
                "relative_margin",
                "absolute_margin",
                "seed",
                "corpus_shard_size",
            )
        }
        out["min_negatives"] = self.minimum
        out["window"] = list(self.window) if self.window else None
        return out | self.search_identity()


@dataclass
class MineResult:
    output: Path
    done_shards: int
    total_shards: int
    report: dict | None = None


def _threshold(pos: np.ndarray, s: MineSettings) -> np.ndarray:
    thr = np.full(pos.shape, np.inf)
    if s.relative_margin is not None:
        thr = np.minimum(thr, s.relative_margin * pos)
    if s.absolute_margin is not None:
        thr = np.minimum(thr, pos - s.absolute_margin)
    return thr


def mine_negatives(
    data: MineInput,
    encode_settings: EncodeSettings,
    output: str | os.PathLike,
    settings: MineSettings | None = None,
    *,
    model_identity: dict | None = None,
) -> MineResult:
    """Mine negatives for ``data`` into ``output`` (see the module docstring)."""
    settings = settings or MineSettings()
    settings.check()
    out = Path(output)
    data.check(str(data.identity.get("corpus", data.identity.get("beir", "corpus"))))
    worker, workers = parse_shard(settings.shard)
    identity = {
        "command": "mine",
        "encoder": model_identity or {},
        "mine": settings.identity(),
        "data": data.identity,
    }
    check_settings_file(out, identity, "lit-nomic mine")
    digest = settings_hash(identity)
    work = out / ".work"
    n_docs = len(data.corpus_texts)
    size = settings.corpus_shard_size
    shards = [(i, s, min(s + size, n_docs)) for i, s in enumerate(range(0, n_docs, size))]
    for i, start, end in shards:
        if i % workers != worker or _shard_done(work, i, digest):
            continue
        encode(
            encode_settings,
            data.corpus_texts[start:end],
            "document",
            work / f"corpus-{i:05d}.npy",
            f"corpus-{i:05d}",
        )
        atomic_write_json_sorted(
            work / f"corpus-{i:05d}.json", {"settings_hash": digest, "rows": [start, end]}
        )
    done = sum(_shard_done(work, i, digest) for i, _, _ in shards)
    result = MineResult(out, done, len(shards))
    if done < len(shards):
        return result
    result.report = _search_and_write(data, encode_settings, out, settings, shards, identity, digest)
    return result


def _shard_done(work: Path, i: int, digest: str) -> bool:
    marker = work / f"corpus-{i:05d}.json"
    if not marker.is_file() or not (work / f"corpus-{i:05d}.npy").is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("settings_hash") == digest
    except ValueError:
        return False


def _excluded_rows(data: MineInput) -> dict[str, set[int]]:
    """Corpus rows that are known positives of each query key (by id or by identical text)."""
    by_id = {d: i for i, d in enumerate(data.corpus_ids)}
    by_text: dict[str, list[int]] = {}
    wanted = set().union(*data.known_texts.values()) if data.known_texts else set()
    for pair in data.pairs:
        wanted.add(pair.positive)
    for i, t in enumerate(data.corpus_texts):
        if t in wanted:
            by_text.setdefault(t, []).append(i)
    out: dict[str, set[int]] = {}
    for pair in data.pairs:
        rows = out.setdefault(pair.query_key, set())
        for d in data.known_ids.get(pair.query_key, ()):
            if d in by_id:
                rows.add(by_id[d])
        for t in data.known_texts.get(pair.query_key, set()) | {pair.positive}:
            rows.update(by_text.get(t, ()))
    return out


def _search_and_write(
    data, enc: EncodeSettings, out: Path, s: MineSettings, shards, identity, digest
) -> dict:
    work = out / ".work"
    q_texts = list(dict.fromkeys(p.query for p in data.pairs))
    q_row = {t: i for i, t in enumerate(q_texts)}
    q_emb = encode(enc, q_texts, "query", work / "queries.npy", "queries")
    excluded = _excluded_rows(data)
    extra = max(len(v) for v in excluded.values())
    depth = s.candidates + extra
    # candidates per distinct query, merged over corpus shards by (float64 score desc, row asc)
    best_rows = np.full((len(q_texts), 0), -1, dtype=np.int64)
    best_scores = np.full((len(q_texts), 0), -np.inf)
    for i, start, _end in shards:
        docs = load_embeddings(work / f"corpus-{i:05d}.npy")
        hits = knn(q_emb, docs, depth, s.search, ivf_nlist=s.ivf_nlist, ivf_nprobe=s.ivf_nprobe)
        scores = rescore(q_emb, docs, np.arange(len(q_texts)), hits)
        rows = np.where(hits >= 0, hits + start, -1)
        best_rows = np.concatenate([best_rows, rows], 1)
        best_scores = np.concatenate([best_scores, scores], 1)
        order = np.lexsort((np.where(best_rows < 0, np.iinfo(np.int64).max, best_rows), -best_scores), axis=1)
        best_rows = np.take_along_axis(best_rows, order, 1)[:, :depth]
        best_scores = np.take_along_axis(best_scores, order, 1)[:, :depth]
    pos_emb, pos_rows = _positive_embeddings(data, enc, work, shards)
    pos_scores = rescore(q_emb, pos_emb, np.array([q_row[p.query] for p in data.pairs]), pos_rows[:, None])[
        :, 0
    ]
    thresholds = _threshold(pos_scores, s)
    lines: list[dict] = []
    stats = Counter()
    per_source: dict[str, Counter] = {}
    per_language: dict[str, Counter] = {}
    neg_hist: Counter = Counter()
    for n, pair in enumerate(data.pairs):
        qr = q_row[pair.query]
        rows, scores = best_rows[qr], best_scores[qr]
        valid = rows >= 0
        is_pos = np.isin(rows, list(excluded[pair.query_key])) & valid
        above = (scores > thresholds[n]) & valid & ~is_pos
        keep = valid & ~is_pos & ~above
        cand_rows, cand_scores = rows[keep][: s.candidates], scores[keep][: s.candidates]
        c = Counter(dropped_as_positive=int(is_pos.sum()), dropped_above_margin=int(above.sum()), pairs=1)
        picked = _select(cand_rows, s, pair.id)
        if len(picked) < s.minimum:
            c["dropped_too_few_negatives"] = 1
        else:
            c["written"] = 1
            neg_hist[len(picked)] += 1
            lines.append(
                {
                    "query": pair.query,
                    "pos": [pair.positive],
                    "neg": [data.corpus_texts[int(cand_rows[j])] for j in picked],
                    "id": pair.id,
                    "query_id": pair.query_key,
                    "pos_id": pair.positive_id,
                    "neg_ids": [data.corpus_ids[int(cand_rows[j])] for j in picked],
                    "pos_score": round(float(pos_scores[n]), 6),
                    "neg_scores": [round(float(cand_scores[j]), 6) for j in picked],
                }
            )
        stats.update(c)
        per_source.setdefault(pair.source, Counter()).update(c)
        per_language.setdefault(pair.language or "unknown", Counter()).update(c)
    write_jsonl(out / "triplets.jsonl", lines)
    report = {
        "command": "mine",
        "settings_hash": digest,
        "encoder": identity["encoder"],
        "mine": s.identity(),
        "rule": "candidates = teacher top-k; drop known positives (qrels of every split / same-query "
        "positives, by id and identical text); drop score > min(relative_margin x pos, pos - "
        "absolute_margin); keep num_negatives (top, or sampled from the window); drop pairs with "
        "fewer than min_negatives",
        "total": dict(sorted(stats.items())),
        "queries": len(q_texts),
        "corpus_documents": len(data.corpus_texts),
        "corpus_shards": len(shards),
        "per_source": {k: dict(sorted(v.items())) for k, v in per_source.items()},
        "per_language": {k: dict(sorted(v.items())) for k, v in per_language.items()},
        "skipped_bad_input": data.skipped,
        "negatives_per_pair": {str(k): v for k, v in sorted(neg_hist.items())},
        "mean_pos_score": round(float(np.mean(pos_scores)), 6),
        "mean_neg_score": round(float(np.mean([x for ln in lines for x in ln["neg_scores"]] or [0.0])), 6),
    }
    atomic_write_json_sorted(out / "report.json", report)
    mixture = {
        "sources": [
            {
                "name": "mined",
                "path": str((out / "triplets.jsonl").resolve()),
                "format": "jsonl",
                "num_negatives": s.minimum,
            }
        ]
    }
    atomic_write_text(out / "mixture.yaml", yaml.safe_dump(mixture, sort_keys=False))
    for p in work.glob("queries.npy"):
        p.unlink()
    return report


def _select(cand_rows: np.ndarray, s: MineSettings, pair_id: str) -> list[int]:
    """Positions (into the eligible candidates, best first) of the negatives to keep."""
    if s.window is None:
        return list(range(min(s.num_negatives, len(cand_rows))))
    a, b = s.window
    pool = list(range(a - 1, min(b, len(cand_rows))))
    if len(pool) <= s.num_negatives:
        return pool
    seed = [s.seed, stable_text_hash(pair_id) & 0x7FFFFFFFFFFFFFFF]
    picks = np.random.default_rng(seed).choice(len(pool), size=s.num_negatives, replace=False)
    return sorted(pool[int(i)] for i in picks)


def _positive_embeddings(
    data: MineInput, enc: EncodeSettings, work: Path, shards
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of each pair's positive: the corpus row when the corpus holds its text, else encoded."""
    by_text = {}
    for i, t in enumerate(data.corpus_texts):
        by_text.setdefault(t, i)
    missing = list(dict.fromkeys(p.positive for p in data.pairs if p.positive not in by_text))
    size = shards[0][2] - shards[0][1] if shards else 1
    rows_needed = sorted({by_text[p.positive] for p in data.pairs if p.positive in by_text})
    dim = load_embeddings(work / "corpus-00000.npy").shape[1]
    table = np.zeros((len(rows_needed) + len(missing), dim), dtype=np.float32)
    where: dict[str, int] = {}
    opened: dict[int, np.ndarray] = {}
    for j, r in enumerate(rows_needed):
        shard = r // size
        if shard not in opened:
            opened[shard] = load_embeddings(work / f"corpus-{shard:05d}.npy")
        table[j] = opened[shard][r - shard * size]
        where[data.corpus_texts[r]] = j
    if missing:
        table[len(rows_needed) :] = encode(enc, missing, "document", None, "positives")
        for j, t in enumerate(missing):
            where[t] = len(rows_needed) + j
    return table, np.array([where[p.positive] for p in data.pairs], dtype=np.int64)
