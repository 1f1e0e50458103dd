"""Pair tasks: semantic textual similarity (STS) and bitext mining (Tatoeba).

**STS** follows mteb's STS evaluator: the main score is the Spearman correlation of cosine
similarity with the gold scores (Pearson is reported too), both computed by ``scipy.stats``; gold
scores are used as given because rank and linear correlation are invariant to mteb's ``/5``
normalisation. Data: ``stsb_multi_mt`` CSVs ``stsb-<lang>-<split>.csv`` with rows
``sentence1,sentence2,score``.

**Bitext mining** is scored the way mteb's ``BitextMiningEvaluator`` does: each source sentence's
nearest target sentence by cosine is its prediction; the gold target is the line-aligned one. mteb
reports accuracy plus sklearn's *weighted* precision/recall/F1 over the target indices (labels =
gold indices, predictions = retrieved indices, ``zero_division=0``); F1 is the main score. We search
in one direction, non-English -> English, as mteb pairs ``sentence1`` with ``sentence2``. Data:
LASER's ``tatoeba.<xxx>-eng.<xxx>`` / ``.eng`` files.
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

from lit_nomic.data.formats import iter_lines, read_text
from lit_nomic.evaluation.encoders import EmbeddingCache, TextEncoder, encode_texts, truncate_normalize

# -------------------- STS (stsb_multi_mt)
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


def _check_not_constant(x: np.ndarray, y: np.ndarray) -> None:
    # scipy returns NaN (with a warning) here; a NaN score would only fail later, in the result file
    if np.all(x == x[0]) or np.all(y == y[0]):
        raise ValueError("correlation undefined: one of the inputs is constant")


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """``scipy.stats.pearsonr``; raises ``ValueError`` on a constant input instead of returning NaN."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    _check_not_constant(x, y)
    return float(stats.pearsonr(x, y).statistic)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """``scipy.stats.spearmanr`` (ties get average ranks); raises ``ValueError`` on a constant input."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    _check_not_constant(x, y)
    return float(stats.spearmanr(x, y).statistic)


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


# -------------------- bitext mining (Tatoeba)
_PAIR_RE = re.compile(r"^tatoeba\.([a-z]{3})-eng\.([a-z]{3})$")


@dataclass(frozen=True)
class BitextPairs:
    name: str
    pair: str  # e.g. "deu-eng"
    source: list[str]
    target: list[str]
    path: str = ""


def is_tatoeba_folder(path: Path) -> bool:
    return any(_PAIR_RE.match(p.name) for p in path.glob("tatoeba.*-eng.*"))


def tatoeba_languages(root: str | os.PathLike) -> list[str]:
    """Language codes having both halves of a pair, e.g. ``["afr", "amh", ...]``."""
    base = Path(root)
    langs = set()
    for p in base.glob("tatoeba.*-eng.*"):
        m = _PAIR_RE.match(p.name)
        if m and m.group(1) == m.group(2) and (base / f"tatoeba.{m.group(1)}-eng.eng").is_file():
            langs.add(m.group(1))
    return sorted(langs)


def _read_lines(path: Path) -> list[str]:
    # split on "\n" only: str.splitlines() would also break on U+2028, U+0085 etc. found in
    # real sentences and silently misalign the two sides
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def load_tatoeba(root: str | os.PathLike, language: str) -> BitextPairs:
    base = Path(root)
    src_path = base / f"tatoeba.{language}-eng.{language}"
    tgt_path = base / f"tatoeba.{language}-eng.eng"
    for p in (src_path, tgt_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing Tatoeba file for language {language!r}")
    src, tgt = _read_lines(src_path), _read_lines(tgt_path)
    if len(src) != len(tgt):
        raise ValueError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; they must be line-aligned"
        )
    if not src:
        raise ValueError(f"{src_path}: no sentences")
    return BitextPairs("tatoeba", f"{language}-eng", src, tgt, str(src_path))


def nearest_neighbours(src: torch.Tensor, tgt: torch.Tensor, chunk_size: int = 1024) -> np.ndarray:
    """Index of the most similar target row for every source row (exact, chunked)."""
    out = np.empty(src.shape[0], dtype=np.int64)
    for s0 in range(0, src.shape[0], chunk_size):
        out[s0 : s0 + chunk_size] = torch.argmax(src[s0 : s0 + chunk_size] @ tgt.T, dim=1).numpy()
    return out


def bitext_scores(predictions: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Accuracy and sklearn-style support-weighted precision/recall/F1 (``zero_division=0``)."""
    predictions = np.asarray(predictions)
    gold = np.asarray(gold)
    if predictions.shape != gold.shape or predictions.ndim != 1 or len(gold) == 0:
        raise ValueError(f"predictions {predictions.shape} and gold {gold.shape} must be equal-length 1-D")
    labels, gold_idx = np.unique(gold, return_inverse=True)
    support = np.bincount(gold_idx, minlength=len(labels)).astype(np.float64)
    correct = predictions == gold
    tp = np.bincount(gold_idx[correct], minlength=len(labels)).astype(np.float64)
    pos = np.searchsorted(labels, predictions)
    in_labels = (pos < len(labels)) & (labels[np.minimum(pos, len(labels) - 1)] == predictions)
    predicted = np.bincount(pos[in_labels], minlength=len(labels)).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = tp / support
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    weights = support / support.sum()
    return {
        "accuracy": float(correct.mean()),
        "precision": float(np.dot(weights, precision)),
        "recall": float(np.dot(weights, recall)),
        "f1": float(np.dot(weights, f1)),
    }


def evaluate_bitext(
    encoder: TextEncoder,
    pairs: BitextPairs,
    *,
    prefix: str = "",
    batch_size: int = 64,
    matryoshka_dim: int | None = None,
    cache: EmbeddingCache | None = None,
    model_hash: str | None = None,
) -> tuple[dict[str, float], dict[str, int], dict[str, float]]:
    """Returns ``(metrics, counts, timings)`` for source -> English mining."""
    t0 = time.perf_counter()
    common = dict(
        prefix=prefix,
        batch_size=batch_size,
        cache=cache,
        model_hash=model_hash,
        dataset=f"{pairs.name}-{pairs.pair}",
        split="test",
    )
    src = encode_texts(encoder, pairs.source, role="source", **common)
    tgt = encode_texts(encoder, pairs.target, role="target", **common)
    t1 = time.perf_counter()
    src = truncate_normalize(src, matryoshka_dim)
    tgt = truncate_normalize(tgt, matryoshka_dim)
    pred = nearest_neighbours(src, tgt)
    metrics = bitext_scores(pred, np.arange(len(pairs.source)))
    counts = {"num_pairs": len(pairs.source), "embedding_dim": int(src.shape[1])}
    return metrics, counts, {"encode_s": t1 - t0, "score_s": time.perf_counter() - t1}
