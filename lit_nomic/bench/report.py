"""Render ``results/benchmarks.md`` from the benchmark JSON files: machine, commands, tables, targets.

The markdown is generated, never edited: its first lines say how to regenerate it, and every table
carries the command that produced its numbers, so a reader can rerun exactly that on their machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from lit_nomic.bench.results import BenchResults, load_results
from lit_nomic.bench.timing import Row
from lit_nomic.fileio import atomic_write_text

__all__ = ["BENCHMARKS", "REGENERATE", "render_report", "render_table", "result_files", "write_report"]

BENCHMARKS = ("moe", "encoder", "train", "export")
REGENERATE = "python -m lit_nomic.bench report --input results/bench --output results/benchmarks.md"

_TITLES = {
    "moe": "MoE layer, forward + backward",
    "encoder": "Encode throughput (all-MiniLM-L6-v2, SciFact corpus)",
    "train": "Training step (encoder fwd+bwd + InfoNCE + AdamW)",
    "export": "Deployment: ours vs sentence-transformers vs ONNX fp32 / int8 (all-MiniLM-L6-v2, SciFact)",
}
_EXPLAIN = {
    "moe": (
        "`ours` = `MoEFeedForward` (torch backend); `dense` = a dense FFN of the same *active* width "
        "(k x expert FFN, + shared experts); `loop` = the naive per-expert loop slicing the stacked [E, D, F] "
        "weights (its backward accumulates into the whole stacked tensor per expert: E^2 work, a pessimistic "
        "baseline); `linear_loop` = the contrastors / HF fallback, one `nn.Linear` pair per expert in a "
        "`ModuleList` (the fair loop baseline, rows since issue 13). "
        "Times are medians of interleaved repetitions (IQR in parentheses). GFLOP/s counts the active "
        "expert matmuls x 3 (fwd+bwd). `grouped/dense` = ours / dense time; `loop/grouped` = loop / ours time."
    ),
    "encoder": (
        "End-to-end `encode` (tokenisation included) of the same texts with the same batch size and length limit. "
        "`ours/ST` = our throughput / sentence-transformers throughput; `MoE/dense` = time of the upcycled "
        "8-expert top-2 model / time of the dense model; `min cos` = the smallest cosine between our and "
        "sentence-transformers embeddings (the two must embed alike for the ratio to mean anything)."
    ),
    "train": (
        "Random token ids without padding; one step = query and document forward, InfoNCE (+ MoE aux loss), "
        "backward, AdamW. MFU = model FLOP/s (`count_parameters` FLOPs per token x tokens, recomputation "
        "not counted) / the matmul peak measured in the same run."
    ),
    "export": (
        "The same weights encoded four ways, timed interleaved on the same SciFact documents and batch size: "
        "our PyTorch encoder, sentence-transformers fp32, and the `lit-nomic export --format onnx` graph in "
        "onnxruntime, fp32 and dynamically quantised int8. Each variant's SciFact-test nDCG@10 (the 1,000-document "
        "probe: every judged document plus random others) is on the same line, so the quality cost of int8 "
        "is read beside its speed; `int8 points lost` = ST nDCG@10 - int8 nDCG@10, x100."
    ),
}


# ----------------------------------------------------------------------------- formatting
def _num(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def _si(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def _ratio(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def _ms(row: Row, variant: str, iqr: bool = False) -> str:
    stat = row.times.get(variant)
    if stat is None:
        return "-"
    text = _num(stat.median_ms)
    return f"{text} ({_num(stat.iqr_ms, 2)})" if iqr else text


def _metric(row: Row, variant: str, key: str) -> float | None:
    return row.metrics.get(variant, {}).get(key)


def _checks(row: Row) -> str:
    if not row.checks:
        return ""
    return "; ".join(f"{c.name} {'met' if c.met else '**missed**'}" for c in row.checks)


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    return "\n".join(out)


# ----------------------------------------------------------------------------- tables
def _moe_table(rows: Sequence[Row]) -> str:
    extra = [v for v in ("linear_loop", "megablocks", "cuda_grouped_mm") if any(v in r.times for r in rows)]
    header = ["shape", "ours ms", "dense ms", "loop ms", *[f"{v} ms" for v in extra]]
    header += ["ours tok/s", "ours GFLOP/s", "grouped/dense", "loop/grouped"]
    header += [f"{v}/grouped" for v in extra] + ["targets"]
    lines = []
    for r in rows:
        line = [r.name, _ms(r, "ours", iqr=True), _ms(r, "dense", iqr=True), _ms(r, "loop")]
        line += [_ms(r, v) for v in extra]
        flops = _metric(r, "ours", "flops_per_s")
        line += [_si(_metric(r, "ours", "tokens_per_s")), _num(flops / 1e9 if flops else None)]
        line += [_ratio(r.ratios.get("grouped_over_dense")), _ratio(r.ratios.get("loop_over_grouped"))]
        line += [_ratio(r.ratios.get(f"{v}_over_grouped")) for v in extra]
        line.append(_checks(r))
        lines.append(line)
    return _table(header, lines)


def _encoder_table(rows: Sequence[Row]) -> str:
    moe = any("ours_moe" in r.times for r in rows)
    header = ["setting", "ours docs/s", "ST docs/s"] + (["MoE docs/s"] if moe else [])
    header += (
        ["ours tok/s", "ST tok/s", "ours/ST"] + (["MoE/dense time"] if moe else []) + ["min cos", "targets"]
    )
    lines = []
    for r in rows:
        line = [
            r.name,
            _num(_metric(r, "ours", "docs_per_s")),
            _num(_metric(r, "sentence_transformers", "docs_per_s")),
        ]
        if moe:
            line.append(_num(_metric(r, "ours_moe", "docs_per_s")))
        line += [
            _si(_metric(r, "ours", "tokens_per_s")),
            _si(_metric(r, "sentence_transformers", "tokens_per_s")),
        ]
        line.append(_ratio(r.ratios.get("ours_over_sentence_transformers")))
        if moe:
            line.append(_ratio(r.ratios.get("moe_time_over_dense")))
        cosine = _metric(r, "ours", "min_cosine_vs_sentence_transformers")
        line += [f"{cosine:.5f}" if cosine is not None else "-", _checks(r)]
        lines.append(line)
    return _table(header, lines)


def _train_table(rows: Sequence[Row]) -> str:
    header = ["shape", "params (active)", "step ms", "tok/s", "samples/s", "model GFLOP/s", "MFU"]
    header += ["ckpt step ms", "ckpt tok/s", "ckpt MFU", "ckpt/plain time"]
    lines = []
    for r in rows:
        p, c = r.metrics.get("plain", {}), r.metrics.get("checkpointing", {})
        params = f"{_si(r.shape.get('total_params'))} ({_si(r.shape.get('active_params'))})"
        mfu = p.get("mfu")
        ckpt_mfu = c.get("mfu")
        lines.append(
            [
                r.name, params, _ms(r, "plain", iqr=True), _si(p.get("tokens_per_s")), _num(p.get("samples_per_s")),
                _num(p["model_flops_per_s"] / 1e9 if "model_flops_per_s" in p else None),
                f"{100 * mfu:.1f}%" if mfu is not None else "-",
                _ms(r, "checkpointing", iqr=True), _si(c.get("tokens_per_s")),
                f"{100 * ckpt_mfu:.1f}%" if ckpt_mfu is not None else "-",
                _ratio(r.ratios.get("checkpointing_time_over_plain")),
            ]
        )  # fmt: skip
    return _table(header, lines)


def _generic_table(rows: Sequence[Row]) -> str:
    variants = sorted({v for r in rows for v in r.times})
    ratios = sorted({k for r in rows for k in r.ratios})
    header = ["row", *[f"{v} ms" for v in variants], *ratios, "targets"]
    lines = [
        [r.name, *[_ms(r, v) for v in variants], *[_ratio(r.ratios.get(k)) for k in ratios], _checks(r)]
        for r in rows
    ]
    return _table(header, lines)


def _export_table(rows: Sequence[Row]) -> str:
    """Throughput and SciFact nDCG@10 of each deployment variant on one line, so speed and quality
    cost are read together."""
    variants = ("ours", "sentence_transformers", "onnx_fp32", "onnx_int8")
    header = ["row", *[f"{v} docs/s" for v in variants], "int8/ST", *[f"{v} nDCG@10" for v in variants]]
    header += ["int8 points lost", "targets"]
    lines = []
    for r in rows:

        def metric(v: str, key: str, r: Row = r) -> float | None:
            return (r.metrics.get(v) or {}).get(key)

        ndcg = [metric(v, "ndcg@10") for v in variants]
        lost = r.ratios.get("onnx_int8_ndcg10_points_lost")
        lines.append(
            [
                r.name,
                *[_si(metric(v, "docs_per_s")) for v in variants],
                _ratio(r.ratios.get("onnx_int8_over_sentence_transformers")),
                *["-" if x is None else f"{100 * x:.2f}" for x in ndcg],
                "-" if lost is None else f"{lost:+.2f}",
                _checks(r),
            ]
        )
    return _table(header, lines)


_RENDERERS: dict[str, Callable[[Sequence[Row]], str]] = {
    "export": _export_table,
    "moe": _moe_table,
    "encoder": _encoder_table,
    "train": _train_table,
}


def render_table(results: BenchResults) -> str:
    """The markdown table of one benchmark file (also printed by the CLI after a run)."""
    return _RENDERERS.get(results.benchmark, _generic_table)(results.rows)


def _machine_line(machine: dict) -> str:
    gpu = (
        f", GPU {machine['cuda_device']} (CUDA {machine.get('cuda')})"
        if machine.get("cuda_device")
        else ", no GPU"
    )
    return (
        f"{machine.get('cpu', '?')}, {machine.get('usable_cores', '?')} usable cores, "
        f"torch threads: {machine.get('torch_threads', '?')}{gpu}; torch {machine.get('torch', '?')}, "
        f"Python {machine.get('python', '?')}, {machine.get('platform', '?')}; measured {machine.get('created', '?')}"
    )


def _run_label(results: BenchResults) -> str:
    tag = results.settings.get("tag")
    return f"{results.benchmark} [{tag}]" if tag else results.benchmark


def _targets_section(all_results: Sequence[BenchResults]) -> str:
    """One line per (target, run): tagged runs (other settings) are not pooled with the plain one."""
    summary: dict[tuple[str, str], dict] = {}
    for results in all_results:
        run = _run_label(results)
        for row in results.rows:
            for c in row.checks:
                entry = summary.setdefault(
                    (c.name, run),
                    {"description": c.description or c.name, "run": run, "met": 0, "total": 0, "worst": None},
                )
                entry["total"] += 1
                entry["met"] += int(c.met)
                worse = max if c.op == "<=" else min
                entry["worst"] = c.value if entry["worst"] is None else worse(entry["worst"], c.value)
    if not summary:
        return "No targets were checked."
    lines = [
        [
            e["description"], e["run"], f"{e['met']}/{e['total']} rows", _ratio(e["worst"]),
            "**yes**" if e["met"] == e["total"] else "**no**",
        ]
        for e in summary.values()
    ]  # fmt: skip
    return _table(["target", "run", "met on", "worst ratio", "met everywhere"], lines)


def _reliability_lines(results: BenchResults) -> list[str]:
    rel = results.reliability
    if rel is None:
        return ["", "Reliability: not assessed (file written before the check existed)."]
    if rel.get("reliable"):
        return ["", "Reliability: no flag (spread within limits, no competing load, no oversubscription)."]
    return ["", "**Unreliable measurements**:", *[f"- {w}" for w in rel.get("why", [])]]


def render_report(all_results: Sequence[BenchResults], regenerate: str = REGENERATE) -> str:
    """The whole markdown document for the given benchmark files (in the order given)."""
    parts = [
        "# Benchmarks",
        "",
        "<!-- Generated by lit_nomic.bench.report from the JSON files in results/bench; do not edit by hand. -->",
        f"Regenerate this file: `{regenerate}`",
        "",
        "Variants of a row are timed interleaved (A B C A B C ...) after warm-up, so background load hits them alike;"
        " tables show medians. Ratios are what to compare across machines; absolute numbers describe the machine below.",
        "",
        "## Targets",
        "",
        _targets_section(all_results),
    ]
    for results in all_results:
        title = _TITLES.get(results.benchmark, results.benchmark)
        if results.settings.get("tag"):
            title += f" [{results.settings['tag']}]"
        parts += [
            "",
            f"## {title}",
            "",
            f"Command: `{results.command}`",
            "",
            f"Machine: {_machine_line(results.machine)}"
            + (
                "; allocator: glibc malloc tuned (`--tune-malloc`)"
                if results.settings.get("malloc_tuned")
                else "; allocator: default"
            )
            + (
                "; clock: process CPU time (`--clock cpu`; elapsed medians are in the JSON)"
                if results.settings.get("clock") == "cpu"
                else "; clock: wall (elapsed)"
            ),
        ]
        parts += _reliability_lines(results)
        if results.benchmark in _EXPLAIN:
            parts += ["", _EXPLAIN[results.benchmark]]
        if results.benchmark == "train" and "peak_flops_per_s" in results.settings:
            parts += [
                "",
                f"Measured peak: {_num(results.settings['peak_flops_per_s'] / 1e9)} GFLOP/s "
                f"({results.settings.get('peak_dtype', '?')} {int(results.settings.get('peak_n', 0))}^3 matmul, best of 5).",
            ]
        parts += ["", render_table(results)]
        notes = sorted({n for r in results.rows for n in r.notes})
        if notes:
            parts += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(parts) + "\n"


def result_files(input_dir: Path, benchmark: str) -> list[Path]:
    """``<benchmark>.json`` first, then tagged runs ``<benchmark>-<tag>.json`` by name."""
    plain = input_dir / f"{benchmark}.json"
    tagged = sorted(p for p in input_dir.glob(f"{benchmark}-*.json") if p.is_file())
    return ([plain] if plain.is_file() else []) + tagged


def write_report(input_dir: str | Path, output: str | Path, regenerate: str = REGENERATE) -> Path:
    """Read ``<input_dir>/{moe,encoder,train}[-tag].json`` (those present) and write the markdown atomically."""
    input_dir = Path(input_dir)
    found = [p for name in BENCHMARKS for p in result_files(input_dir, name)]
    if not found:
        raise FileNotFoundError(
            f"{input_dir}: no benchmark results ({', '.join(f'{n}.json' for n in BENCHMARKS)}); "
            "run `python -m lit_nomic.bench moe --output DIR` (or encoder/train) first"
        )
    loaded = []
    for path in found:
        results = load_results(path)
        tag = path.stem[len(results.benchmark) + 1 :]
        if tag:
            results.settings.setdefault("tag", tag)
        loaded.append(results)
    return atomic_write_text(output, render_report(loaded, regenerate))
