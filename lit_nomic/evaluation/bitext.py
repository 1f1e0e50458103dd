"""Bitext mining on Tatoeba, scored the way mteb's ``BitextMiningEvaluator`` does.

Each source sentence's nearest target sentence by cosine is its prediction; the gold target is
the line-aligned one. mteb reports accuracy plus sklearn's *weighted* precision/recall/F1 over
the target indices (labels = gold indices, predictions = retrieved indices, ``zero_division=0``);
F1 is the main score. We search in one direction, non-English -> English, as mteb pairs
``sentence1`` with ``sentence2``. Data: LASER's ``tatoeba.<xxx>-eng.<xxx>`` / ``.eng`` files.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lit_nomic.evaluation.cache import EmbeddingCache, encode_texts
from lit_nomic.evaluation.embeddings import truncate_normalize
from lit_nomic.evaluation.files import read_text
from lit_nomic.evaluation.protocol import TextEncoder

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
