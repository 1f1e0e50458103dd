"""``sweep table``: finished run records -> mean ± std over seeds, paired significance, tables, plots.

Rows are the sweep's groups (variant x grid point); each cell is the mean ± sample std of the main
metric over the group's seeds, with n shown. Against the baseline variant (at the same grid point),
each dataset with per-query scores gets a paired randomisation test (``scipy.stats.permutation_test``,
``permutation_type="samples"``: the sign of each query's difference is flipped at random) on the
per-query scores averaged over each group's seeds; p < ``alpha`` is marked significant, the rest
"n.s.". Datasets without per-query scores (STS correlations) get no test, and the table says so.

Only records of runs in the current plan are used (their names carry the config hash); records of
runs the sweep file no longer plans are listed, never silently mixed in.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lit_nomic.fileio import atomic_write_text
from lit_nomic.sweeps.runner import RUN_JSON, SweepPaths, read_json
from lit_nomic.sweeps.spec import RunSpec, SweepSpec

ALPHA = 0.05
N_RESAMPLES = 10_000
PER_QUERY_KEYS = ("per_query",)


@dataclass
class Cell:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None


@dataclass
class Comparison:
    delta: float  # group mean - baseline mean, over the queries both have
    p_value: float
    queries: int

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


@dataclass
class GroupRow:
    group: str
    variant: str
    point: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    cells: dict[str, Cell] = field(default_factory=dict)
    per_query: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # column -> one dict per seed
    parameters: dict[str, int] | None = None
    tokens_per_s: list[float] = field(default_factory=list)
    docs_per_s: list[float] = field(default_factory=list)
    comparisons: dict[str, Comparison] = field(default_factory=dict)


@dataclass
class PairComparison:
    """``first`` against ``second`` (both rows of the table at the same grid point), per column."""

    first: GroupRow
    second: GroupRow
    comparisons: dict[str, Comparison]


@dataclass
class SweepTable:
    title: str
    baseline: str | None
    columns: list[str]
    rows: list[GroupRow]
    missing: list[str]  # planned runs without a finished record
    ignored: list[str]  # records of runs not in the current plan
    pairs: list[PairComparison] = field(default_factory=list)  # ``table.pairs``, beyond the baseline


def column_of(result: Mapping[str, Any]) -> str:
    dim = result.get("matryoshka_dim")
    col = str(result["dataset"]) + (f"/{result['language']}" if result.get("language") else "")
    return col + (f"@{dim}" if dim else "")


def _per_query_scores(result: Mapping[str, Any], metric: str) -> dict[str, float] | None:
    for key in PER_QUERY_KEYS:
        table = result.get(key)
        if isinstance(table, Mapping) and table:
            scores = {}
            for qid, row in table.items():
                value = row.get(metric) if isinstance(row, Mapping) else None
                if value is None:
                    return None
                scores[str(qid)] = float(value)
            return scores
    return None


def collect(sweep: SweepSpec, paths: SweepPaths, runs: Sequence[RunSpec]) -> SweepTable:
    """Read every finished record of the planned runs and aggregate it per group.

    ``table.include`` adds rows read from another sweep's committed records (e.g. the MoE teacher of a
    distillation sweep, trained once by ``moe_vs_dense``) instead of training the same runs twice; their
    records sit beside this sweep's (``<records>/../<other sweep>``) and are compared with the baseline
    like any other row.
    """
    from lit_nomic.sweeps.spec import included

    planned = {run.name: run for run in runs}
    table = SweepTable(sweep.title, sweep.baseline, [], [], [], [])
    rows: dict[str, GroupRow] = {}
    for run in runs:
        _add_run(table, rows, sweep, run, paths.record_dir(run), run.group, run.variant)
    for label, other, variant in included(sweep):
        other_paths = SweepPaths(paths.run_root, paths.records.parent / other.name)
        for run in other.runs():
            if run.variant == variant:
                group = run.group.replace(variant, label, 1) + f" ({other.name})"
                _add_run(table, rows, sweep, run, other_paths.record_dir(run), group, label)
    table.ignored = sorted(
        p.name
        for p in (paths.records / "runs").glob("*")
        if p.is_dir() and not p.name.endswith(".partial") and p.name not in planned
    )
    table.rows = list(rows.values())
    _compare(table, sweep)
    _compare_pairs(table, sweep)
    return table


def _add_run(
    table: SweepTable,
    rows: dict[str, GroupRow],
    sweep: SweepSpec,
    run: RunSpec,
    record_dir: Path,
    group: str,
    variant: str,
) -> None:
    """Add one finished run's record to its group's row, or list the run as missing."""
    from lit_nomic.evaluation.results import MAIN_METRIC, load_result

    metric_of = {**MAIN_METRIC, **(sweep.table.get("metric") or {})}
    wanted = sweep.table.get("datasets")
    record = read_json(record_dir / RUN_JSON)
    if not record or record.get("status") != "finished" or record.get("config_hash") != run.config_hash:
        table.missing.append(run.name)
        return
    row = rows.setdefault(group, GroupRow(group, variant, run.point))
    row.seeds.append(run.seed)
    row.parameters = row.parameters or record.get("parameters")
    if record.get("train_tokens_per_s"):
        row.tokens_per_s.append(float(record["train_tokens_per_s"]))
    if record.get("encode_docs_per_s"):
        row.docs_per_s.append(float(record["encode_docs_per_s"]))
    for path in sorted((record_dir / "eval").rglob("*.json")):
        result = load_result(path)  # validated: a truncated or hand-edited file is an error
        col = column_of(result)
        if wanted and result["dataset"] not in wanted and col not in wanted:
            continue
        metric = metric_of.get(result.get("task_type", ""), result.get("main_metric"))
        value = (result.get("metrics") or {}).get(metric)
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"{path}: metric {metric!r} missing or not finite")
        if col not in table.columns:
            table.columns.append(col)
        row.cells.setdefault(col, Cell([])).values.append(float(value))
        scores = _per_query_scores(result, metric)
        if scores is not None:
            row.per_query.setdefault(col, []).append(scores)


def _point(row: GroupRow) -> tuple:
    """The row's grid point as a hashable key: rows are compared only at the same point."""
    return tuple(sorted(row.point.items(), key=str))


