"""Comparison tables from result JSONs: Markdown, CSV and LaTeX (booktabs).

Rows are runs (model name, plus ``@<dim>`` for Matryoshka-truncated evaluations), columns are
datasets plus their average; each cell is the task type's main metric (nDCG@10, Spearman, F1)
times 100. Multilingual datasets are averaged over their languages (MIRACL-style) unless
``per_language`` asks for one column per language. The row average is only shown for complete
rows, because an average over a different subset of tasks is not comparable. Every file ends with
the command that regenerates it, so a table in a paper draft can always be rebuilt.

No result is dropped silently: identical re-runs (same ``result_id``) keep the newest with a note,
and results that share a row name but differ in identity (every ablation of one YAML shares its
model name) get distinct rows labelled by what differs, e.g. ``moe [#1a2b3c4d]`` or
``moe [max_length=128]``; if the label still cannot tell them apart the table is an error.
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
from lit_nomic.evaluation.results import MAIN_METRIC, compute_result_id

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
    notes: list[str] = field(default_factory=list)

    def get(self, row: str, column: str) -> float | None:
        return self.values.get((row, column))

    def best(self, column: str) -> float | None:
        present = [v for r in self.rows if (v := self.get(r, column)) is not None]
        return max(present) if present else None


# fields that may tell two results of one row name apart, in label order (then ``settings`` keys)
VARIANT_FIELDS: tuple[str, ...] = (
    "model_hash",
    "split",
    "max_length",
    "query_prefix",
    "document_prefix",
    "prefix",
)


def _result_id(r: Mapping[str, Any]) -> str:
    return str(r.get("result_id") or compute_result_id(r))


def _variant_values(r: Mapping[str, Any]) -> dict[str, Any]:
    """The applicable (non-null) variant fields of one result, settings prefixed by ``settings.``."""
    out = {f: r.get(f) for f in VARIANT_FIELDS if r.get(f) is not None}
    for key, value in sorted(dict(r.get("settings") or {}).items()):
        if value is not None:
            out[f"settings.{key}"] = value
    return out


def _describe(name: str, value: Any) -> str:
    if name == "model_hash":
        return f"#{str(value)[:8]}"
    name = name.removeprefix("settings.")
    return f"{name}={value!r}" if isinstance(value, str) and name.endswith("prefix") else f"{name}={value}"


def _where(r: Mapping[str, Any]) -> str:
    return str(r.get("_path") or f"result {_result_id(r)}")


def distinct_rows(
    results: Sequence[Mapping[str, Any]], row_key: Callable[[Mapping[str, Any]], str]
) -> tuple[dict[tuple[str, str, str], Mapping[str, Any]], list[str]]:
    """``(row, dataset, language) -> result`` with identical re-runs deduplicated and differing
    results of one row name given distinct labels; plus the notes to print about both."""
    notes: list[str] = []
    newest: dict[str, Mapping[str, Any]] = {}
    dropped: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        rid = _result_id(r)
        if rid not in newest:
            newest[rid] = r
            continue
        old, new = (newest[rid], r) if str(r["date"]) >= str(newest[rid]["date"]) else (r, newest[rid])
        newest[rid] = new
        dropped.setdefault(rid, []).append(old)
    for rid, olds in dropped.items():
        kept = newest[rid]
        notes.append(
            f"note: {len(olds)} identical re-run(s) of {row_key(kept)} on {kept['dataset']}"
            f"{'/' + str(kept['language']) if kept.get('language') else ''} (result_id {rid}): kept the "
            f"newest ({_where(kept)}, {kept['date']}), ignored {', '.join(_where(o) for o in olds)}"
        )
    by_base: dict[str, list[Mapping[str, Any]]] = {}
    for r in newest.values():
        by_base.setdefault(row_key(r), []).append(r)
    cells: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for base, group in by_base.items():
        seen_cells: dict[tuple[str, str], int] = {}
        for r in group:
            cell = (str(r["dataset"]), str(r.get("language") or ""))
            seen_cells[cell] = seen_cells.get(cell, 0) + 1
        labels = {id(r): base for r in group}
        if any(n > 1 for n in seen_cells.values()):
            values = [_variant_values(r) for r in group]
            names = {n for v in values for n in v}
            varying = [
                n
                for n in [*VARIANT_FIELDS, *sorted(n for n in names if n.startswith("settings."))]
                if len({repr(v[n]) for v in values if n in v}) > 1
            ]
            for r, v in zip(group, values, strict=True):
                parts = [_describe(n, v[n]) for n in varying if n in v]
                labels[id(r)] = f"{base} [{', '.join(parts)}]" if parts else base
            notes.append(
                f"note: results named {base!r} differ in {', '.join(n.removeprefix('settings.') for n in varying) or 'identity'}; "
                f"shown as separate rows: {sorted(set(labels.values()))}"
            )
        for r in group:
            key = (labels[id(r)], str(r["dataset"]), str(r.get("language") or ""))
            cells.setdefault(key, []).append(r)
    for (row, dataset, language), rs in cells.items():
        if len(rs) > 1:
            raise ValueError(
                f"row {row!r}, {dataset}{'/' + language if language else ''}: {len(rs)} different results "
                f"({', '.join(_where(r) for r in rs)}) cannot be told apart by the row label; "
                "give the runs distinct names (lit-nomic eval --name) or table them separately"
            )
    return {key: rs[0] for key, rs in cells.items()}, notes


def build_table(
    results: Sequence[Mapping[str, Any]],
    *,
    metric: Mapping[str, str] | None = None,
    per_language: bool = False,
    row_key: Callable[[Mapping[str, Any]], str] = default_row_key,
    datasets: Sequence[str] | None = None,
) -> Table:
    """Collect results into a table; ``metric`` overrides the main metric per task type.

    Identical re-runs (same ``result_id``) keep the newest (by ``date``), so a re-run replaces an
    old number instead of being averaged with it; different results sharing a row name become
    separate, labelled rows (see the module docstring). ``Table.notes`` says what was done.
    """
    chosen = {**MAIN_METRIC, **(metric or {})}
    latest, notes = distinct_rows(results, row_key)
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
        notes=notes,
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
