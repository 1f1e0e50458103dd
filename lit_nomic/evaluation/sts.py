"""Semantic textual similarity: Spearman/Pearson of cosine similarity against gold scores.

Follows mteb's STS evaluator (main score = Spearman of cosine similarity); gold scores are used as
given because rank and linear correlation are invariant to mteb's ``/5`` normalisation.
Data: ``stsb_multi_mt`` CSVs ``stsb-<lang>-<split>.csv`` with rows ``sentence1,sentence2,score``.
"""

from __future__ import annotations

import csv
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lit_nomic.evaluation.cache import EmbeddingCache, encode_texts
from lit_nomic.evaluation.embeddings import truncate_normalize
from lit_nomic.evaluation.files import iter_lines
from lit_nomic.evaluation.protocol import TextEncoder

_FILE_RE = re.compile(r"^stsb-([a-z]{2,3})-(train|dev|test)\.csv$")


@dataclass(frozen=True)
class STSPairs:
    name: str
    language: str
    split: str
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray
    source: str = ""


def is_stsb_folder(path: Path) -> bool:
    return any(_FILE_RE.match(p.name) for p in path.glob("stsb-*.csv"))


def stsb_languages(root: str | os.PathLike, split: str = "test") -> list[str]:
    langs = []
    for p in Path(root).glob("stsb-*.csv"):
        m = _FILE_RE.match(p.name)
        if m and m.group(2) == split:
            langs.append(m.group(1))
    return sorted(langs)


def load_stsb_multi_mt(root: str | os.PathLike, language: str, split: str = "test") -> STSPairs:
    path = Path(root) / f"stsb-{language}-{split}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no STS file for language {language!r}, split {split!r}")
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    reader = csv.reader(line for _, line in iter_lines(path))
    for row in reader:
        lineno = reader.line_num
        if not row:
            continue
        if len(row) != 3:
            raise ValueError(f"{path}:{lineno}: expected 'sentence1,sentence2,score', got {len(row)} fields")
        try:
            score = float(row[2])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: score {row[2]!r} is not a number") from None
        if not math.isfinite(score):
            raise ValueError(f"{path}:{lineno}: score {row[2]!r} is not finite")
        s1.append(row[0])
        s2.append(row[1])
        scores.append(score)
    if len(scores) < 2:
        raise ValueError(f"{path}: need at least 2 pairs for a correlation, found {len(scores)}")
    return STSPairs("stsb_multi_mt", language, split, s1, s2, np.asarray(scores, dtype=np.float64), str(path))


def rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks for ties (scipy's default), so Spearman matches ``scipy.stats.spearmanr``."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    boundaries = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1], [True]])
    starts = np.flatnonzero(boundaries)
    ranks_sorted = np.empty(len(x), dtype=np.float64)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        ranks_sorted[a:b] = (a + b + 1) / 2.0  # mean of 1-based ranks a+1 .. b
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    y = np.asarray(y, dtype=np.float64) - np.mean(y)
    denom = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    if denom == 0.0:
        raise ValueError("correlation undefined: one of the inputs is constant")
    return float(np.dot(x, y) / denom)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(rankdata(np.asarray(x, dtype=np.float64)), rankdata(np.asarray(y, dtype=np.float64)))


def sts_scores(emb1: torch.Tensor, emb2: torch.Tensor, gold: np.ndarray) -> dict[str, float]:
    """Correlations of row-wise cosine similarity (inputs must already be unit-norm)."""
    cos = (emb1.to(torch.float64) * emb2.to(torch.float64)).sum(dim=1).numpy()
    return {"spearman": spearman(cos, gold), "pearson": pearson(cos, gold)}


def evaluate_sts(
    encoder: TextEncoder,
    pairs: STSPairs,
    *,
    prefix: str = "",
    batch_size: int = 64,
    matryoshka_dim: int | None = None,
    cache: EmbeddingCache | None = None,
    model_hash: str | None = None,
) -> tuple[dict[str, float], dict[str, int], dict[str, float]]:
    """Encode unique sentences once; returns ``(metrics, counts, timings)``."""
    unique = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
    t0 = time.perf_counter()
    emb = encode_texts(
        encoder,
        unique,
        prefix=prefix,
        batch_size=batch_size,
        cache=cache,
        model_hash=model_hash,
        dataset=f"{pairs.name}-{pairs.language}",
        split=pairs.split,
        role="sentences",
    )
    t1 = time.perf_counter()
    emb = truncate_normalize(emb, matryoshka_dim)
    row = {s: i for i, s in enumerate(unique)}
    e1 = emb[[row[s] for s in pairs.sentences1]]
    e2 = emb[[row[s] for s in pairs.sentences2]]
    metrics = sts_scores(e1, e2, pairs.scores)
    counts = {
        "num_pairs": len(pairs.scores),
        "num_unique_sentences": len(unique),
        "embedding_dim": int(emb.shape[1]),
    }
    return metrics, counts, {"encode_s": t1 - t0, "score_s": time.perf_counter() - t1}
