"""One call from a folder of result JSONs to the tables and figures of a report.

Kept separate from ``run.py`` so that reports can be rebuilt (e.g. after adding a baseline) without
loading any model, which is what the regenerate line at the bottom of every table points to.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from lit_nomic.evaluation.plots import dataset_bar_chart, language_bar_chart, save_figure
from lit_nomic.evaluation.results import load_results
from lit_nomic.evaluation.tables import build_table, default_row_key, distinct_rows, write_tables

log = logging.getLogger(__name__)


def write_report(
    results_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    command: str | None = None,
    metric: Mapping[str, str] | None = None,
    stem: str = "results",
    note: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Tables (md/csv/tex, averaged and per language) plus bar charts; returns written paths.

    ``note`` receives what the table did beyond plain collection (deduplicated re-runs, rows split
    because results sharing a name differ); default: logged.
    """
    results = load_results(results_dir)
    if not results:
        raise ValueError(f"{results_dir}: no result JSONs found")
    out = Path(output_dir)
    table = build_table(results, metric=metric)
    for message in table.notes:
        (note or log.warning)(message)
    paths = dict(write_tables(table, out, stem=stem, command=command))
    multilingual = sorted({str(r["dataset"]) for r in results if r.get("language")})
    if multilingual:
        per_lang = build_table(results, metric=metric, per_language=True)
        for kind, p in write_tables(per_lang, out, stem=f"{stem}_per_language", command=command).items():
            paths[f"{kind}_per_language"] = p
    paths["bars"] = save_figure(dataset_bar_chart(table), out / f"{stem}_bars.png")
    # one series per table row (same labels, same deduplication), never one per bare model name
    latest, _ = distinct_rows(results, default_row_key)
    labelled = [{**r, "model_name": row, "matryoshka_dim": None} for (row, _, _), r in latest.items()]
    for dataset in multilingual:
        task_type = next(str(r["task_type"]) for r in results if r["dataset"] == dataset)
        fig = language_bar_chart(labelled, dataset, metric=(metric or {}).get(task_type))
        paths[f"languages_{dataset}"] = save_figure(fig, out / f"{stem}_{dataset}_languages.png")
    return paths
