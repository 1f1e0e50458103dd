"""PNG figures for reports: per-dataset bars, per-language bars, and MoE expert-load heatmaps.

Builders return the matplotlib ``Figure`` (so tests and notebooks can inspect what is drawn) and
``save_figure`` writes it atomically. The Agg backend is forced: evaluation runs headless.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lit_nomic.evaluation.files import atomic_write  # noqa: E402
from lit_nomic.evaluation.tables import AVERAGE, Table  # noqa: E402


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
