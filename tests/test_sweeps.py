"""Sweep files, planning, key checks, and the aggregation into tables with seeds and p-values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from lit_nomic.evaluation.results import build_result, write_result
from lit_nomic.fileio import atomic_write_json
from lit_nomic.sweeps import aggregate
from lit_nomic.sweeps.cli import main as sweep_main
from lit_nomic.sweeps.runner import SweepPaths
from lit_nomic.sweeps.spec import SweepError, check_keys, fit_args, load_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
ABLATIONS = {"moe_vs_dense", "experts", "top_k", "routing", "upcycle_layers"}

BASE = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_steps: 4
  default_root_dir: runs/base
model:
  model:
    preset: tiny-moe
    tokenizer: all-minilm-l6-v2
    overrides: {vocab_size: 30522, num_experts: 4}
data:
  tokenizer: all-minilm-l6-v2
  batch_size: 8
  sources:
    - {name: toy, path: toy.jsonl}
"""


def write_sweep(tmp_path: Path, body: str) -> Path:
    (tmp_path / "base.yaml").write_text(BASE)
    path = tmp_path / "sweep.yaml"
    path.write_text("name: s\nbase: base.yaml\n" + body)
    return path


def test_shipped_sweeps_all_plan_without_gpu_or_slurm(capsys: pytest.CaptureFixture[str]) -> None:
    names = {p.stem for p in SWEEPS}
    assert ABLATIONS <= names
    for path in SWEEPS:
        assert sweep_main(["plan", str(path)]) == 0, path
        out = capsys.readouterr().out
        spec = load_sweep(path)
        runs = spec.runs()
        assert len(runs) >= 3 * len(spec.variants) and len({r.name for r in runs}) == len(runs)
        for run in runs:
            assert run.name in out and f"--trainer.default_root_dir=runs/sweeps/{spec.name}/{run.name}" in out
        if path.stem in ABLATIONS:  # each ablation also plans at the paper's scale
            assert sweep_main(["plan", str(path), "--profile", "gpu"]) == 0, path
            capsys.readouterr()


