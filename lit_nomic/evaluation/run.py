"""The single entry point the CLI (``lit-nomic eval``) and training callbacks call.

``evaluate`` resolves the data argument, runs every task with one shared embedding cache, writes
one result JSON per setting (see ``results.IDENTITY_FIELDS``: dataset, split, language, dim,
prefixes, max length, search settings ...) and returns the records.

Precision is part of a result's identity: an encoder whose weights are not float32 (``dtype=``
casts a torch module, e.g. to bfloat16) gets ``settings.dtype`` in every result, so its files
never replace the float32 ones. float32, the precision of every earlier result, is not written into
``settings`` (those ids stay valid); ``extra.dtype`` and ``extra.device`` always say what ran. The
recorded ``model_hash`` is that of the weights as given, before any cast; the embedding cache keys
on it plus the dtype.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lit_nomic.data.paths import data_root as default_data_root
from lit_nomic.evaluation.beir import beir_subsets, is_beir_folder, load_beir
from lit_nomic.evaluation.encoders import (
    EmbeddingCache,
    TextEncoder,
    encoder_fingerprint,
    encoder_max_length,
    task_prefix,
)
from lit_nomic.evaluation.multilingual import (
    is_miracl_language_folder,
    load_miracl,
    miracl_languages,
    xquad_r_tasks,
)
from lit_nomic.evaluation.pairs import (
    evaluate_bitext,
    evaluate_sts,
    load_stsb_multi_mt,
    load_tatoeba,
    stsb_languages,
    tatoeba_languages,
)
from lit_nomic.evaluation.results import build_result, write_result
from lit_nomic.evaluation.retrieval import SearchBackend, SearchConfig, evaluate_retrieval
from lit_nomic.evaluation.retrieval_data import RetrievalDataset, subsample
from lit_nomic.evaluation.suites import TaskSpec, resolve_data

log = logging.getLogger(__name__)

DATA_ROOT_MARK = "<data_root>"


def portable_source(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` as recorded in a result file: ``<data_root>/...``, else relative to the cwd.

    Result JSONs are committed and shared, so the machine-specific location of the data must not
    leak into them; an absolute path is kept only for data outside both the root and the cwd.
    """
    if not str(path):
        return ""
    resolved = Path(path).resolve()
    try:
        rel = resolved.relative_to(Path(root).resolve())
        return f"{DATA_ROOT_MARK}/{rel.as_posix()}" if rel.parts else DATA_ROOT_MARK
    except ValueError:
        pass
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _pick_languages(spec: TaskSpec, available: Sequence[str]) -> list[str]:
    if spec.languages is None:
        return list(available)
    missing = [lang for lang in spec.languages if lang not in available]
    if missing:
        raise ValueError(
            f"{spec.name}: languages {missing} not available under {spec.path}; available: {list(available)}"
        )
    return list(spec.languages)


