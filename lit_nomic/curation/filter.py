"""Consistency filtering (Nomic Embed v2 / Gecko style): keep a pair only when an embedder finds its
own document among the top-k documents of the pair's chunk.

Each source is cut into chunks of ``chunk_size`` consecutive pairs (the paper: 1M pairs, top-2). In
a chunk, every query is searched against the chunk's distinct documents, and the pair's **rank** is
``1 + the number of chunk documents scoring strictly higher than the pair's own document``, where

* documents with the same text count once (duplicated documents are one candidate),
* the other positives of the same query text in the chunk are not counted against it (a query with
  two good answers keeps both pairs),
* **ties count in the pair's favour**: a document scoring exactly the own document's score does not
  push it down. Scores are float64 recomputations of the retrieved candidates' inner products
  (:func:`lit_nomic.curation.common.rescore`; exact products of float32 values), identical under faiss
  and the torch search.

A pair is kept when ``rank <= top_k``. Ranks deeper than ``histogram_depth`` are reported as
``>depth``.

Output folder (every file written atomically; a chunk is done when its ``.json`` exists)::

    settings.json                          # model, prefixes, top_k, chunk size, sources: a resume
                                           # with other settings is refused
    chunks/<source>/chunk-00000.jsonl      # kept pairs in training format {"query","document"[,"neg"],"id"}
    chunks/<source>/chunk-00000.ranks.tsv  # id, rank, own score, kept: every pair, for auditing
    chunks/<source>/chunk-00000.json       # the chunk's counts and rank histogram (written last)
    report.json                            # merged: kept/dropped per source and language, histogram,
                                           # bad input skipped per source
    kept_ids.txt                           # the kept ids, in input order
    mixture.yaml                           # the kept data as a training mixture (one entry per source)

Ids are ``<source>:<row>`` (the row in the source as the training reader numbers it). A killed run
resumes at the first chunk without its ``.json``; ``shard="i/n"`` processes every n-th chunk, so n
workers (processes, machines or SLURM array tasks) can share one output folder; the worker that
finds every chunk done writes the merged report.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
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
    parse_shard,
    rescore,
    resolve_backend,
    settings_hash,
    slug,
)
from lit_nomic.curation.inputs import spec_identity
from lit_nomic.data.mixture import SourceSpec
from lit_nomic.data.records import PairSource
from lit_nomic.fileio import atomic_write, atomic_write_text

__all__ = ["FilterResult", "FilterSettings", "consistency_filter", "pair_ranks"]

log = logging.getLogger(__name__)


@dataclass
class FilterSettings(SearchSettings):
    top_k: int = 2
    chunk_size: int = 1_000_000
    histogram_depth: int = 10

    def check(self) -> None:
        self.check_positive("top_k", "chunk_size", "histogram_depth")
        if self.histogram_depth < self.top_k:
            raise CurationError(
                f"--histogram_depth ({self.histogram_depth}) must be >= --top_k ({self.top_k})"
            )
        resolve_backend(self.search)

    def identity(self) -> dict:
        """What changes the kept set."""
        out = {"top_k": self.top_k, "chunk_size": self.chunk_size, "histogram_depth": self.histogram_depth}
        return out | self.search_identity()


@dataclass
class FilterResult:
    output: Path
    done_chunks: int
    total_chunks: int
    report: dict | None = None
    processed: list[str] = field(default_factory=list)


def pair_ranks(
    query_emb: np.ndarray,
    doc_emb: np.ndarray,
    pair_query: np.ndarray,
    pair_doc: np.ndarray,
    depth: int,
    backend: str = "auto",
    ivf: tuple[int, int] = (1024, 32),
    block: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank (capped at ``depth + 1``) and own float64 score of every pair in one chunk.

    ``pair_query[i]`` / ``pair_doc[i]``: rows of pair ``i``'s query and document in ``query_emb`` /
    ``doc_emb`` (documents deduplicated by text). Positives of the same query row are not counted.
    """
    positives: dict[int, set[int]] = {}
    for q, d in zip(pair_query.tolist(), pair_doc.tolist(), strict=True):
        positives.setdefault(q, set()).add(d)
    extra = max(len(v) for v in positives.values())
    k = min(doc_emb.shape[0], depth + extra)
    hits = knn(query_emb, doc_emb, k, backend, ivf_nlist=ivf[0], ivf_nprobe=ivf[1])
    ranks = np.empty(len(pair_query), dtype=np.int64)
    own = np.empty(len(pair_query), dtype=np.float64)
    for start in range(0, len(pair_query), block):
        rows = pair_query[start : start + block]
        cand = hits[rows]
        # the own document rides along as the last column: one computation for all scores
        scores = rescore(
            query_emb, doc_emb, rows, np.concatenate([cand, pair_doc[start : start + block, None]], 1)
        )
        own_s = scores[:, -1]
        scores = scores[:, :-1]
        for j, q in enumerate(rows.tolist()):
            excluded = np.isin(cand[j], list(positives[q]))
            higher = int(np.count_nonzero((scores[j] > own_s[j]) & ~excluded & (cand[j] >= 0)))
            ranks[start + j] = min(higher, depth) + 1
        own[start : start + len(rows)] = own_s
    return ranks, own


