"""Comparison tables from result JSONs: Markdown, CSV and LaTeX (booktabs).

Rows are runs (model name, plus ``@<dim>`` for Matryoshka-truncated evaluations), columns are
datasets plus their average; each cell is the task type's main metric (nDCG@10, Spearman, F1)
times 100. Multilingual datasets are averaged over their languages (MIRACL-style) unless
``per_language`` asks for one column per language. The row average is only shown for complete
rows, because an average over a different subset of tasks is not comparable. Every file ends with
the command that regenerates it, so a table in a paper draft can always be rebuilt.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_nomic.evaluation.files import atomic_write_text
from lit_nomic.evaluation.results import MAIN_METRIC

AVERAGE = "Average"


def default_row_key(result: Mapping[str, Any]) -> str:
    dim = result.get("matryoshka_dim")
    return f"{result['model_name']} @{dim}" if dim is not None else str(result["model_name"])


@dataclass
class Table:
    """Values are fractions in [0, 1] (or [-1, 1]); formatting multiplies by 100."""

    rows: list[str]
    columns: list[str]
    values: dict[tuple[str, str], float] = field(default_factory=dict)
    metric_of_column: dict[str, str] = field(default_factory=dict)

    def get(self, row: str, column: str) -> float | None:
        return self.values.get((row, column))

    def best(self, column: str) -> float | None:
        present = [v for r in self.rows if (v := self.get(r, column)) is not None]
        return max(present) if present else None


def build_table(
    results: Sequence[Mapping[str, Any]],
    *,
    metric: Mapping[str, str] | None = None,
    per_language: bool = False,
    row_key: Callable[[Mapping[str, Any]], str] = default_row_key,
    datasets: Sequence[str] | None = None,
) -> Table:
    """Collect results into a table; ``metric`` overrides the main metric per task type.

    When several results share a (row, dataset, language) cell the newest (by ``date``) wins, so a
    re-run replaces an old number instead of being averaged with it.
    """
    chosen = {**MAIN_METRIC, **(metric or {})}
    latest: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for r in results:
        key = (row_key(r), str(r["dataset"]), str(r.get("language") or ""))
        if key not in latest or str(r["date"]) >= str(latest[key]["date"]):
            latest[key] = r
    rows: list[str] = []
    cells: dict[tuple[str, str], list[float]] = {}
    metric_of_column: dict[str, str] = {}
    for (row, dataset, language), r in latest.items():
        if datasets is not None and dataset not in datasets:
            continue
        name = chosen[str(r["task_type"])]
        if name not in r["metrics"]:
            raise ValueError(f"{r.get('_path', dataset)}: metric {name!r} not in {sorted(r['metrics'])}")
        column = f"{dataset}/{language}" if per_language and language else dataset
        previous = metric_of_column.setdefault(column, name)
        if previous != name:
            raise ValueError(f"column {column!r} mixes metrics {previous!r} and {name!r}")
        if row not in rows:
            rows.append(row)
        cells.setdefault((row, column), []).append(float(r["metrics"][name]))
    if datasets is not None:
        order = {d: i for i, d in enumerate(datasets)}
        columns = sorted(metric_of_column, key=lambda c: (order.get(c.split("/")[0], len(order)), c))
    else:
        columns = sorted(metric_of_column)
    values = {key: sum(v) / len(v) for key, v in cells.items()}
    # a multilingual column must average the same languages in every row
    if not per_language:
        langs: dict[tuple[str, str], set[str]] = {}
        for row, dataset, language in latest:
            langs.setdefault((row, dataset), set()).add(language)
        for column in columns:
            sets = {frozenset(v) for (row, d), v in langs.items() if d == column}
            if len(sets) > 1:
                raise ValueError(
                    f"dataset {column!r} was evaluated on different languages in different rows "
                    f"({[sorted(s) for s in sets]}); use per_language=True or filter the results"
                )
    for row in rows:
        row_values = [values.get((row, c)) for c in columns]
        if columns and all(v is not None for v in row_values):
            values[(row, AVERAGE)] = sum(v for v in row_values if v is not None) / len(columns)
    return Table(
        rows=rows,
        columns=[*columns, AVERAGE] if columns else [],
        values=values,
        metric_of_column=metric_of_column,
    )


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _is_best(table: Table, row: str, column: str) -> bool:
    v, b = table.get(row, column), table.best(column)
    return v is not None and b is not None and round(100 * v, 2) == round(100 * b, 2)


def to_markdown(table: Table, command: str | None = None) -> str:
    header = ["Model", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for row in table.rows:
        cells = [row.replace("|", "\\|")]
        for c in table.columns:
            text = _fmt(table.get(row, c))
            cells.append(f"**{text}**" if _is_best(table, row, c) and len(table.rows) > 1 else text)
        lines.append("| " + " | ".join(cells) + " |")
    metrics = ", ".join(f"{c}: {m}" for c, m in table.metric_of_column.items())
    lines.append("")
    lines.append(f"Scores ×100 ({metrics}); best per column in bold.")
    if command:
        lines.append(f"Regenerate: `{command}`")
    return "\n".join(lines) + "\n"


def to_csv(table: Table, command: str | None = None) -> str:
    buf = io.StringIO()
    if command:
        buf.write(f"# regenerate: {command}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", *table.columns])
    for row in table.rows:
        writer.writerow(
            [row, *("" if (v := table.get(row, c)) is None else f"{100 * v:.2f}" for c in table.columns)]
        )
    return buf.getvalue()


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(
    table: Table, command: str | None = None, caption: str | None = None, label: str | None = None
) -> str:
    lines = []
    if command:
        lines.append(f"% regenerate: {command}")
    lines += [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "r" * len(table.columns) + "}",
        r"\toprule",
    ]
    lines.append(" & ".join(["Model", *(latex_escape(c) for c in table.columns)]) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        cells = [latex_escape(row)]
        for c in table.columns:
            text = _fmt(table.get(row, c)).replace("–", "--")
            cells.append(rf"\textbf{{{text}}}" if _is_best(table, row, c) and len(table.rows) > 1 else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_tables(
    table: Table,
    output_dir: str | os.PathLike,
    *,
    stem: str = "results",
    command: str | None = None,
    caption: str | None = None,
) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex`` atomically; returns their paths."""
    out = Path(output_dir)
    return {
        "markdown": atomic_write_text(out / f"{stem}.md", to_markdown(table, command)),
        "csv": atomic_write_text(out / f"{stem}.csv", to_csv(table, command)),
        "latex": atomic_write_text(out / f"{stem}.tex", to_latex(table, command, caption=caption)),
    }