def _retrieval_datasets(spec: TaskSpec) -> list[RetrievalDataset]:
    opts = dict(spec.options)
    if spec.kind == "beir":
        identical = opts.get("ignore_identical_ids")
        if is_beir_folder(spec.path):
            datasets = [load_beir(spec.path, spec.split, name=spec.name, ignore_identical_ids=identical)]
        else:  # a collection (CQADupStack): one result per forum, in the language field
            subsets = _pick_languages(spec, beir_subsets(spec.path))
            datasets = [
                replace(
                    load_beir(spec.path / sub, spec.split, name=spec.name, ignore_identical_ids=identical),
                    language=sub,
                )
                for sub in subsets
            ]
    elif spec.kind == "miracl":
        if is_miracl_language_folder(spec.path):
            datasets = [load_miracl(spec.path, spec.split)]
        else:
            langs = _pick_languages(spec, miracl_languages(spec.path))
            datasets = [load_miracl(spec.path / lang, spec.split) for lang in langs]
    elif spec.kind == "xquad_r":
        return xquad_r_tasks(
            spec.path,
            spec.languages,
            monolingual=bool(opts.get("monolingual", True)),
            cross_lingual_target=opts.get("cross_lingual_target", "en"),
            granularity=opts.get("granularity", "paragraph"),
        )
    else:  # pragma: no cover - callers dispatch on kind
        raise AssertionError(spec.kind)
    if "max_docs" in opts:
        datasets = [
            subsample(d, int(opts["max_docs"]), max_queries=opts.get("max_queries"), seed=0) for d in datasets
        ]
    return datasets


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _place(
    encoder: TextEncoder, device: str | None, dtype: str | torch.dtype | None
) -> tuple[str | None, str | None]:
    """Move/cast a torch encoder in place; return the (dtype, device) it now runs in, where known."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    module = encoder if isinstance(encoder, torch.nn.Module) else None
    if module is None:
        # the defaults (float32 on the CPU) are what any non-torch encoder runs in already
        if dtype not in (None, torch.float32) or device not in (None, "cpu"):
            raise ValueError(
                f"encoder {encoder.name!r} ({type(encoder).__name__}) is not a torch module: "
                "device/dtype cannot be set here (configure the encoder itself)"
            )
        return None, None
    if dtype is not None or device is not None:
        module.to(device=device, dtype=dtype)
    floating = [t for t in module.parameters() if t.is_floating_point()]
    if not floating:
        return None, None
    return str(floating[0].dtype).removeprefix("torch."), floating[0].device.type


def evaluate(
    encoder: TextEncoder,
    data: str | os.PathLike | RetrievalDataset,
    split: str = "test",
    output_dir: str | os.PathLike | None = "runs/eval",
    matryoshka_dim: int | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    languages: list[str] | None = None,
    *,
    data_root: str | os.PathLike | None = None,
    search_backend: SearchBackend = "torch",
    top_k: int = 1000,
    show_progress: bool = False,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate ``encoder`` on ``data`` and write one JSON per result under ``output_dir``.

    ``data`` is a named suite (``scifact``, ``xquad_r``, ``stsb_multi_mt``, ``tatoeba``), a dataset
    folder whose layout is auto-detected (BEIR, MIRACL, XQuAD-R, STS, Tatoeba), a YAML file
    listing several, or an already loaded :class:`RetrievalDataset` (``split``, ``languages`` and
    ``data_root`` then only serve the recorded source path). Prefixes default to the encoder's; STS
    and bitext use ``encoder.prompts`` (mteb-style, e.g. ``{"STS": "classification: "}``) or no prefix.

    ``device`` / ``dtype`` (``float32``, ``bfloat16``, ``float16``) move and cast a torch encoder
    in place before encoding (the module docstring says how precision enters the result identity).
    ``output_dir=None`` writes nothing (the records are only returned); ``extra`` is added to every
    record's ``extra`` (e.g. the training step of a probe).

    A probe subset (:func:`~lit_nomic.evaluation.retrieval_data.probe_subset`, the in-training
    ``RetrievalEval``) is recorded as that callback always recorded it: its ``settings`` hold the
    subset alone (no search settings, no precision) and its ``extra`` no dtype/device.
    """
    specs = [] if isinstance(data, RetrievalDataset) else resolve_data(data, split, languages, data_root)
    root = default_data_root(data_root)
    cache = EmbeddingCache(cache_dir)
    model_hash = encoder_fingerprint(encoder)  # the weights as given: a cast changes no provenance
    dtype_name, device_name = _place(encoder, device, dtype)
    # the vectors differ with precision, so the cache key does too (float32 keeps the old keys)
    cache_hash = model_hash if dtype_name in (None, "float32") else f"{model_hash}|{dtype_name}"
    precision: dict[str, Any] = {} if dtype_name in (None, "float32") else {"dtype": dtype_name}
    placed = {k: v for k, v in (("dtype", dtype_name), ("device", device_name)) if v is not None}
    max_length = encoder_max_length(encoder)
    q_prefix = encoder.query_prefix if query_prefix is None else query_prefix
    d_prefix = encoder.document_prefix if document_prefix is None else document_prefix
    search_config = SearchConfig(top_k=top_k, backend=search_backend)
    caller_extra = dict(extra or {})
    results: list[dict[str, Any]] = []

    def emit(result: dict[str, Any]) -> None:
        if output_dir is None:
            results.append(result)
            return
        path = write_result(output_dir, result)
        log.info(
            "%s %s/%s %s = %.4f -> %s",
            result["model_name"],
            result["dataset"],
            result["language"],
            result["main_metric"],
            result["main_score"],
            path,
        )
        results.append({**result, "_path": str(path)})

    def score_retrieval(ds: RetrievalDataset, doc_prefix: str, source: str | os.PathLike) -> None:
        t0 = time.perf_counter()
        out = evaluate_retrieval(
            encoder,
            ds,
            query_prefix=q_prefix,
            document_prefix=doc_prefix,
            batch_size=batch_size,
            matryoshka_dim=matryoshka_dim,
            search_config=search_config,
            cache=cache,
            model_hash=cache_hash,
            show_progress=show_progress,
        )
        record_extra = {"source": portable_source(source, root), **caller_extra, **ds.extra}
        if "probe" in ds.extra:
            settings: dict[str, Any] = {"probe": ds.extra["probe"]}
        else:
            settings = {
                "search_backend": search_backend,
                "top_k": top_k,
                "ignore_identical_ids": ds.ignore_identical_ids,
                **precision,
            }
            if "subsample" in ds.extra:
                settings["subsample"] = ds.extra["subsample"]
            record_extra.update(placed)
        excluded = list(ds.queries_without_positive)
        if excluded:
            print(
                f"note: {ds.name}/{ds.split}{'/' + ds.language if ds.language else ''}: "
                f"{len(excluded)} judged "
                f"quer{'y' if len(excluded) == 1 else 'ies'} without a relevant document (all "
                f"qrels 0) excluded from the evaluation (first: {excluded[0]!r}); "
                f"{out.counts['num_evaluated_queries']} evaluated",
                file=sys.stderr,
            )
        emit(
            build_result(
                model_name=encoder.name,
                model_hash=model_hash,
                dataset=ds.name,
                task_type="retrieval",
                split=ds.split,
                language=ds.language,
                metrics=out.metrics,
                query_prefix=q_prefix,
                document_prefix=doc_prefix,
                matryoshka_dim=matryoshka_dim,
                max_length=max_length,
                settings=settings,
                per_query=out.evaluation.per_query,
                excluded_queries={"no_positive_qrels": excluded} if excluded else None,
                eval_time_s=time.perf_counter() - t0,
                counts=out.counts,
                timings=out.timings,
                extra=record_extra,
            )
        )

    if isinstance(data, RetrievalDataset):
        score_retrieval(data, d_prefix, data.source)
    for spec in specs:
        if spec.kind in ("beir", "miracl", "xquad_r"):
            # Quora-style symmetric retrieval: documents are questions too, embedded like the queries
            spec_d_prefix = q_prefix if spec.options.get("doc_as_query") else d_prefix
            for ds in _retrieval_datasets(spec):
                score_retrieval(ds, spec_d_prefix, ds.source or spec.path)
        elif spec.kind in ("sts", "bitext"):
            sts = spec.kind == "sts"
            prefix = task_prefix(encoder, "STS" if sts else "BitextMining")
            available = stsb_languages(spec.path, spec.split) if sts else tatoeba_languages(spec.path)
            for lang in _pick_languages(spec, available):
                t0 = time.perf_counter()
                if sts:
                    pairs = load_stsb_multi_mt(spec.path, lang, spec.split)
                    score = evaluate_sts
                    where = dict(split=spec.split, language=lang)
                    extra_src, extra_more = portable_source(pairs.source, root), {}
                else:
                    pairs = load_tatoeba(spec.path, lang)
                    score = evaluate_bitext
                    where = dict(split="test", language=pairs.pair)
                    extra_src, extra_more = portable_source(pairs.path, root), {"direction": f"{lang}->eng"}
                metrics, counts, timings = score(
                    encoder,
                    pairs,
                    prefix=prefix,
                    batch_size=batch_size,
                    matryoshka_dim=matryoshka_dim,
                    cache=cache,
                    model_hash=cache_hash,
                )
                emit(
                    build_result(
                        model_name=encoder.name,
                        model_hash=model_hash,
                        dataset=pairs.name,
                        task_type=spec.kind,
                        metrics=metrics,
                        prefix=prefix,
                        matryoshka_dim=matryoshka_dim,
                        max_length=max_length,
                        settings=precision,
                        eval_time_s=time.perf_counter() - t0,
                        counts=counts,
                        timings=timings,
                        extra={"source": extra_src, **caller_extra, **extra_more, **placed},
                        **where,
                    )
                )
    log.info("embedding cache: %d hits, %d misses", cache.hits, cache.misses)
    return results


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown summary for the terminal: one line per result plus per-dataset language averages."""
    header = "| model | dataset | language | split | dim | metric | score |\n|---|---|---|---|---:|---|---:|"
    lines = [header]
    groups: dict[tuple[str, str, str, str], list[float]] = {}
    for r in results:
        dim = "" if r.get("matryoshka_dim") is None else str(r["matryoshka_dim"])
        lines.append(
            f"| {r['model_name']} | {r['dataset']} | {r.get('language') or '–'} | {r['split']} | {dim} | "
            f"{r['main_metric']} | {100 * r['main_score']:.2f} |"
        )
        if r.get("language"):
            groups.setdefault((r["model_name"], r["dataset"], dim, r["main_metric"]), []).append(
                r["main_score"]
            )
    for (model, dataset, dim, metric), scores in groups.items():
        if len(scores) > 1:
            lines.append(
                f"| {model} | {dataset} | **avg ({len(scores)})** | | {dim} | {metric} | "
                f"**{100 * sum(scores) / len(scores):.2f}** |"
            )
    return "\n".join(lines) + "\n"