def _compare_rows(first: GroupRow, second: GroupRow, columns: Sequence[str]) -> dict[str, Comparison]:
    """The paired test of ``first`` against ``second`` in every column both have per-query scores for."""
    out = {}
    for col in columns:
        if col in first.per_query and col in second.per_query:
            comparison = paired_test(first.per_query[col], second.per_query[col])
            if comparison is not None:
                out[col] = comparison
    return out


def _compare(table: SweepTable, sweep: SweepSpec) -> None:
    if table.baseline is None:
        return
    baselines = {_point(r): r for r in table.rows if r.variant == table.baseline}
    for row in table.rows:
        base = baselines.get(_point(row))
        if base is not None and base is not row:
            row.comparisons.update(_compare_rows(row, base, table.columns))


def _compare_pairs(table: SweepTable, sweep: SweepSpec) -> None:
    """The ``table.pairs`` tests: two variants other than the baseline, e.g. what a loss adds on top of
    an initialisation both runs share; same paired test as against the baseline."""
    for first_name, second_name in sweep.table.get("pairs") or []:
        seconds = {_point(r): r for r in table.rows if r.variant == second_name}
        for first in (r for r in table.rows if r.variant == first_name):
            second = seconds.get(_point(first))
            if second is not None:
                table.pairs.append(PairComparison(first, second, _compare_rows(first, second, table.columns)))


