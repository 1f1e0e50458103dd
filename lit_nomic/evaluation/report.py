"""Reporting: result JSONs -> comparison tables (Markdown, CSV, LaTeX) and PNG figures.

:func:`write_report` is the one call from a folder of result JSONs to the tables and figures of a
report (``lit-nomic report``); it loads no model, so reports can be rebuilt (e.g. after adding a
baseline) at any time, which is what the regenerate line at the bottom of every table points to.

**Tables.** Rows are runs (model name, plus ``@<dim>`` for Matryoshka-truncated evaluations),
columns are datasets plus their average; each cell is the task type's main metric (nDCG@10,
Spearman, F1) times 100. Multilingual datasets are averaged over their languages (MIRACL-style)
unless ``per_language`` asks for one column per language. The row average is only shown for
complete rows, because an average over a different subset of tasks is not comparable. Every file
ends with the command that regenerates it, so a table in a paper draft can always be rebuilt.

No result is dropped silently: identical re-runs (same ``result_id``) keep the newest with a note,
and results that share a row name but differ in identity (every ablation of one YAML shares its
model name) get distinct rows labelled by what differs, e.g. ``moe [#1a2b3c4d]`` or
``moe [max_length=128]``; if the label still cannot tell them apart the table is an error.

**Figures**: per-dataset bars, per-language bars, and MoE expert-load heatmaps. Builders return the
matplotlib ``Figure`` (so tests and notebooks can inspect what is drawn) and :func:`save_figure`
writes it atomically. The Agg backend is forced: evaluation runs headless.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lit_nomic.evaluation.results import MAIN_METRIC, compute_result_id, load_results  # noqa: E402
from lit_nomic.fileio import atomic_write, atomic_write_text  # noqa: E402

log = logging.getLogger(__name__)


# -------------------- tables
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


# -------------------- figures
def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save as PNG atomically and close the figure (figures leak memory in long runs otherwise)."""
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


# above this many bars, value labels would overlap each other and are left out
MAX_LABELLED_BARS = 48


def _grouped_bars(
    groups: Sequence[str], series: Mapping[str, Sequence[float | None]], title: str, ylabel: str
) -> Figure:
    """Bars are labelled with their value (x100, one decimal) when few enough to stay legible,
    because a reader comparing runs wants the number, not an estimate read off the axis."""
    n_series = max(len(series), 1)
    width = 0.8 / n_series
    # up to 8 groups stay horizontal (multi-line labels such as "dataset\nmetric" read badly tilted)
    tilt = len(groups) > 8
    fig_width = max(6.0, 0.6 * len(groups) * n_series + 2, 0.0 if tilt else 1.3 * len(groups) + 1)
    fig, ax = plt.subplots(figsize=(fig_width, 4.0))
    x = np.arange(len(groups))
    label_values = len(groups) * n_series <= MAX_LABELLED_BARS
    for i, (name, values) in enumerate(series.items()):
        heights = [np.nan if v is None else 100 * v for v in values]
        bars = ax.bar(x + (i - (n_series - 1) / 2) * width, heights, width, label=name)
        if label_values:
            texts = ["" if not np.isfinite(h) else f"{h:.1f}" for h in heights]
            ax.bar_label(
                bars, labels=texts, fontsize=7 if n_series > 1 else 8, padding=1,
                rotation=90 if n_series > 2 else 0,
            )  # fmt: skip
    if label_values:
        ax.margins(y=0.12)  # head room so the labels of the tallest bars stay inside the axes
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    # outside the axes: inside, it would hide the bars (and value labels) it happens to cover
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def dataset_bar_chart(
    table: Table, *, title: str = "Scores by dataset", include_average: bool = True
) -> Figure:
    """One group of bars per dataset column, one bar per model row (values ×100)."""
    columns = [c for c in table.columns if include_average or c != AVERAGE]
    if not columns or not table.rows:
        raise ValueError("dataset_bar_chart: the table is empty")
    series = {row: [table.get(row, c) for c in columns] for row in table.rows}
    # columns mix metrics (nDCG@10, Spearman, F1): name each under its dataset
    groups = [f"{c}\n{table.metric_of_column[c]}" if c in table.metric_of_column else c for c in columns]
    return _grouped_bars(groups, series, title, "score ×100")


