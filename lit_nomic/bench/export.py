"""Exported-model benchmark: our PyTorch encoder vs ONNX fp32 vs ONNX int8 vs sentence-transformers fp32.

All four run the *same weights*: the model is exported once (``lit-nomic export`` code paths) into a
work folder as a sentence-transformers folder and as ONNX (+ dynamic int8), and each variant encodes
the same SciFact documents (title + " " + text, as mteb builds them) at the same batch size and token
limit, timed end to end (tokenisation included) and interleaved in one run (A B C D A B C D ...), so
machine-load drift hits every variant alike. onnxruntime gets as many intra-op threads as torch has.

Before timing, each variant's embeddings of the first texts are compared with ours (minimum
cosine): a throughput ratio between models that embed differently would be meaningless. After
timing, each variant's SciFact nDCG@10 is measured with our retrieval evaluator on the same queries
and corpus (``eval_docs`` limits the corpus to every judged document plus random others, as the
fit-end probe does; 0 = the full corpus), so the table shows what int8 costs in quality next to
what it gains in speed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_nomic.bench.timing import Row, time_interleaved

__all__ = ["VARIANTS", "run_export_benchmark"]

VARIANTS = ("ours", "onnx_fp32", "onnx_int8", "sentence_transformers")


class _NumpyEncoder:
    """The evaluation protocol (``encode(texts, prefix, batch_size, show_progress) -> tensor``) over
    any ``encode(texts, batch_size, prefix) -> numpy`` callable."""

    def __init__(
        self, name: str, fn: Callable[..., np.ndarray], query_prefix: str, document_prefix: str
    ) -> None:
        self.name = name
        self._fn = fn
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix

    def encode(
        self, texts: list[str], prefix: str = "", batch_size: int = 64, show_progress: bool = False
    ) -> torch.Tensor:
        return torch.from_numpy(
            np.ascontiguousarray(self._fn(list(texts), batch_size, prefix), dtype=np.float32)
        )


# Issue targets on 2 CPU cores: int8 at least twice sentence-transformers' throughput, for at most
# half an nDCG@10 point.
INT8_MIN_SPEEDUP = 2.0
INT8_MAX_POINTS_LOST = 0.5


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(cos.min())


def run_export_benchmark(
    texts: Sequence[str],
    model_path: str | Path,
    *,
    eval_dataset: Any = None,
    batch_size: int = 32,
    max_length: int = 256,
    upcycle: bool = False,
    name: str | None = None,
    warmup_texts: int = 64,
    warmup: int = 1,
    repeats: int = 3,
    work_dir: str | Path | None = None,
    log: Callable[[str], None] | None = print,
    clock: str = "wall",
) -> list[Row]:
    """One row: throughput of the four variants on ``texts`` (CPU), their agreement and nDCG@10.

    Args:
        texts: the documents to encode.
        model_path: a model folder or packaged name (all-MiniLM-L6-v2 by default in the CLI).
        eval_dataset: a :class:`RetrievalDataset` scored by every variant (None: no quality column).
        batch_size: texts per forward pass, all variants.
        max_length: token limit, all variants.
        upcycle: benchmark the model upcycled to 8 experts top-2 (all-minilm-l6-v2-moe) instead.
        name: the model's name in the row (default: the folder's).
        warmup_texts: texts encoded per warm-up round.
        warmup: interleaved warm-up rounds.
        repeats: interleaved timed rounds.
        work_dir: where the exports go (default: a temporary folder, deleted afterwards).
        log: progress lines.
        clock: ``wall`` or ``cpu`` (see :func:`time_interleaved`).
    """
    if not texts:
        raise ValueError("run_export_benchmark: no texts to encode")
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="lit-nomic-bench-export-") as tmp:
            return run_export_benchmark(
                texts, model_path, eval_dataset=eval_dataset, batch_size=batch_size, max_length=max_length,
                upcycle=upcycle, name=name, warmup_texts=warmup_texts, warmup=warmup, repeats=repeats, work_dir=tmp,
                log=log, clock=clock,
            )  # fmt: skip
    from sentence_transformers import SentenceTransformer

    from lit_nomic.config import preset
    from lit_nomic.export.onnx import OnnxEmbedder, export_onnx
    from lit_nomic.export.sentence_transformers import export_sentence_transformers
    from lit_nomic.model.embedder import Embedder

    texts = list(texts)
    work = Path(work_dir)
    ours = Embedder.from_pretrained(model_path, name=name).eval()
    if upcycle:
        ours = ours.upcycled(preset("all-minilm-l6-v2-moe")).eval()
    ours.max_seq_length = min(max_length, ours.max_seq_length)
    name = ours.name
    if log is not None:
        log(f"[export] exporting {name} as sentence-transformers and ONNX (+int8) into {work}")
    st_dir = export_sentence_transformers(ours, work / "st")
    onnx_dir = export_onnx(ours, work / "onnx", quantize="int8")
    threads = torch.get_num_threads()
    st = SentenceTransformer(str(st_dir), device="cpu", trust_remote_code=ours.config.is_moe)
    st.max_seq_length = ours.max_seq_length
    fp32 = OnnxEmbedder(onnx_dir, threads=threads)
    int8 = OnnxEmbedder(onnx_dir, file="model_int8.onnx", threads=threads)

    def run_ours(items: list[str], bs: int = batch_size, prefix: str = "") -> np.ndarray:
        return ours.encode(items, prefix=prefix, batch_size=bs).numpy()

    def run_fp32(items: list[str], bs: int = batch_size, prefix: str = "") -> np.ndarray:
        return fp32.encode(items, batch_size=bs, prefix=prefix)

    def run_int8(items: list[str], bs: int = batch_size, prefix: str = "") -> np.ndarray:
        return int8.encode(items, batch_size=bs, prefix=prefix)

    def run_st(items: list[str], bs: int = batch_size, prefix: str = "") -> np.ndarray:
        return st.encode(
            items, batch_size=bs, prompt=prefix or None, show_progress_bar=False, convert_to_numpy=True
        )

    runners = {
        "ours": run_ours,
        "onnx_fp32": run_fp32,
        "onnx_int8": run_int8,
        "sentence_transformers": run_st,
    }
    head = texts[:warmup_texts]
    reference = run_ours(head)
    agreement = {k: _min_cosine(fn(head), reference) for k, fn in runners.items() if k != "ours"}
    for _ in range(warmup):
        for fn in runners.values():
            fn(head)
    n_tokens = sum(len(x) for x in ours.tokenize(texts))
    times = time_interleaved(
        {k: (lambda fn=fn: fn(texts)) for k, fn in runners.items()}, warmup=0, repeats=repeats, clock=clock
    )
    row = Row(
        benchmark="export",
        name=f"{name} scifact n={len(texts)} bs={batch_size} len<={ours.max_seq_length} fp32/int8 cpu",
        shape={
            "model": name,
            "moe": ours.config.is_moe,
            "texts": len(texts),
            "tokens": n_tokens,
            "batch_size": batch_size,
            "max_length": ours.max_seq_length,
            "device": "cpu",
            "threads": threads,
        },
        dtype="fp32+int8",
        times=times,
    )
    for variant, stat in times.items():
        seconds = stat.median_ms / 1e3
        row.metrics[variant] = {"docs_per_s": len(texts) / seconds, "tokens_per_s": n_tokens / seconds}
        if variant != "ours":
            row.metrics[variant]["min_cosine_vs_ours"] = agreement[variant]
    for variant in ("ours", "onnx_fp32", "onnx_int8"):
        row.ratio(f"{variant}_over_sentence_transformers", "sentence_transformers", variant)
    row.ratio("onnx_int8_over_onnx_fp32", "onnx_fp32", "onnx_int8")
    for variant in ("onnx_fp32", "sentence_transformers"):
        if agreement[variant] < 0.9999:
            row.notes.append(f"{variant} embeds differently from ours: min cosine {agreement[variant]:.5f}")
    if eval_dataset is not None:
        from lit_nomic.evaluation.retrieval import evaluate_retrieval

        q, d = ours.query_prefix, ours.document_prefix
        for variant, fn in runners.items():
            encoder = _NumpyEncoder(f"{name}-{variant}", lambda t, bs, p, fn=fn: fn(t, bs, p), q, d)
            metrics = evaluate_retrieval(encoder, eval_dataset, batch_size=batch_size).metrics
            row.metrics[variant]["ndcg@10"] = float(metrics["ndcg@10"])
            if log is not None:
                log(f"[export] {variant}: SciFact nDCG@10 {metrics['ndcg@10']:.4f}")
        row.shape["eval_queries"] = len(eval_dataset.queries)
        row.shape["eval_documents"] = len(eval_dataset.corpus)
        # quality cost of int8 on the same line as its speed: nDCG@10 points lost against ST fp32
        loss = 100 * (row.metrics["sentence_transformers"]["ndcg@10"] - row.metrics["onnx_int8"]["ndcg@10"])
        row.ratios["onnx_int8_ndcg10_points_lost"] = loss
        row.check(
            "int8_quality", "onnx_int8_ndcg10_points_lost", "<=", INT8_MAX_POINTS_LOST,
            f"ONNX int8 loses <= {INT8_MAX_POINTS_LOST} nDCG@10 points vs sentence-transformers fp32",
        )  # fmt: skip
    row.check(
        "int8_speed", "onnx_int8_over_sentence_transformers", ">=", INT8_MIN_SPEEDUP,
        f"ONNX int8 >= {INT8_MIN_SPEEDUP}x sentence-transformers fp32 encode throughput",
    )  # fmt: skip
    if log is not None:
        log(
            f"[export] {row.name}: "
            + ", ".join(f"{k} {row.metrics[k]['docs_per_s']:.1f} docs/s" for k in runners)
            + f"; onnx int8 / st {row.ratios['onnx_int8_over_sentence_transformers']:.2f}x"
        )
    return [row]