def _unique(texts: list[str]) -> tuple[list[str], np.ndarray]:
    index: dict[str, int] = {}
    rows = np.array([index.setdefault(t, len(index)) for t in texts], dtype=np.int64)
    return list(index), rows


def _record_line(record, pair_id: str) -> dict:
    q = list(record.queries) if len(record.queries) > 1 else record.queries[0]
    d = list(record.positives) if len(record.positives) > 1 else record.positives[0]
    line = {"query": q, "document": d}
    if record.negatives:
        line["neg"] = list(record.negatives)
    line["id"] = pair_id
    return line


def _units(
    specs: list[SourceSpec], sources: list[PairSource], chunk_size: int
) -> list[tuple[int, int, int, int]]:
    """(source index, chunk index, first row, end row) of every chunk, in order."""
    units = []
    for s, source in enumerate(sources):
        n = len(source)
        for c, start in enumerate(range(0, n, chunk_size)):
            units.append((s, c, start, min(start + chunk_size, n)))
    return units


def _chunk_stem(output: Path, spec: SourceSpec, chunk: int) -> Path:
    return output / "chunks" / slug(spec.name) / f"chunk-{chunk:05d}"


def consistency_filter(
    specs: list[SourceSpec],
    sources: list[PairSource],
    encode_settings: EncodeSettings,
    output: str | os.PathLike,
    settings: FilterSettings | None = None,
    *,
    model_identity: dict | None = None,
    after_chunk: Callable[[str], None] | None = None,
) -> FilterResult:
    """Filter ``sources`` into ``output`` (see the module docstring); resumable and shardable.

    ``after_chunk(chunk_name)`` is called after each chunk is written (progress hooks, tests).
    """
    from tqdm.auto import tqdm

    settings = settings or FilterSettings()
    settings.check()
    out = Path(output)
    worker, workers = parse_shard(settings.shard)
    identity = {
        "command": "filter",
        "encoder": model_identity or {},
        "filter": settings.identity(),
        "sources": [spec_identity(sp, so) for sp, so in zip(specs, sources, strict=True)],
    }
    check_settings_file(out, identity, "lit-nomic filter")
    digest = settings_hash(identity)
    units = _units(specs, sources, settings.chunk_size)
    depth = settings.histogram_depth
    processed: list[str] = []
    mine = [u for i, u in enumerate(units) if i % workers == worker]
    for s, c, start, end in tqdm(
        mine, desc="filter chunks", unit="chunk", disable=not encode_settings.show_progress
    ):
        spec, source = specs[s], sources[s]
        stem = _chunk_stem(out, spec, c)
        marker = stem.with_suffix(".json")
        if _chunk_done(marker, digest):
            continue
        records = [source.record(i) for i in range(start, end)]
        ids = [f"{spec.name}:{i}" for i in range(start, end)]
        q_texts, q_rows = _unique([r.queries[0] for r in records])
        d_texts, d_rows = _unique([r.positives[0] for r in records])
        work = out / ".work"
        label = f"{slug(spec.name).replace('/', '_')}-{c:05d}"
        q_emb = encode(encode_settings, q_texts, "query", work / f"{label}-queries.npy", label)
        d_emb = encode(encode_settings, d_texts, "document", work / f"{label}-documents.npy", label)
        ranks, own = pair_ranks(
            q_emb, d_emb, q_rows, d_rows, depth, settings.search, (settings.ivf_nlist, settings.ivf_nprobe)
        )
        kept = ranks <= settings.top_k
        lines = [_record_line(r, pid) for r, pid, k in zip(records, ids, kept.tolist(), strict=True) if k]
        data = "".join(_dumps(x) + "\n" for x in lines).encode("utf-8")
        atomic_write(stem.with_suffix(".jsonl"), lambda fh, data=data: fh.write(data))
        tsv = "id\trank\tscore\tkept\n" + "".join(
            f"{pid}\t{_rank_label(r, depth)}\t{sc:.6f}\t{int(k)}\n"
            for pid, r, sc, k in zip(ids, ranks.tolist(), own.tolist(), kept.tolist(), strict=True)
        )
        atomic_write_text(stem.with_suffix(".ranks.tsv"), tsv)
        hist = Counter(_rank_label(r, depth) for r in ranks.tolist())
        atomic_write_json_sorted(
            marker,
            {
                "settings_hash": digest,
                "source": spec.name,
                "language": spec.language,
                "chunk": c,
                "rows": [start, end],
                "pairs": end - start,
                "kept": int(kept.sum()),
                "dropped": int((~kept).sum()),
                "distinct_queries": len(q_texts),
                "distinct_documents": len(d_texts),
                "rank_histogram": dict(hist),
            },
        )
        for p in (work / f"{label}-queries.npy", work / f"{label}-documents.npy"):
            p.unlink(missing_ok=True)
        processed.append(stem.name)
        if after_chunk is not None:
            after_chunk(f"{spec.name}/{stem.name}")
    done = sum(
        _chunk_done(_chunk_stem(out, specs[s], c).with_suffix(".json"), digest) for s, c, _, _ in units
    )
    result = FilterResult(out, done, len(units), processed=processed)
    if done == len(units):
        result.report = _write_report(out, specs, sources, units, settings, identity, digest)
    else:
        log.warning(
            "filter: %d of %d chunks done; the report is written when every chunk is", done, len(units)
        )
    return result


