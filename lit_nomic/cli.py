"""The ``lit-nomic`` command line.

``fit``/``validate``/``test`` are LightningCLI (every hyper-parameter comes from the typed signatures
of the LightningModule, the DataModule and their config dataclasses); the other subcommands are plain
functions whose signatures and docstrings jsonargparse turns into parsers and ``--help`` text.
Heavy imports happen inside each command so that ``lit-nomic --help`` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from lit_nomic.config import PRESETS
from lit_nomic.fileio import atomic_write_bytes

PASSTHROUGH_COMMANDS = {
    "bench": "benchmarks (moe, encoder, train, export, report, profile) printing side-by-side ratios",
    "sweep": "ablation sweeps: plan, run (local or SLURM), status, table with seeds and p-values",
}

LIGHTNING_COMMANDS = {
    "fit": "train a model: lit-nomic fit -c experiments/quickstart.yaml",
    "validate": "run the validation loop of a config (and checkpoint) once (needs data.val_sources)",
}


PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]  # jsonargparse lists the choices


def info(preset: PresetName | None = None, config: str | None = None, seq_len: int = 512) -> dict:
    """Print total and active (per token) parameter counts and FLOPs per token as JSON.

    Counts are computed on the meta device, so even the 475M-parameter preset costs no memory.

    Args:
        preset: a preset name (see ``lit_nomic.config.PRESETS``).
        config: a ``config.json`` of a saved model (instead of a preset).
        seq_len: sequence length used for the attention FLOPs.
    """
    from lit_nomic.config import EncoderConfig
    from lit_nomic.config import preset as load_preset
    from lit_nomic.model.params import count_parameters

    if (preset is None) == (config is None):
        raise SystemExit("lit-nomic info: give exactly one of --preset NAME or --config PATH")
    cfg = load_preset(preset) if preset is not None else EncoderConfig.load(config)
    counts = count_parameters(cfg, seq_len=seq_len)
    report = {"preset": preset, "config": config, **counts}
    print(json.dumps(report, indent=2))
    return report


def encode(
    model: str,
    input: str,
    output: str,
    prefix: str | None = None,
    kind: str = "document",
    field: str = "text",
    batch_size: int = 64,
    max_length: int | None = None,
    matryoshka_dim: int | None = None,
) -> None:
    """Embed texts into a float32 ``.npy`` matrix (one L2-normalised row per input text, in input order).

    Args:
        model: a model folder (ours or Hugging Face / sentence-transformers: config.json plus
            model.safetensors, read as JSON and safetensors; a pytorch_model.bin only as tensors),
            a packaged name, or a training checkpoint (a .ckpt file, or a sharded folder with meta.pt
            and .metadata) read with an allow-listing unpickler: tensors, numbers, strings and
            lit_nomic's config classes only; any other pickled object is refused, never run. A folder
            with config.json is always loaded as a model folder.
        input: a ``.txt`` file (one text per line; row i of the output is line i, so an empty line
            is an error naming file:line, as an empty text has no meaningful embedding) or a
            ``.jsonl`` file (the ``field`` of each object; blank lines are not records); ``.gz``
            compressed too (``.txt.gz``, ``.jsonl.gz``). Input must be UTF-8.
        output: the ``.npy`` file to write (atomically); checked before encoding starts. Nothing is
            written if any embedding is NaN/inf (a diverged model).
        prefix: text prepended to every input; default: the model's query or document prefix (see ``kind``).
        kind: ``query`` or ``document``: which of the model's prefixes to use when ``prefix`` is not given.
        field: the JSONL field holding the text.
        batch_size: texts per forward pass (batches are formed after sorting by length).
        max_length: truncate inputs to this many tokens (default: the model's limit).
        matryoshka_dim: keep the leading dims and re-normalise.
    """
    import io

    import numpy as np

    if kind not in ("query", "document"):
        raise SystemExit(f"lit-nomic encode: --kind must be query or document, got {kind!r}")
    _check_output(Path(output))  # before minutes of encoding, not after
    texts = _read_texts(Path(input), field)
    embedder = load_any_model(model)
    if prefix is None:
        prefix = embedder.query_prefix if kind == "query" else embedder.document_prefix
    emb = embedder.encode(
        texts,
        prefix=prefix,
        batch_size=batch_size,
        show_progress=True,
        max_length=max_length,
        matryoshka_dim=matryoshka_dim,
    )
    finite = emb.isfinite().all(dim=-1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise SystemExit(
            f"lit-nomic encode: {len(bad)} of {len(texts)} embeddings are NaN/inf (first: row {bad[0]}); "
            f"the model {model} is broken (a diverged run?); nothing written to {output}"
        )
    buf = io.BytesIO()
    np.save(buf, emb.float().cpu().numpy())
    atomic_write_bytes(Path(output), buf.getvalue())
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {output}")


def evaluate(
    model: str,
    data: str,
    split: str = "test",
    output: str = "runs/eval",
    matryoshka_dim: int | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    languages: list[str] | None = None,
    cache_dir: str | None = ".cache/embeddings",
    search: Literal["torch", "faiss"] = "torch",
    data_root: str | None = None,
    name: str | None = None,
    device: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
) -> list[dict]:
    """Evaluate a model on retrieval (BEIR, MIRACL, XQuAD-R), STS or bitext data; print the table.

    Writes one JSON per dataset, split, language and setting into ``output`` (the input of
    ``lit-nomic table``); the file name ends in a short hash of every score-changing setting
    (prefixes, ``max_length``, dim, search ...), so different settings never overwrite each other.
    Bad input (a missing folder, a malformed line, a truncated ``.gz``) ends with one line naming the
    file and line. Named BEIR datasets missing from the data root are downloaded (into
    ``$LIT_NOMIC_CACHE``, default ``~/.cache/lit_nomic``); what cannot be (offline, or MIRACL, which
    is fetched by hand) ends with one line naming the missing folder and what to fetch.

    Args:
        model: our saved folder or a Hugging Face / sentence-transformers folder (config.json plus
            safetensors, never unpickled), a packaged name such as ``all-minilm-l6-v2``, or a training
            checkpoint (.ckpt, or a sharded folder with meta.pt) read as data only: pickled objects
            other than tensors and lit_nomic's config classes are refused, never run.
        data: a dataset folder (layout auto-detected), a named dataset (``scifact``, ``xquad_r``,
            ``stsb_multi_mt``, ``tatoeba``, ``miracl``, any BEIR folder name such as ``quora``), a
            named suite of the Nomic Embed v2 paper (``beir-paper``: the 15 BEIR datasets of MTEB
            retrieval, CQADupStack averaged over its 12 forums; ``miracl-dev``: MIRACL dev in 16
            languages; both fix their splits) or a YAML listing several.
        split: the qrels / data split.
        output: folder for the result JSON files.
        matryoshka_dim: truncate embeddings to this many dims and re-normalise.
        query_prefix: override the model's query prefix.
        document_prefix: override the model's document prefix.
        batch_size: texts per forward pass.
        max_length: truncate texts to this many tokens (default: the model's limit).
        languages: restrict multilingual suites to these languages.
        cache_dir: embedding cache keyed by model hash + dataset (None disables it).
        search: exact search backend.
        data_root: the data root (default ``$LIT_NOMIC_DATA``).
        name: model name in the result files and tables (default: the model's own).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: ``cuda`` when available, else ``cpu``).
        dtype: ``float32``, ``bfloat16`` or ``float16``: the weights are cast to it. It changes the
            scores, so a non-float32 dtype is part of each result's identity (``settings.dtype``) and
            file name; float32 results keep the ids they always had.
    """
    import csv

    from lit_nomic.evaluation.run import evaluate as run_evaluation
    from lit_nomic.evaluation.run import format_table

    if max_length is not None and max_length < 1:
        raise SystemExit(f"lit-nomic eval: error: --max_length must be positive, got {max_length}")
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError:
        raise SystemExit(
            f"lit-nomic eval: error: --device {device!r} is not a device (cpu, cuda, cuda:N)"
        ) from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"lit-nomic eval: error: --device {device} but torch sees no CUDA device")
    embedder = load_any_model(model)
    if name:
        embedder.name = name
    if max_length:
        embedder.max_seq_length = max_length  # recorded in each result (max_length) and cache key
    try:
        results = run_evaluation(
            embedder,
            data,
            split=split,
            output_dir=output,
            matryoshka_dim=matryoshka_dim,
            query_prefix=query_prefix,
            document_prefix=document_prefix,
            batch_size=batch_size,
            cache_dir=cache_dir,
            languages=languages,
            data_root=data_root,
            search_backend=search,
            show_progress=True,
            device=device,
            dtype=dtype,
        )
    except (ValueError, OSError, EOFError, csv.Error) as err:  # loaders name the file and line
        print(f"lit-nomic eval: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    print(format_table(results))
    return results


def table(
    results: str,
    output: str = "results",
    stem: str = "results",
    metric: dict[str, str] | None = None,
    command: str | None = None,
) -> dict[str, str]:
    """Collect result JSONs into Markdown, CSV and LaTeX tables plus PNG charts.

    Rows are models, columns datasets plus the average, best per column in bold. Every table
    records the command that regenerates it. Identical re-runs keep the newest (with a note);
    different models or settings sharing a name get separate rows labelled by what differs (e.g.
    ``name [#model-hash]``, ``name [max_length=128]``). A bad results folder or file ends with
    one line naming it.

    Args:
        results: folder of result JSONs written by ``lit-nomic eval`` (searched recursively).
        output: folder for the tables and plots.
        stem: file-name stem of the outputs.
        metric: main metric per task type, e.g. ``{"retrieval": "ndcg@10"}`` (defaults: ndcg@10,
            spearman, f1).
        command: the command line recorded in the tables (default: this invocation).
    """
    from lit_nomic.evaluation.report import write_report

    cmd = command or "lit-nomic " + " ".join(
        sys.argv[1:] if sys.argv[1:2] == ["table"] else ["table", results]
    )
    try:
        paths = write_report(
            results, output, command=cmd, metric=metric, stem=stem, note=lambda m: print(m, file=sys.stderr)
        )
    except (ValueError, OSError) as err:  # messages name the file (and line) or field
        print(f"lit-nomic table: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return {k: str(v) for k, v in paths.items()}


def export(
    model: str,
    format: Literal["sentence-transformers", "nomic", "onnx"],
    output: str,
    quantize: Literal["int8"] | None = None,
) -> str:
    """Export a trained model for use outside lit_nomic.

    Formats: ``sentence-transformers`` (a folder ``SentenceTransformer(DIR)`` loads offline: a plain
    BertModel for BERT-compatible dense models, else lit_nomic's own input module, which
    sentence-transformers >= 6 loads with ``trust_remote_code=True``), ``nomic`` (the released
    nomic-embed-text-v2-moe layout: NomicBERT names, config.json fields and model_type) and ``onnx``
    (one graph, dynamic batch and length, routing in the graph; checked against PyTorch before it is
    written). Every folder gets a README.md model card and is written as a whole (0644 files). A
    model a format cannot express is refused in one line and nothing is written.

    Args:
        model: a model folder, a packaged name, a training checkpoint (.ckpt or sharded folder, read
            as data only) or a run folder (``runs/<run>`` or ``runs/sweeps/<sweep>/<run>``: its
            ``model/``, with ``config.yaml`` and ``eval/`` feeding the model card).
        format: sentence-transformers, nomic or onnx.
        output: the folder to write (an existing one is replaced only if it holds export files only).
        quantize: ``int8`` adds ``model_int8.onnx`` (onnxruntime dynamic quantisation; onnx only).
    """
    from lit_nomic.export.api import export_model

    try:
        target = export_model(model, format, output, quantize=quantize)
    except ImportError as err:
        raise SystemExit(
            f"lit-nomic export: error: {err} (pip install 'lit-nomic[onnx]' for --format onnx)"
        ) from err
    except FileExistsError as err:
        raise SystemExit(f"lit-nomic export: error: {err}") from err
    print(f"exported {model} as {format} to {target}")
    return str(target)


def load_any_model(model: str):  # noqa: ANN201 - returns an Embedder; imported lazily
    """An Embedder from a folder, a packaged name, a Hub id, or a Lightning checkpoint.

    A folder with ``config.json`` is a model folder (JSON + safetensors) even if it also holds
    checkpoint files; only a ``.ckpt`` file or a folder with ``meta.pt``/``.metadata`` and no
    ``config.json`` is read as a checkpoint, with the allow-listing unpickler of
    :mod:`lit_nomic.training.export` (a crafted pickle is refused, never run).
    """
    from lit_nomic.model.embedder import Embedder

    path = Path(model).expanduser()
    is_model_folder = path.is_dir() and (path / "config.json").is_file()
    is_sharded = path.is_dir() and ((path / "meta.pt").exists() or (path / ".metadata").exists())
    if not is_model_folder and (model.endswith(".ckpt") or is_sharded):
        from lit_nomic.training.export import load_checkpoint_embedder

        return load_checkpoint_embedder(model)
    return Embedder.from_pretrained(model)


def _read_texts(path: Path, field: str) -> list[str]:
    """The texts of ``path``, one per output row; every error names the file (and line).

    ``.txt``: one text per line, every line kept so that row i is line i; an empty line is an
    error (an empty text has no meaningful embedding, and dropping it would shift every later row).
    ``.jsonl``: the ``field`` of each object. ``.gz``: either, compressed (``.gz`` alone is JSONL).
    """
    from lit_nomic.data.formats import field_str, iter_jsonl, iter_lines

    if not path.exists():
        raise SystemExit(f"lit-nomic encode: input file {path} does not exist")
    if path.is_dir():
        raise SystemExit(f"lit-nomic encode: input {path} is a folder, expected a .txt or .jsonl file")
    name = path.name.lower()
    jsonl = name.endswith((".jsonl", ".jsonl.gz")) or (name.endswith(".gz") and not name.endswith(".txt.gz"))
    texts: list[str] = []
    try:
        if jsonl:
            return [field_str(obj, field, path, lineno) for lineno, obj in iter_jsonl(path)]
        for lineno, line in iter_lines(path):
            text = line.rstrip("\r\n")
            if not text.strip():
                raise SystemExit(
                    f"lit-nomic encode: {path}:{lineno}: empty line; every line of a .txt input is one "
                    "text (row i of the output is line i), so remove it or use .jsonl"
                )
            texts.append(text)
    except (ValueError, OSError, EOFError) as err:  # the readers name file and line
        message = str(err) if str(path) in str(err) else f"{path}: {err}"
        raise SystemExit(f"lit-nomic encode: {message}") from err
    return texts


def _check_output(output: Path) -> None:
    """Fail in one line before encoding if ``output`` cannot be written (a folder, a file as parent,
    a read-only folder), instead of losing every embedding to a traceback afterwards."""
    import tempfile

    if output.is_dir():
        raise SystemExit(f"lit-nomic encode: output {output} is a folder; give a .npy file path")
    ancestor = output.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SystemExit(f"lit-nomic encode: cannot write {output}: {ancestor} is not a folder")
    try:  # a probe file in the nearest existing folder (atomic_write creates any missing ones)
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=ancestor)
    except OSError as err:
        raise SystemExit(f"lit-nomic encode: cannot write {output}: {err.strerror or err}") from err
    os.close(fd)
    os.unlink(probe)


def _commands() -> dict[str, tuple[Callable, str]]:
    from lit_nomic.curation.cli import filter_pairs, mine  # light: heavy imports happen inside
    from lit_nomic.model.merge import merge_experts_command

    return {
        "info": (info, "parameter counts (total/active) and FLOPs per token of a preset, as JSON"),
        "encode": (encode, "embed a .txt/.jsonl file of texts into a .npy matrix"),
        "table": (table, "collect eval result JSONs into Markdown/CSV/LaTeX tables and PNG plots"),
        "eval": (
            evaluate,
            "evaluate a model on BEIR/MIRACL/XQuAD-R retrieval, STS or bitext; write result JSONs",
        ),
        "export": (export, "export a model as a sentence-transformers folder, the NomicBERT layout or ONNX"),
        "filter": (filter_pairs, "consistency filtering: keep pairs whose document ranks top-k in its chunk"),
        "mine": (mine, "hard-negative mining with a teacher: negatives below a margin of the positive"),
        "merge-experts": (merge_experts_command, "average each MoE layer's experts into one dense FFN"),
    }


def _usage() -> str:
    lines = [
        "usage: lit-nomic COMMAND [options]   (lit-nomic COMMAND --help for each)",
        "",
        "Train, evaluate and benchmark sparse Mixture-of-Experts text-embedding models.",
        "",
        "commands:",
    ]
    entries = {**LIGHTNING_COMMANDS, **{k: v[1] for k, v in _commands().items()}, **PASSTHROUGH_COMMANDS}
    width = max(map(len, entries))
    lines += [f"  {name.ljust(width)}  {text}" for name, text in entries.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    command, rest = args[0], args[1:]
    if command != "bench" and os.environ.get("LIT_NOMIC_TUNE_MALLOC", "0") == "1":
        # Opt-in: keep large freed CPU tensors in the heap instead of re-faulting fresh pages each
        # step (lit_nomic/bench/allocator.py: 1.2x faster encoding here), at the price of a larger
        # resident heap, which a long CPU fit + evaluation was seen to grow to several GB.
        from lit_nomic.bench.allocator import tune_glibc_malloc

        tune_glibc_malloc()
    if command == "test":  # LightningCLI's test loop: this project has none
        print(
            "lit-nomic test: there is no test loop; evaluate a trained model with "
            "lit-nomic eval --model RUN_DIR/model --data DATA",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if command in LIGHTNING_COMMANDS:
        from lit_nomic.training.cli import run_lightning_cli

        run_lightning_cli([command, *rest])
        return
    if command == "sweep":
        from lit_nomic.sweeps.cli import main as sweep_main

        raise SystemExit(sweep_main(rest))
    if command == "bench":
        from lit_nomic.bench.cli import main as bench_main

        raise SystemExit(bench_main(rest))
    commands = _commands()
    if command not in commands:
        print(f"lit-nomic: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    import inspect

    from jsonargparse import CLI, ArgumentParser

    func = commands[command][0]
    try:
        if "config" in inspect.signature(func).parameters:
            # jsonargparse's CLI drops a parameter named ``config`` (its config-file key) before the
            # call, so ``lit-nomic info --config PATH`` arrived as config=None: parse it ourselves.
            parser = ArgumentParser(
                prog=f"lit-nomic {command}", description=(inspect.getdoc(func) or "").split("\n\n")[0]
            )
            parser.add_function_arguments(func, as_group=False)
            func(**parser.parse_args(rest).as_dict())
        else:
            CLI(func, args=rest, prog=f"lit-nomic {command}", as_positional=False)
    except (ValueError, FileNotFoundError) as err:  # bad input: the message names the file/field
        print(f"lit-nomic {command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":  # python -m lit_nomic.cli
    main()
