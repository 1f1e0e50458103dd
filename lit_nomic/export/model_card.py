"""The README.md model card written into every exported folder.

Architecture and total/active parameters come from the model itself
(:func:`lit_nomic.model.params.count_parameters`); the training data and recipe from the run's
resolved ``config.yaml`` and the evaluation table from the run's ``eval/`` JSONs, when the model came
out of a run folder. Nothing is invented: a section without a source says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lit_nomic.model.embedder import Embedder
from lit_nomic.model.params import count_parameters

__all__ = ["eval_rows", "model_card"]


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def eval_rows(run_dir: Path | None) -> list[dict[str, Any]]:
    """One row per evaluation JSON under ``run_dir/eval`` (dataset, split, metric, score, sizes)."""
    if run_dir is None or not (run_dir / "eval").is_dir():
        return []
    rows = []
    for path in sorted((run_dir / "eval").rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or "dataset" not in data or "main_score" not in data:
            continue
        counts = data.get("counts") or {}
        rows.append(
            {
                "dataset": data["dataset"],
                "split": data.get("split"),
                "language": data.get("language"),
                "metric": data.get("main_metric"),
                "score": data["main_score"],
                "queries": counts.get("num_queries"),
                "documents": counts.get("num_documents"),
                "file": str(path.relative_to(run_dir)),
            }
        )
    return rows


def _recipe(config: dict[str, Any]) -> list[str]:
    lines = []
    model = (config.get("model") or {}) if isinstance(config.get("model"), dict) else {}
    spec = model.get("model") or {}
    if isinstance(spec, dict):
        if spec.get("init_from"):
            lines.append(f"- initialised from `{spec['init_from']}`")
        if spec.get("preset"):
            lines.append(f"- preset `{spec['preset']}`")
        if spec.get("overrides"):
            pairs = ", ".join(f"{k}={v}" for k, v in spec["overrides"].items())
            lines.append(f"- architecture overrides: {pairs}")
    data = config.get("data") or {}
    if isinstance(data, dict):
        sources = data.get("sources") or []
        names = [
            f"{s.get('name', '?')} ({s.get('path', '?')}, {s.get('split', 'train')})"
            for s in sources
            if isinstance(s, dict)
        ]
        if names:
            lines.append(f"- training data: {'; '.join(names)}")
        if data.get("weighting"):
            lines.append(f"- source weighting: {data['weighting']}")
        if data.get("batch_size"):
            lines.append(f"- batch size: {data['batch_size']}")
    trainer = config.get("trainer") or {}
    if isinstance(trainer, dict):
        for key in ("max_steps", "max_epochs", "precision"):
            if trainer.get(key) not in (None, -1):
                lines.append(f"- {key}: {trainer[key]}")
    for block in ("loss", "optim"):
        values = model.get(block)
        if isinstance(values, dict) and values:
            lines.append(f"- {block}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    if "seed_everything" in config:
        lines.append(f"- seed: {config['seed_everything']}")
    return lines


def model_card(embedder: Embedder, run_dir: Path | None, fmt: str, source: str) -> str:
    """Markdown text of the model card for ``embedder`` exported as ``fmt`` from ``source``."""
    c = embedder.config
    counts = count_parameters(c)
    name = embedder.name
    lines = [
        "---",
        "library_name: sentence-transformers" if fmt != "onnx" else "library_name: onnx",
        "pipeline_tag: sentence-similarity",
        "tags:",
        "- sentence-transformers",
        "- feature-extraction",
        "- lit-nomic",
        *(["- mixture-of-experts"] if c.is_moe else []),
        "---",
        "",
        f"# {name}",
        "",
        f"A text-embedding model trained with lit_nomic, exported as `{fmt}` from `{Path(source).name}`.",
        "",
        "## Usage",
        "",
    ]
    if fmt == "onnx":
        lines += [
            "```python",
            "import onnxruntime as ort",
            "from transformers import AutoTokenizer",
            "",
            "tok = AutoTokenizer.from_pretrained(FOLDER)",
            'session = ort.InferenceSession(f"{FOLDER}/model.onnx")',
            f'batch = tok(["{c.query_prefix}what is a mixture of experts?"], padding=True, return_tensors="np")',
            'emb = session.run(None, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})[0]',
            "```",
            "",
            "The graph takes `input_ids` and `attention_mask` (int64, dynamic batch and length) and returns",
            "pooled, L2-normalised `sentence_embedding` rows. `model_int8.onnx`, when present, is the dynamic",
            "int8 quantisation (looser parity: see `onnx_config.json`).",
        ]
    else:
        trust = ", trust_remote_code=True" if c.is_moe or fmt == "nomic" else ""
        lines += [
            "```python",
            "from sentence_transformers import SentenceTransformer",
            "",
            f"model = SentenceTransformer(FOLDER{trust})",
            'queries = model.encode(["what is a mixture of experts?"], prompt_name="query")',
            'docs = model.encode(["Sparse experts route each token to k of E FFNs."], prompt_name="document")',
            "print(model.similarity(queries, docs))",
            "```",
            "",
        ]
        if fmt == "nomic":
            lines.append(
                "The folder follows the released nomic-embed-text-v2-moe layout (NomicBERT remote code); "
                "`lit_nomic.Embedder.from_pretrained(FOLDER)` loads it without remote code."
            )
        elif c.is_moe:
            lines.append(
                "The input module `lit_nomic.export.st_module.LitNomicTransformer` comes from the installed "
                "`lit-nomic` package (`pip install lit-nomic`); nothing is downloaded. sentence-transformers >= 6 "
                "asks `trust_remote_code=True` for any module class outside its own namespace."
            )
        else:
            lines.append("A plain `BertModel` with mean/CLS pooling and normalisation: no custom code.")
    lines += [
        "",
        f"Prompts: query `{c.query_prefix!r}`, document `{c.document_prefix!r}`; "
        f"max sequence length {embedder.max_seq_length} tokens; cosine similarity.",
        "",
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        f"| layers | {c.num_layers} |",
        f"| hidden size | {c.hidden_size} |",
        f"| attention heads | {c.num_heads} |",
        f"| FFN size | {c.ffn_size} |",
        f"| positions | {c.position_embedding} (max {c.max_position_embeddings}) |",
        f"| normalisation | {c.norm_position}-LN |",
        f"| pooling | {c.pooling}, L2-normalised |",
        f"| vocabulary | {c.vocab_size} |",
    ]
    if c.is_moe:
        lines += [
            f"| MoE layers | {', '.join(map(str, c.moe_layer_indices))} |",
            f"| experts | {c.num_experts} (top-{c.top_k}, {c.router} router"
            f"{', renormalised' if c.router_renormalize else ''}), expert FFN {c.expert_ffn} |",
        ]
    lines += [
        f"| total parameters | {_fmt_int(counts['total'])} |",
        f"| active parameters per token | {_fmt_int(counts['active'])} |",
        f"| embedding dimension | {c.hidden_size}"
        + (f" (Matryoshka: {', '.join(map(str, c.matryoshka_dims))})" if c.matryoshka_dims else "")
        + " |",
        "",
        "## Training",
        "",
    ]
    config_path = run_dir / "config.yaml" if run_dir is not None else None
    config: dict[str, Any] | None = None
    if config_path is not None and config_path.is_file():
        try:
            loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else None
        except yaml.YAMLError:
            config = None
    if config is not None:
        lines += _recipe(config) or ["- (config.yaml holds no recognised training keys)"]
        lines += [
            "",
            "<details><summary>the run's resolved config.yaml</summary>",
            "",
            "```yaml",
            config_path.read_text(encoding="utf-8").rstrip(),
            "```",
            "",
            "</details>",
        ]
    else:
        lines.append("No training configuration was found beside the model (not exported from a run folder).")
    lines += ["", "## Evaluation", ""]
    rows = eval_rows(run_dir)
    if rows:
        lines += [
            "| dataset | split | language | metric | score | queries | documents |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['dataset']} | {r['split'] or ''} | {r['language'] or ''} | {r['metric'] or ''} | "
                f"{r['score']:.4f} | {r['queries'] if r['queries'] is not None else ''} | "
                f"{r['documents'] if r['documents'] is not None else ''} |"
            )
        lines += ["", "From the run's evaluation JSONs (`eval/`); probe runs may use a subsampled corpus."]
    else:
        lines.append("No evaluation results were found beside the model.")
    return "\n".join(lines) + "\n"
