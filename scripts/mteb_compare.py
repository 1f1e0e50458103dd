"""Our retrieval evaluation and mteb's own, on the same model and the same local SciFact, side by side.

A number in our tables is only comparable with the MTEB leaderboard if our pipeline (text
construction, exact search, trec_eval scoring) reproduces mteb's on identical embeddings. This
script runs both on one model and writes a small Markdown + JSON summary with the per-metric
difference and whether nDCG@10 agrees within 0.1 point.

Both pipelines read vectors through one :class:`MemoizingEncoder`, so the model is encoded at most
once (and not at all when ``cache_dir`` holds the embeddings of an earlier ``lit-nomic eval``):
any remaining difference comes from the pipelines, not from encoding twice. A text mteb builds
differently from us is a memo miss, gets encoded afresh and is counted in the summary. mteb's own
result folders go to a temporary directory unless ``mteb_output`` asks to keep them.

    python scripts/mteb_compare.py --model all-minilm-l6-v2 --output results/mteb_scifact
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lit_nomic.data.paths import data_root as default_data_root
from lit_nomic.data.paths import resolve_dataset
from lit_nomic.evaluation.beir import load_beir
from lit_nomic.evaluation.encoders import EmbeddingCache, MemoizingEncoder, TextEncoder, encode_texts
from lit_nomic.evaluation.metrics import to_mteb_key
from lit_nomic.evaluation.results import git_commit, library_versions
from lit_nomic.evaluation.retrieval import evaluate_retrieval
from lit_nomic.evaluation.retrieval_data import RetrievalDataset
from lit_nomic.evaluation.run import portable_source
from lit_nomic.fileio import atomic_write_json, atomic_write_text

MAIN_METRIC = "ndcg@10"
COMPARED_METRICS: tuple[str, ...] = (
    "ndcg@1",
    "ndcg@10",
    "ndcg@100",
    "map@10",
    "mrr@10",
    "recall@10",
    "recall@100",
    "recall@1000",
    "precision@1",
    "precision@10",
)
# 0.1 point on the x100 scale of our tables; mteb rounds its stored scores to 5 decimals
TOLERANCE = 0.001
PROG = "python scripts/mteb_compare.py"


def _prime_memo(
    memo: MemoizingEncoder, dataset: RetrievalDataset, cache: EmbeddingCache, batch_size: int
) -> None:
    """Hand the vectors our run used (memory or disk cache) to the memo mteb will read through."""
    for texts, prefix, role in (
        (dataset.doc_texts, memo.document_prefix, "corpus"),
        (dataset.query_texts, memo.query_prefix, "queries"),
    ):
        emb = encode_texts(
            memo,
            texts,
            prefix=prefix,
            batch_size=batch_size,
            cache=cache,
            model_hash=memo.model_hash,
            dataset=dataset.name,
            split=dataset.split,
            role=role,
        )
        memo.remember(texts, emb, prefix=prefix)


def _mteb_split_scores(model_result: Any, task_name: str, split: str) -> tuple[dict[str, Any], Any]:
    for task_result in model_result.task_results:
        if task_result.task_name == task_name:
            rows = task_result.scores.get(split) or []
            if len(rows) != 1:
                raise ValueError(f"mteb {task_name}/{split}: expected one subset of scores, got {len(rows)}")
            return dict(rows[0]), task_result
    raise ValueError(f"mteb returned no result for task {task_name!r}")


def compare_retrieval(
    encoder: TextEncoder,
    beir_folder: str | os.PathLike,
    *,
    split: str = "test",
    task_name: str = "SciFact",
    dataset_name: str = "scifact",
    metrics: Sequence[str] = COMPARED_METRICS,
    cache_dir: str | os.PathLike | None = None,
    mteb_output: str | os.PathLike | None = None,
    batch_size: int = 64,
    data_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate ``encoder`` on a BEIR folder with our pipeline, then with mteb's task ``task_name``.

    Returns the summary record (also what ``write_summary`` stores): per-metric values of both,
    absolute differences, and the nDCG@10 verdict against :data:`TOLERANCE`.
    """
    from lit_nomic.evaluation.mteb_adapter import offline_retrieval_task, run_mteb

    if MAIN_METRIC not in metrics:
        raise ValueError(f"metrics must include the main metric {MAIN_METRIC!r}, got {list(metrics)}")
    memo = MemoizingEncoder(encoder)
    dataset = load_beir(Path(beir_folder), split, name=dataset_name)
    cache = EmbeddingCache(cache_dir)
    ours = evaluate_retrieval(
        memo, dataset, batch_size=batch_size, metrics=metrics, cache=cache, model_hash=memo.model_hash
    )
    encoded_by_ours = memo.misses
    _prime_memo(memo, dataset, cache, batch_size)
    misses_before, hits_before = memo.misses, memo.hits

    task = offline_retrieval_task(beir_folder, split=split, task_name=task_name)
    with tempfile.TemporaryDirectory(prefix="lit_nomic_mteb_") as tmp:
        folder = Path(mteb_output) if mteb_output is not None else Path(tmp)
        result = run_mteb(memo, [task], folder, batch_size=batch_size, overwrite_strategy="always")
    mteb_scores, task_result = _mteb_split_scores(result, task_name, split)

    ours_values = {m: float(ours.metrics[m]) for m in metrics}
    mteb_values: dict[str, float] = {}
    for m in metrics:
        key = to_mteb_key(m)
        if key not in mteb_scores:
            raise ValueError(f"mteb {task_name}/{split} has no {key!r}; it reported {sorted(mteb_scores)}")
        mteb_values[m] = float(mteb_scores[key])
    diff = {m: abs(ours_values[m] - mteb_values[m]) for m in metrics}
    return {
        "model_name": encoder.name,
        "model_hash": memo.model_hash,
        "dataset": dataset_name,
        "mteb_task": task_name,
        "split": split,
        "source": portable_source(beir_folder, default_data_root(data_root)),
        "counts": ours.counts,
        "main_metric": MAIN_METRIC,
        "main": {
            "ours": ours_values[MAIN_METRIC],
            "mteb": mteb_values[MAIN_METRIC],
            "abs_diff": diff[MAIN_METRIC],
            "tolerance": TOLERANCE,
            "within_tolerance": diff[MAIN_METRIC] <= TOLERANCE,
        },
        "metrics": {
            m: {"ours": ours_values[m], "mteb": mteb_values[m], "abs_diff": diff[m]} for m in metrics
        },
        "mteb": {
            "version": task_result.mteb_version,
            "dataset_revision": task_result.dataset_revision,
            "evaluation_time_s": task_result.evaluation_time,
            "main_score": float(mteb_scores["main_score"]),
        },
        "encoding": {
            "texts_encoded_by_ours": encoded_by_ours,
            "texts_encoded_by_mteb": memo.misses - misses_before,
            "texts_reused_by_mteb": memo.hits - hits_before,
        },
        "versions": library_versions(),
        "git_commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def to_markdown(summary: Mapping[str, Any], command: str | None = None) -> str:
    main = summary["main"]
    verdict = "yes" if main["within_tolerance"] else "**NO**"
    lines = [
        f"# {summary['mteb_task']} ({summary['split']}): lit_nomic vs mteb on {summary['model_name']}",
        "",
        f"Model hash `{summary['model_hash']}`; data `{summary['source']}` "
        f"({summary['counts']['num_queries']} queries, {summary['counts']['num_documents']} documents); "
        f"mteb {summary['mteb']['version']}, dataset revision `{summary['mteb']['dataset_revision']}`.",
        "",
        "| metric | lit_nomic | mteb | abs. diff (points) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in summary["metrics"].items():
        label = f"**{name}**" if name == summary["main_metric"] else name
        lines.append(
            f"| {label} | {100 * row['ours']:.3f} | {100 * row['mteb']:.3f} | {100 * row['abs_diff']:.4f} |"
        )
    enc = summary["encoding"]
    lines += [
        "",
        f"Scores x100. {summary['main_metric']}: lit_nomic {main['ours']:.7f}, mteb {main['mteb']:.5f}, "
        f"|diff| = {100 * main['abs_diff']:.4f} points; within {100 * main['tolerance']:.1f} point: {verdict}.",
        f"Both pipelines read the same embeddings (mteb re-used {enc['texts_reused_by_mteb']} vectors and "
        f"encoded {enc['texts_encoded_by_mteb']} texts itself), so differences come from text construction, "
        "search and scoring only. mteb stores scores rounded to 5 decimals.",
    ]
    if command:
        lines.append(f"Regenerate: `{command}`")
    return "\n".join(lines) + "\n"


def write_summary(
    summary: Mapping[str, Any], output_dir: str | os.PathLike, command: str | None = None
) -> dict[str, Path]:
    """``<output_dir>/<dataset>_ours_vs_mteb.{json,md}``, written atomically."""
    out = Path(output_dir)
    stem = f"{summary['dataset']}_ours_vs_mteb"
    record = {**summary, "command": command}
    return {
        "json": atomic_write_json(out / f"{stem}.json", record),
        "markdown": atomic_write_text(out / f"{stem}.md", to_markdown(summary, command)),
    }


def compare(
    model: str,
    output: str = "results/mteb_scifact",
    data: str = "beir/scifact",
    split: str = "test",
    task_name: str = "SciFact",
    name: str | None = None,
    cache_dir: str | None = None,
    mteb_output: str | None = None,
    data_root: str | None = None,
    batch_size: int = 64,
    command: str | None = None,
) -> dict[str, Any]:
    """Run our and mteb's evaluation of ``model`` on a local BEIR task and write the comparison.

    Args:
        model: our saved folder, a checkpoint, a sentence-transformers folder or a packaged name
            such as ``all-minilm-l6-v2`` (anything ``lit-nomic eval --model`` accepts).
        output: folder for ``<dataset>_ours_vs_mteb.{md,json}`` (``scifact_ours_vs_mteb``).
        data: the BEIR folder, as a path or relative to the data root.
        split: the qrels split.
        task_name: the mteb task the folder is served as.
        name: model name in the summary (default: the last component of ``model``).
        cache_dir: embedding cache of ``lit-nomic eval`` to reuse (nothing is encoded on a hit).
        mteb_output: keep mteb's result folders here (default: a temporary folder, deleted).
        data_root: the data root (default ``$LIT_NOMIC_DATA``, else ``../shared/data``).
        batch_size: texts per forward pass.
        command: the command line recorded in the summary (default: this invocation).
    """
    from lit_nomic.cli import load_any_model

    folder = resolve_dataset(data, data_root)
    cache_dir = str(Path(cache_dir).expanduser()) if cache_dir else None
    mteb_output = str(Path(mteb_output).expanduser()) if mteb_output else None
    encoder = load_any_model(model)
    encoder.name = name or Path(model.rstrip("/")).name
    summary = compare_retrieval(
        encoder,
        folder,
        split=split,
        task_name=task_name,
        dataset_name=folder.name,
        cache_dir=cache_dir,
        mteb_output=mteb_output,
        batch_size=batch_size,
        data_root=data_root,
    )
    if command is None:
        command = _command_line(sys.argv[1:])
    paths = write_summary(summary, output, command=command)
    main = summary["main"]
    print(
        f"{summary['main_metric']}: lit_nomic {main['ours']:.7f}  mteb {main['mteb']:.5f}  "
        f"|diff| {100 * main['abs_diff']:.4f} points  within 0.1: {main['within_tolerance']}"
    )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return summary


def _command_line(args: Sequence[str], cwd: str | os.PathLike | None = None) -> str:
    """The invocation as recorded in the summary, portable to another machine.

    The summary is committed under ``results/``, so it must not carry this machine's folders: a path
    inside the working folder is written relative to it, one under the home folder as ``~/...``, and
    any other absolute path as ``<option>`` (e.g. ``--cache_dir <cache_dir>``), a value the reader
    chooses.
    """
    here = Path(cwd or os.getcwd()).resolve()
    home = Path.home()
    portable: list[str] = []
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        prefix = arg[: len(arg) - len(value)]
        if os.path.isabs(value):
            path = Path(value)
            option = (prefix or (args[i - 1] if i else "")).lstrip("-").rstrip("=") or "path"
            if path.is_relative_to(here):
                value = str(path.relative_to(here)) or "."
            elif path.is_relative_to(home):
                value = "~" + value[len(str(home)) :]
            else:
                value = f"<{option}>"
        portable.append(prefix + value)
    return f"{PROG} {shlex.join(portable)}"


def main(argv: list[str] | None = None) -> int:
    """Exit status 1 when nDCG@10 disagrees by more than 0.1 point, so CI can gate on it."""
    from jsonargparse import ArgumentParser

    args = sys.argv[1:] if argv is None else list(argv)
    parser = ArgumentParser(prog=PROG, description=(compare.__doc__ or "").split("\n")[0])
    parser.add_function_arguments(compare, as_positional=False)
    config = parser.parse_args(args)
    kwargs = {k: v for k, v in vars(parser.instantiate_classes(config)).items() if k != "__path__"}
    if kwargs.get("command") is None:
        kwargs["command"] = _command_line(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local data only; mteb must not reach the Hub
    summary = compare(**kwargs)
    return 0 if summary["main"]["within_tolerance"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