def _dumps(obj: dict) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False)


def _rank_label(rank: int, depth: int) -> str:
    return str(rank) if rank <= depth else f">{depth}"


def _chunk_done(marker: Path, digest: str) -> bool:
    import json

    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("settings_hash") == digest
    except ValueError:
        return False


def _hist_key(label: str) -> tuple[int, int]:
    return (1, int(label[1:])) if label.startswith(">") else (0, int(label))


def _write_report(
    out: Path,
    specs: list[SourceSpec],
    sources: list[PairSource],
    units: list[tuple[int, int, int, int]],
    settings: FilterSettings,
    identity: dict,
    digest: str,
) -> dict:
    import json

    per_source: dict[str, dict] = {}
    per_language: dict[str, dict] = {}
    hist: Counter = Counter()
    kept_ids: list[str] = []
    for s, c, _, _ in units:
        spec = specs[s]
        stem = _chunk_stem(out, spec, c)
        chunk = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        src = per_source.setdefault(
            spec.name,
            {
                "language": spec.language,
                "pairs": 0,
                "kept": 0,
                "dropped": 0,
                "chunks": 0,
                "skipped_bad_input": sources[s].skip_report.skipped,
                "skipped_examples": list(sources[s].skip_report.examples),
            },
        )
        lang = per_language.setdefault(spec.language or "unknown", {"pairs": 0, "kept": 0, "dropped": 0})
        for bucket in (src, lang):
            for key in ("pairs", "kept", "dropped"):
                bucket[key] += chunk[key]
        src["chunks"] += 1
        hist.update(chunk["rank_histogram"])
        with open(stem.with_suffix(".ranks.tsv"), encoding="utf-8") as fh:
            next(fh)
            kept_ids += [line.split("\t")[0] for line in fh if line.rstrip("\n").endswith("\t1")]
    total = {k: sum(v[k] for v in per_source.values()) for k in ("pairs", "kept", "dropped")}
    total["skipped_bad_input"] = sum(v["skipped_bad_input"] for v in per_source.values())
    report = {
        "command": "filter",
        "settings_hash": digest,
        "encoder": identity["encoder"],
        "filter": settings.identity(),
        "rule": "kept when rank <= top_k; rank = 1 + distinct chunk documents scoring strictly higher "
        "than the own document (same-query positives not counted; ties in the pair's favour)",
        "total": total,
        "per_source": per_source,
        "per_language": per_language,
        "rank_histogram": dict(sorted(hist.items(), key=lambda kv: _hist_key(kv[0]))),
        "chunks": len(units),
    }
    atomic_write_json_sorted(out / "report.json", report)
    atomic_write_text(out / "kept_ids.txt", "".join(f"{i}\n" for i in kept_ids))
    mixture = []
    for spec in specs:
        entry = {
            "name": spec.name,
            "path": str((out / "chunks" / slug(spec.name)).resolve()),
            "format": "jsonl",
            "query_prefix": spec.query_prefix,
            "document_prefix": spec.document_prefix,
            "max_query_length": spec.max_query_length,
            "max_document_length": spec.max_document_length,
        }
        if spec.weight is not None:
            entry["weight"] = spec.weight
        if spec.language is not None:
            entry["language"] = spec.language
        if spec.num_negatives:
            entry["num_negatives"] = spec.num_negatives
        mixture.append(entry)
    atomic_write_text(
        out / "mixture.yaml", yaml.safe_dump({"sources": mixture}, sort_keys=False, allow_unicode=True)
    )
    return report