def test_expansion_names_layering_and_hash(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        """
seeds: [0, 1]
overrides: {trainer.max_steps: 3}
variants:
  a: {}
  b: {model.model.overrides.top_k: 1, trainer.max_steps: 5}
grid: {model.model.overrides.num_experts: [4, 8]}
baseline: a
""",
    )
    spec = load_sweep(path)
    runs = spec.runs()
    assert [r.name.rsplit("_", 1)[0] for r in runs] == [
        "a_num_experts-4_s0",
        "a_num_experts-4_s1",
        "a_num_experts-8_s0",
        "a_num_experts-8_s1",
        "b_num_experts-4_s0",
        "b_num_experts-4_s1",
        "b_num_experts-8_s0",
        "b_num_experts-8_s1",
    ]
    b = runs[4]
    # variant beats sweep-wide overrides; grid and seed keys come last
    assert b.overrides["trainer.max_steps"] == 5 and b.overrides["model.model.overrides.num_experts"] == 4
    assert b.overrides["seed_everything"] == 0 and b.overrides["data.seed"] == 0
    assert b.group == "b_num_experts-4"
    # deterministic names; the hash follows the resolved config (a changed base gives new runs)
    assert [r.name for r in load_sweep(path).runs()] == [r.name for r in runs]
    (tmp_path / "base.yaml").write_text(BASE.replace("batch_size: 8", "batch_size: 16"))
    assert all(x.name != y.name for x, y in zip(load_sweep(path).runs(), runs, strict=False))
    args = fit_args(spec, b, Path("runs/x"))
    assert "--model.model.overrides.top_k=1" in args and args[-1] == "--trainer.default_root_dir=runs/x"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("seedz: [0]\n", "unknown key 'seedz'"),
        ("variants: {a: {}}\nbaseline: b\n", "baseline 'b' is not a variant"),
        ("zip: {a.b: [1, 2], c.d: [1]}\n", "zip lists differ in length"),
        ("eval: {dataa: x}\n", "unknown key eval.'dataa'"),
        ("seeds: []\n", "seeds must be a non-empty list"),
        ("grid: {trainer.max_steps: 3}\n", "grid.trainer.max_steps must be a non-empty list"),
    ],
)
def test_bad_sweep_files_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(SweepError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_sweep(write_sweep(tmp_path, body))


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("{trainer.max_stepz: 3}", "max_stepz"),
        ("{model.model.overrides.num_expertz: 3}", "EncoderConfig has no field 'num_expertz'"),
        ("{model.model.overrides: {topk: 1}}", "EncoderConfig has no field 'topk'"),
        ("{trainer.max_steps: many}", "trainer.max_steps"),
    ],
)
def test_keys_missing_from_the_training_config_fail_at_plan_time(
    tmp_path: Path, variant: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_sweep(tmp_path, f"variants:\n  a: {variant}\n")
    with pytest.raises(SweepError, match=message) as info:
        check_keys(load_sweep(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert sweep_main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.split("'")[0] in err[0]


# -- aggregation ------------------------------------------------------------------------------------


def fake_record(paths: SweepPaths, run, ndcg_per_query: dict[str, float], spearman: float) -> None:  # noqa: ANN001
    record = paths.record_dir(run)
    retrieval = build_result(
        model_name=run.name,
        model_hash="0" * 12,
        dataset="toy",
        task_type="retrieval",
        split="test",
        language=None,
        metrics={"ndcg@10": float(np.mean(list(ndcg_per_query.values())))},
        per_query={q: {"ndcg@10": v} for q, v in ndcg_per_query.items()},
        counts={"num_documents": 100},
        timings={"encode_corpus_s": 4.0},
    )
    write_result(record / "eval", retrieval)
    sts = build_result(
        model_name=run.name,
        model_hash="0" * 12,
        dataset="sts",
        task_type="sts",
        split="test",
        language="en",
        metrics={"spearman": spearman},
    )
    write_result(record / "eval", sts)
    atomic_write_json(
        record / "run.json",
        {
            "status": "finished",
            "config_hash": run.config_hash,
            "parameters": {"total": 30_000_000, "active": 20_000_000},
            "train_tokens_per_s": 1000.0,
            "encode_docs_per_s": 25.0,
        },
    )


def test_table_mean_std_and_paired_test_match_scipy(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        "seeds: [0, 1, 2]\nvariants: {base: {}, better: {trainer.max_steps: 5}, same: {trainer.max_steps: 6}}\nbaseline: base\n",
    )
    spec = load_sweep(path)
    paths = SweepPaths(tmp_path / "runs", tmp_path / "records")
    rng = np.random.default_rng(0)
    queries = [f"q{i}" for i in range(60)]
    base_scores = {s: dict(zip(queries, rng.uniform(0.2, 0.8, 60), strict=False)) for s in range(3)}
    runs = spec.runs()
    spearmans = {}
    for run in runs[:-1]:  # the last run of "same" is not finished: n=2 there, and it is listed
        shift = {"base": 0.0, "better": 0.1, "same": 0.0}[run.variant]
        scores = {q: v + shift + rng.normal(0, 0.01) for q, v in base_scores[run.seed].items()}
        spearmans[run.name] = 0.5 + 0.01 * run.seed + shift
        fake_record(paths, run, scores, spearmans[run.name])
    table = aggregate.collect(spec, paths, runs)
    rows = {r.group: r for r in table.rows}
    assert set(rows) == {"base", "better", "same"} and table.missing == [runs[-1].name]
    assert rows["same"].cells["toy"].n == 2 and rows["base"].cells["toy"].n == 3
    sts = [spearmans[r.name] for r in runs if r.variant == "better"]
    assert rows["better"].cells["sts/en"].mean == pytest.approx(np.mean(sts))
    assert rows["better"].cells["sts/en"].std == pytest.approx(np.std(sts, ddof=1))
    assert "sts/en" not in rows["better"].comparisons  # no per-query scores: no test
    better = rows["better"].comparisons["toy"]
    assert better.significant and better.delta == pytest.approx(0.1, abs=0.01) and better.queries == 60
    assert not rows["same"].comparisons["toy"].significant
    # the p-value is scipy's paired randomisation test on seed-averaged per-query scores
    x = aggregate.seed_mean(rows["same"].per_query["toy"])
    y = aggregate.seed_mean(rows["base"].per_query["toy"])
    q = sorted(x)
    ref = stats.permutation_test(
        (np.array([x[k] for k in q]), np.array([y[k] for k in q])),
        lambda u, v, axis: np.mean(u, axis=axis) - np.mean(v, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=aggregate.N_RESAMPLES,
        random_state=0,
    )
    assert rows["same"].comparisons["toy"].p_value == pytest.approx(ref.pvalue)

    written = aggregate.write_outputs(table, tmp_path / "out", "lit-nomic sweep table sweep.yaml")
    md = written["markdown"].read_text()
    assert "| better | 3 | 30.0M / 20.0M |" in md and "(n.s.)" in md and runs[-1].name in md
    assert md.count("| better ") == 2  # one row in the main table, one in the significance table
    csv_rows = written["csv"].read_text().splitlines()
    assert len([r for r in csv_rows if r.startswith("better,")]) == 2  # one per column, no duplicates
    assert written["plot"].stat().st_size > 0 and "\\pm" in written["latex"].read_text()


def test_records_not_in_the_plan_are_listed_not_mixed_in(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, "seeds: [0]\n")
    spec = load_sweep(path)
    paths = SweepPaths(tmp_path / "runs", tmp_path / "records")
    (run,) = spec.runs()
    fake_record(paths, run, {"q1": 0.5, "q2": 0.6}, 0.5)
    stale = paths.records / "runs" / "base_s0_000000"
    stale.mkdir(parents=True)
    (stale / "run.json").write_text(json.dumps({"status": "finished", "config_hash": "0"}))
    table = aggregate.collect(spec, paths, spec.runs())
    assert [r.group for r in table.rows] == ["base"] and table.ignored == ["base_s0_000000"]


def test_table_include_adds_another_sweeps_variant_compared_with_the_baseline(tmp_path: Path) -> None:
    other_path = write_sweep(tmp_path, "seeds: [0, 1]\nvariants: {teacher: {trainer.max_steps: 7}, x: {}}\n")
    other_path.rename(tmp_path / "other.yaml")
    (tmp_path / "other.yaml").write_text(
        "name: other\n" + (tmp_path / "other.yaml").read_text().split("\n", 1)[1]
    )
    path = tmp_path / "main.yaml"
    path.write_text(
        "name: main\nbase: base.yaml\nseeds: [0, 1]\nvariants: {base: {}}\nbaseline: base\n"
        "table: {include: [{sweep: other.yaml, variant: teacher, label: moe-teacher}]}\n"
    )
    spec, other = load_sweep(path), load_sweep(tmp_path / "other.yaml")
    paths = SweepPaths(tmp_path / "runs", tmp_path / "records" / "main")
    other_paths = SweepPaths(tmp_path / "runs", tmp_path / "records" / "other")
    queries = [f"q{i}" for i in range(40)]
    rng = np.random.default_rng(1)
    base = dict(zip(queries, rng.uniform(0.2, 0.6, 40), strict=True))
    for run in spec.runs():
        fake_record(paths, run, base, 0.5)
    for run in other.runs():  # only the teacher's records are read; x's are not even present
        if run.variant == "teacher":
            fake_record(other_paths, run, {q: v + 0.2 for q, v in base.items()}, 0.6)
    table = aggregate.collect(spec, paths, spec.runs())
    rows = {r.group: r for r in table.rows}
    assert list(rows) == ["base", "moe-teacher (other)"] and table.missing == []
    teacher = rows["moe-teacher (other)"]
    assert teacher.cells["toy"].n == 2 and teacher.cells["toy"].mean == pytest.approx(
        np.mean(list(base.values())) + 0.2
    )
    assert teacher.comparisons["toy"].delta == pytest.approx(0.2) and teacher.comparisons["toy"].significant
    md = aggregate.write_outputs(table, tmp_path / "out", "cmd")["markdown"].read_text()
    assert "| moe-teacher (other) | 2 |" in md


def test_table_pairs_test_two_variants_against_each_other(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        "seeds: [0, 1, 2]\nvariants: {base: {}, a: {trainer.max_steps: 5}, b: {trainer.max_steps: 6}}\n"
        "baseline: base\ntable: {pairs: [[a, b]]}\n",
    )
    spec = load_sweep(path)
    assert spec.name == "s" and spec.baseline == "base"  # the pair check leaves the sweep's own fields alone
    paths = SweepPaths(tmp_path / "runs", tmp_path / "records")
    rng = np.random.default_rng(2)
    queries = [f"q{i}" for i in range(50)]
    shift = {"base": 0.0, "a": 0.15, "b": 0.1}
    for run in spec.runs():
        fake_record(paths, run, {q: 0.3 + shift[run.variant] + rng.normal(0, 0.05) for q in queries}, 0.5)
    table = aggregate.collect(spec, paths, spec.runs())
    (pair,) = table.pairs
    rows = {r.group: r for r in table.rows}
    assert (pair.first.group, pair.second.group) == ("a", "b")
    expected = aggregate.paired_test(rows["a"].per_query["toy"], rows["b"].per_query["toy"])
    assert pair.comparisons["toy"] == expected and expected.delta == pytest.approx(0.05, abs=0.02)
    written = aggregate.write_outputs(table, tmp_path / "out", "cmd")
    md = written["markdown"].read_text()
    assert f"| a vs b | – | {100 * expected.delta:+.2f}, p={expected.p_value:.3g} |" in md
    assert sum(line.startswith("a vs b,pair,toy,") for line in written["csv"].read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("include", "message"),
    [
        ("[{sweep: nope.yaml, variant: a}]", "table.include[0].sweep 'nope.yaml' does not exist"),
        ("[{sweep: sweep.yaml}]", "table.include[0] needs 'variant'"),
        ("[{sweep: sweep.yaml, variant: base, label: base}]", "label 'base' is also a variant"),
        ("[{sweep: sweep.yaml, variant: base, colour: red}]", "unknown key table.include[0].'colour'"),
    ],
)
def test_bad_table_include_names_the_entry(tmp_path: Path, include: str, message: str) -> None:
    path = write_sweep(tmp_path, f"table: {{include: {include}}}\n")
    with pytest.raises(SweepError, match=re.escape(message)):
        load_sweep(path)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ("[[base, nope]]", "table.pairs[0]: 'nope' is not a variant or include label"),
        ("[[base]]", "table.pairs[0] must be two different variant names"),
        ("[[base, base]]", "table.pairs[0] must be two different variant names"),
    ],
)
def test_bad_table_pairs_name_the_entry(tmp_path: Path, pairs: str, message: str) -> None:
    path = write_sweep(
        tmp_path, f"variants: {{base: {{}}, x: {{trainer.max_steps: 5}}}}\ntable: {{pairs: {pairs}}}\n"
    )
    with pytest.raises(SweepError, match=re.escape(message)):
        load_sweep(path)