def language_bar_chart(
    results: Sequence[Mapping[str, Any]], dataset: str, *, metric: str | None = None
) -> Figure:
    """Per-language bars of one multilingual dataset, one series per model, plus the average."""
    chosen = [r for r in results if r["dataset"] == dataset and r.get("language")]
    if not chosen:
        raise ValueError(f"language_bar_chart: no per-language results for dataset {dataset!r}")
    languages = sorted({str(r["language"]) for r in chosen})
    series: dict[str, list[float | None]] = {}
    name = metric or str(chosen[0]["main_metric"])
    for r in chosen:
        label = str(r["model_name"]) + (f" @{r['matryoshka_dim']}" if r.get("matryoshka_dim") else "")
        row = series.setdefault(label, [None] * (len(languages) + 1))
        if name not in r["metrics"]:
            raise ValueError(f"{r.get('_path', dataset)}: metric {name!r} missing")
        row[languages.index(str(r["language"]))] = float(r["metrics"][name])
    for row in series.values():
        present = [v for v in row[:-1] if v is not None]
        row[-1] = sum(present) / len(present) if len(present) == len(languages) else None
    fig = _grouped_bars([*languages, "avg"], series, f"{dataset} ({name}) by language", f"{name} ×100")
    fig.axes[0].axvline(len(languages) - 0.5, color="grey", linestyle=":", linewidth=1)  # avg apart
    return fig


def load_expert_load(source: str | os.PathLike | Mapping[str, Any]) -> tuple[list[str], np.ndarray]:
    """Parse ``{layer: [fraction per expert]}`` (optionally under an ``"expert_load"`` key).

    Accepts a mapping or a JSON file path; rows must be equally long and non-negative.
    """
    where = "expert load"
    if not isinstance(source, Mapping):
        where = str(source)
        try:
            source = json.loads(Path(source).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(source, Mapping):
        raise ValueError(f"{where}: expected a JSON object mapping layer names to lists")
    data = source.get("expert_load", source)
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{where}: expected a non-empty mapping of layer -> list of expert fractions")
    layers = [str(k) for k in data]
    rows = []
    for layer, values in data.items():
        if not isinstance(values, Sequence) or isinstance(values, str) or not values:
            raise ValueError(f"{where}: layer {layer!r} must map to a non-empty list of numbers")
        rows.append([float(v) for v in values])
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"{where}: layers have different numbers of experts {sorted(widths)}")
    matrix = np.asarray(rows, dtype=np.float64)
    if (matrix < 0).any() or not np.isfinite(matrix).all():
        bad = layers[int(np.argwhere((matrix < 0) | ~np.isfinite(matrix))[0, 0])]
        raise ValueError(f"{where}: layer {bad!r} has a negative or non-finite fraction")
    return layers, matrix


def expert_load_heatmap(
    source: str | os.PathLike | Mapping[str, Any], *, title: str = "Expert load (fraction of routed tokens)"
) -> Figure:
    """Layers × experts heatmap with per-cell values; the title reports the uniform share.

    A balanced router gives every cell the uniform share (row sum / number of experts), so
    deviations from it are the load imbalance that auxiliary losses are meant to remove.
    """
    layers, matrix = load_expert_load(source)
    n_layers, n_experts = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * n_experts + 2), max(2.5, 0.45 * n_layers + 1.5)))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis")
    ax.set_xticks(range(n_experts))
    ax.set_xticklabels([str(e) for e in range(n_experts)])
    ax.set_yticks(range(n_layers))
    ax.set_yticklabels(layers)
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    uniform = float(matrix.sum(axis=1).mean()) / n_experts
    ax.set_title(
        f"{title}\nuniform = {uniform:.3f}, max/uniform = {matrix.max() / uniform if uniform else 0:.2f}"
    )
    threshold = (matrix.max() + matrix.min()) / 2
    for i in range(n_layers):
        for j in range(n_experts):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if matrix[i, j] > threshold else "white",
            )
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


# -------------------- the report


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