def seed_mean(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each query's score averaged over the seeds that scored it (all seeds score the same queries)."""
    queries = set.intersection(*(set(s) for s in per_seed)) if per_seed else set()
    return {q: float(np.mean([s[q] for s in per_seed])) for q in queries}


def paired_test(
    group: Sequence[Mapping[str, float]], baseline: Sequence[Mapping[str, float]], seed: int = 0
) -> Comparison | None:
    """Paired randomisation test of mean(group) - mean(baseline) over the queries both scored."""
    from scipy.stats import permutation_test

    a, b = seed_mean(group), seed_mean(baseline)
    queries = sorted(set(a) & set(b))
    if len(queries) < 2:
        return None
    x = np.array([a[q] for q in queries])
    y = np.array([b[q] for q in queries])
    if np.array_equal(x, y):
        return Comparison(0.0, 1.0, len(queries))
    result = permutation_test(
        (x, y),
        lambda u, v, axis: np.mean(u, axis=axis) - np.mean(v, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=N_RESAMPLES,
        alternative="two-sided",
        random_state=seed,
    )
    return Comparison(float(np.mean(x - y)), float(result.pvalue), len(queries))


# -- rendering ---------------------------------------------------------------------------------------


def _pm(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    std = cell.std
    return f"{100 * cell.mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * cell.mean:.2f}"


def _millions(n: int | None) -> str:
    return f"{n / 1e6:.1f}M" if n else "–"


def _rate(values: list[float]) -> str:
    return f"{np.mean(values):,.0f}" if values else "–"


def _p(comparison: Comparison | None) -> str:
    if comparison is None:
        return "–"
    mark = "" if comparison.significant else " (n.s.)"
    return f"{100 * comparison.delta:+.2f}, p={comparison.p_value:.3g}{mark}"


def table_rows(table: SweepTable) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "n", "params (total / active)", *table.columns, "train tok/s", "encode docs/s"]
    body = []
    for row in table.rows:
        n = sorted({c.n for c in row.cells.values()}) or [0]
        params = row.parameters or {}
        body.append(
            [
                row.group + (" (baseline)" if row.variant == table.baseline else ""),
                "/".join(map(str, n)),
                f"{_millions(params.get('total'))} / {_millions(params.get('active'))}",
                *(_pm(row.cells.get(c)) for c in table.columns),
                _rate(row.tokens_per_s),
                _rate(row.docs_per_s),
            ]
        )
    return header, body


def significance_rows(table: SweepTable) -> tuple[list[str], list[list[str]]]:
    header = ["variant vs " + str(table.baseline), *table.columns]
    body = [
        [row.group, *(_p(row.comparisons.get(c)) for c in table.columns)]
        for row in table.rows
        if row.variant != table.baseline
    ]
    return header, body


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in body]


def to_markdown(table: SweepTable, command: str) -> str:
    header, body = table_rows(table)
    out = [f"# {table.title}", ""]
    out.append(
        "Main metric ×100, mean ± sample std over seeds (n = seeds per cell). "
        "Parameters in millions. Train tokens/s and encode docs/s are as measured during each run: "
        "not a controlled benchmark (other jobs on the machine slow a run down; speed claims live in "
        "results/benchmarks.md)."
    )
    out += ["", *_markdown(header, body), ""]
    if table.baseline is not None:
        sig_header, sig_body = significance_rows(table)
        out.append(
            f"Paired randomisation test against `{table.baseline}` on per-query scores averaged over seeds "
            f"(scipy permutation_test, {N_RESAMPLES:,} resamples, two-sided): Δ ×100 and p; "
            f"(n.s.) = not significant at p < {ALPHA}; – = no per-query scores (e.g. STS correlations)."
        )
        out += ["", *_markdown(sig_header, sig_body), ""]
    if table.pairs:
        out.append("The same test between other pairs of variants (first minus second):")
        body = [
            [
                f"{pair.first.group} vs {pair.second.group}",
                *(_p(pair.comparisons.get(c)) for c in table.columns),
            ]
            for pair in table.pairs
        ]
        out += ["", *_markdown(["pair", *table.columns], body), ""]
    if table.missing:
        out.append(f"Not finished yet ({len(table.missing)}): " + ", ".join(f"`{m}`" for m in table.missing))
        out.append("")
    if table.ignored:
        out.append(
            f"Records not in the current plan, ignored ({len(table.ignored)}): " + ", ".join(table.ignored)
        )
        out.append("")
    out.append(f"Regenerate: `{command}`")
    return "\n".join(out) + "\n"


def to_csv(table: SweepTable, command: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["group", "variant", "column", "n", "mean", "std", "delta_vs_baseline", "p_value", "seeds"]
    )
    for row in table.rows:
        for col in table.columns:
            cell = row.cells.get(col)
            if cell is None:
                continue
            comparison = row.comparisons.get(col)
            writer.writerow(
                [
                    row.group,
                    row.variant,
                    col,
                    cell.n,
                    f"{cell.mean:.6f}",
                    "" if cell.std is None else f"{cell.std:.6f}",
                    "" if comparison is None else f"{comparison.delta:.6f}",
                    "" if comparison is None else f"{comparison.p_value:.6g}",
                    " ".join(map(str, sorted(row.seeds))),
                ]
            )
    for pair in table.pairs:
        for col, comparison in pair.comparisons.items():
            writer.writerow(
                [
                    f"{pair.first.group} vs {pair.second.group}",
                    "pair",
                    col,
                    "",
                    "",
                    "",
                    f"{comparison.delta:.6f}",
                    f"{comparison.p_value:.6g}",
                    "",
                ]
            )
    writer.writerow([f"# regenerate: {command}"])
    return buf.getvalue()


def to_latex(table: SweepTable, command: str) -> str:
    from lit_nomic.evaluation.report import latex_escape

    header, body = table_rows(table)
    lines = [f"% regenerate: {command}", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule"]
    lines.append(" & ".join(latex_escape(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    for row_cells, row in zip(body, table.rows, strict=False):
        cells = [latex_escape(row_cells[0]), *row_cells[1:3]]
        for col, text in zip(table.columns, row_cells[3 : 3 + len(table.columns)], strict=False):
            text = text.replace("±", r"$\pm$").replace("–", "--")
            comparison = row.comparisons.get(col)
            cells.append(text + (r"$^\dagger$" if comparison is not None and comparison.significant else ""))
        cells += [latex_escape(c).replace("–", "--") for c in row_cells[3 + len(table.columns) :]]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.baseline is not None:
        lines.append(
            rf"% $\dagger$: paired randomisation test vs {latex_escape(table.baseline)}, p < {ALPHA}"
        )
    return "\n".join(lines) + "\n"


def plot(table: SweepTable, path: Path) -> Path | None:
    """One panel per column: bars = mean over seeds, error bars = sample std, n under each bar."""
    if not table.rows or not table.columns:
        return None
    from lit_nomic.evaluation.report import plt, save_figure

    cols = table.columns
    fig, axes = plt.subplots(
        1, len(cols), figsize=(max(4.0, 1.2 * len(table.rows)) * len(cols), 4.2), squeeze=False
    )
    for ax, col in zip(axes[0], cols, strict=False):
        labels, means, stds, colours = [], [], [], []
        for row in table.rows:
            cell = row.cells.get(col)
            if cell is None:
                continue
            comparison = row.comparisons.get(col)
            star = "*" if comparison is not None and comparison.significant else ""
            labels.append(f"{row.group}{star}\n(n={cell.n})")
            means.append(100 * cell.mean)
            stds.append(100 * (cell.std or 0.0))
            colours.append("0.6" if row.variant == table.baseline else "C0")
        ax.bar(range(len(means)), means, yerr=stds, capsize=4, color=colours)
        ax.set_xticks(range(len(means)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(col)
        lo = min(m - s for m, s in zip(means, stds, strict=False)) if means else 0
        hi = max(m + s for m, s in zip(means, stds, strict=False)) if means else 1
        ax.set_ylim(max(0.0, lo - (hi - lo) * 0.5 - 1), hi + (hi - lo) * 0.3 + 0.5)
    note = f" (grey: baseline {table.baseline}; * p<{ALPHA})" if table.baseline else ""
    fig.suptitle(f"{table.title}: mean ± std over seeds{note}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def write_outputs(table: SweepTable, output: Path, command: str) -> dict[str, Path]:
    output.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": atomic_write_text(output / "table.md", to_markdown(table, command)),
        "csv": atomic_write_text(output / "table.csv", to_csv(table, command)),
        "latex": atomic_write_text(output / "table.tex", to_latex(table, command)),
    }
    png = plot(table, output / "table.png")
    if png is not None:
        paths["plot"] = png
    return paths
