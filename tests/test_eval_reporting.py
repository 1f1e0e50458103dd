"""Result JSONs, comparison tables (Markdown/CSV/LaTeX) and PNG plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from lit_nomic.evaluation.report import (
    build_table,
    dataset_bar_chart,
    expert_load_heatmap,
    language_bar_chart,
    latex_escape,
    load_expert_load,
    save_figure,
    to_csv,
    to_latex,
    to_markdown,
    write_tables,
)
from lit_nomic.evaluation.results import build_result, load_result, load_results, result_path, write_result


def _result(
    model: str,
    dataset: str,
    score: float,
    *,
    language: str | None = None,
    task: str = "retrieval",
    dim: int | None = None,
) -> dict:
    metric = {"retrieval": "ndcg@10", "sts": "spearman", "bitext": "f1"}[task]
    return build_result(
        model_name=model,
        model_hash=f"hash-{model}",
        dataset=dataset,
        task_type=task,
        split="test",
        language=language,
        metrics={metric: score, **({"recall@100": 0.9} if task == "retrieval" else {})},
        query_prefix="search_query: " if task == "retrieval" else None,
        matryoshka_dim=dim,
        eval_time_s=1.5,
        counts={"num_queries": 3},
    )


def test_result_roundtrip_and_provenance(tmp_path: Path) -> None:
    r = _result("nomic-moe", "scifact", 0.7012, dim=256)
    path = write_result(tmp_path, r)
    assert path == result_path(tmp_path, r)
    assert len(r["result_id"]) == 12
    assert (
        path.relative_to(tmp_path).as_posix()
        == f"nomic-moe-hash-nomic-m/scifact/test_d256-{r['result_id']}.json"
    )
    loaded = load_result(path)
    for key in (
        "model_name",
        "model_hash",
        "dataset",
        "split",
        "language",
        "query_prefix",
        "matryoshka_dim",
        "metrics",
    ):
        assert loaded[key] == r[key]
    assert loaded["main_score"] == 0.7012 and loaded["main_metric"] == "ndcg@10"
    assert set(loaded["versions"]) >= {"torch", "transformers", "lit_nomic", "mteb"}
    assert loaded["date"].endswith("+00:00")
    assert loaded["git_commit"] is None or len(loaded["git_commit"]) >= 40
    assert not list(tmp_path.rglob(".*.tmp"))
    other = write_result(tmp_path, _result("nomic-moe", "stsb_multi_mt", -0.1, language="de", task="sts"))
    assert [p["_path"] for p in load_results(tmp_path)] == sorted([str(path), str(other)])


def test_result_validation_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"metric 'ndcg@10'=70.1 outside \[0, 1\] \(store fractions"):
        _result("m", "scifact", 70.1)
    with pytest.raises(ValueError, match="metric 'spearman'=-1.5 outside"):
        _result("m", "sts", -1.5, task="sts")
    with pytest.raises(ValueError, match="main metric 'f1' missing"):
        build_result(
            model_name="m",
            model_hash="h",
            dataset="t",
            task_type="bitext",
            split="test",
            language="deu-eng",
            metrics={"accuracy": 0.5},
        )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in _result("m", "d", 0.5).items() if k != "model_hash"}))
    with pytest.raises(ValueError, match=r"bad\.json: missing field 'model_hash'"):
        load_result(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json:1: malformed JSON"):
        load_results(tmp_path)


RESULTS = [
    _result("A", "scifact", 0.60),
    _result("B", "scifact", 0.65),
    _result("A", "stsb_multi_mt", 0.80, language="en", task="sts"),
    _result("A", "stsb_multi_mt", 0.70, language="de", task="sts"),
    _result("B", "stsb_multi_mt", 0.78, language="en", task="sts"),
    _result("B", "stsb_multi_mt", 0.74, language="de", task="sts"),
    _result("A_x", "scifact", 0.10),  # incomplete row: no average
]


def test_table_values_average_and_best() -> None:
    table = build_table(RESULTS)
    assert table.rows == ["A", "B", "A_x"] and table.columns == ["scifact", "stsb_multi_mt", "Average"]
    assert table.get("A", "stsb_multi_mt") == pytest.approx(0.75)  # mean over en, de
    assert table.get("B", "Average") == pytest.approx((0.65 + 0.76) / 2)
    assert table.get("A_x", "Average") is None
    assert table.metric_of_column == {"scifact": "ndcg@10", "stsb_multi_mt": "spearman"}
    per_lang = build_table(RESULTS, per_language=True)
    assert per_lang.columns == ["scifact", "stsb_multi_mt/de", "stsb_multi_mt/en", "Average"]
    assert build_table(RESULTS, metric={"retrieval": "recall@100"}).get("A", "scifact") == 0.9


def test_table_rejects_mismatched_language_sets() -> None:
    with pytest.raises(ValueError, match="'stsb_multi_mt' was evaluated on different languages"):
        build_table(RESULTS[:5])


def test_markdown_csv_latex() -> None:
    table = build_table(RESULTS)
    cmd = "lit-nomic eval-table runs/eval --out tables"
    md = to_markdown(table, cmd)
    lines = md.splitlines()
    assert lines[0] == "| Model | scifact | stsb_multi_mt | Average |"
    assert lines[2] == "| A | 60.00 | 75.00 | 67.50 |"
    assert lines[3] == "| B | **65.00** | **76.00** | **70.50** |"
    assert lines[4] == "| A_x | 10.00 | – | – |"
    assert lines[-1] == f"Regenerate: `{cmd}`"
    rows = list(csv.reader(io.StringIO(to_csv(table, cmd))))
    assert rows[0] == [f"# regenerate: {cmd}"]
    assert rows[1:] == [
        ["model", "scifact", "stsb_multi_mt", "Average"],
        ["A", "60.00", "75.00", "67.50"],
        ["B", "65.00", "76.00", "70.50"],
        ["A_x", "10.00", "", ""],
    ]
    tex = to_latex(table, cmd, caption="SciFact & STS")
    assert tex.splitlines()[0] == f"% regenerate: {cmd}"
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"B & \textbf{65.00} & \textbf{76.00} & \textbf{70.50} \\" in tex
    assert r"A\_x & 10.00 & -- & -- \\" in tex
    assert r"Model & scifact & stsb\_multi\_mt & Average \\" in tex
    assert r"\caption{SciFact \& STS}" in tex
    assert latex_escape("50%_#") == r"50\%\_\#"


def test_write_tables(tmp_path: Path) -> None:
    paths = write_tables(build_table(RESULTS), tmp_path, stem="main", command="make tables")
    assert sorted(p.name for p in paths.values()) == ["main.csv", "main.md", "main.tex"]
    assert "Regenerate: `make tables`" in paths["markdown"].read_text()


def _png_shape(path: Path) -> tuple[int, ...]:
    image = matplotlib.image.imread(path)
    assert image.std() > 0  # not a blank canvas
    return image.shape


def test_dataset_and_language_bar_charts(tmp_path: Path) -> None:
    table = build_table(RESULTS)
    fig = dataset_bar_chart(table)
    heights = [p.get_height() for p in fig.axes[0].patches]
    # three models x three columns; bars are grouped per model series
    assert heights[:3] == pytest.approx([60.0, 75.0, 67.5])
    assert heights[3:6] == pytest.approx([65.0, 76.0, 70.5])
    assert np.isnan(heights[7]) and np.isnan(heights[8])  # A_x has no STS and no average
    path = save_figure(fig, tmp_path / "bars.png")
    assert len(_png_shape(path)) == 3
    fig = language_bar_chart(RESULTS, "stsb_multi_mt")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["de", "en", "avg"]
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx(
        [70.0, 80.0, 75.0, 74.0, 78.0, 76.0]
    )
    save_figure(fig, tmp_path / "lang.png")
    assert (tmp_path / "lang.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no per-language results for dataset 'scifact'"):
        language_bar_chart(RESULTS, "scifact")


def test_expert_load_heatmap(tmp_path: Path) -> None:
    load = {"layer.1": [0.125] * 8, "layer.3": [0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]}
    src = tmp_path / "load.json"
    src.write_text(json.dumps({"expert_load": load}))
    layers, matrix = load_expert_load(src)
    assert layers == ["layer.1", "layer.3"] and matrix.shape == (2, 8)
    fig = expert_load_heatmap(src)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), matrix)
    assert "uniform = 0.125, max/uniform = 3.20" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["layer.1", "layer.3"]
    assert len(ax.texts) == 16
    height, width, _ = _png_shape(save_figure(fig, tmp_path / "load.png"))
    assert width > height
    with pytest.raises(ValueError, match="layers have different numbers of experts"):
        load_expert_load({"a": [0.5, 0.5], "b": [1.0]})
    with pytest.raises(ValueError, match="layer 'b' has a negative"):
        load_expert_load({"a": [0.5, 0.5], "b": [1.5, -0.5]})


def test_write_report(tmp_path: Path) -> None:
    from lit_nomic.evaluation.report import write_report

    for r in RESULTS:
        write_result(tmp_path / "results", r)
    paths = write_report(tmp_path / "results", tmp_path / "report", command="lit-nomic report")
    assert sorted(p.name for p in paths.values()) == [
        "results.csv",
        "results.md",
        "results.tex",
        "results_bars.png",
        "results_per_language.csv",
        "results_per_language.md",
        "results_per_language.tex",
        "results_stsb_multi_mt_languages.png",
    ]
    assert "| B | **65.00** | **76.00** | **70.50** |" in paths["markdown"].read_text()
    assert paths["markdown_per_language"].read_text().splitlines()[0] == (
        "| Model | scifact | stsb_multi_mt/de | stsb_multi_mt/en | Average |"
    )
    with pytest.raises(ValueError, match="no result JSONs found"):
        write_report(tmp_path / "report", tmp_path / "x")
