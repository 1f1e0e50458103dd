"""``lit-nomic export --format onnx``: one ONNX graph, tokenizer files, and an int8 variant on request.

The graph is :class:`lit_nomic.export.graph.PaddedEncoder` traced with torch's TorchScript ONNX
exporter (the dynamo exporter needs ``onnxscript``, which this project does not depend on): inputs
``input_ids`` and ``attention_mask`` (int64 ``[batch, sequence]``, both axes dynamic, any padding
side), output ``sentence_embedding`` (float32 ``[batch, dim]``, pooled and L2-normalised as the model
does). MoE routing (router, softmax/sigmoid, top-k, renormalisation) is in the graph; every expert
runs densely and is weighted by its (mostly zero) gate, so the graph is exact but spends E/k times
the routed FFN FLOPs (see :mod:`lit_nomic.export.graph`). Expert-choice models are refused in one
line.

Before the folder is moved into place the graph is run with onnxruntime on a few texts and compared
with our PyTorch encoder: a graph that disagrees by more than :data:`FP32_TOLERANCE` (max abs
difference of the unit-norm embeddings) is never written. ``--quantize int8`` adds
``model_int8.onnx`` (onnxruntime dynamic quantisation: per-channel int8 weights of every MatMul,
activations quantised per batch at run time), whose embeddings must keep a cosine of at least
:data:`INT8_MIN_COSINE` to PyTorch's (0.987 measured on all-MiniLM-L6-v2): int8 is a looser,
documented bound, not the fp32 parity.

:class:`OnnxEmbedder` runs an exported folder (tokenise, sort by length, batch, restore order): the
benchmark and the tests use it, and it is a template for serving code.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_nomic.export.common import chmod_tree, replaceable_export_folder
from lit_nomic.export.graph import PaddedEncoder, onnx_unsupported_reason
from lit_nomic.fileio import atomic_folder, atomic_write_text
from lit_nomic.model.embedder import Embedder, save_tokenizer

__all__ = [
    "FP32_TOLERANCE",
    "INT8_MIN_COSINE",
    "OnnxEmbedder",
    "export_onnx",
    "onnx_parity",
]

OPSET = 17
FP32_TOLERANCE = 1e-4  # max |onnx - torch| per coordinate of unit-norm embeddings
INT8_MIN_COSINE = 0.97  # dynamic int8 quantisation: min cosine to the fp32 embeddings
CHECK_TEXTS = (
    "Sparse mixture-of-experts layers route each token to a few expert feed-forward networks.",
    "short",
    "What is the capital of France?",
    "Contrastive training pulls a query towards its document and away from the other documents of the batch.",
)


class OnnxExportError(ValueError):
    """The model cannot be exported to ONNX (one line: why)."""


def _session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export_graph(embedder: Embedder, path: Path) -> None:
    graph = PaddedEncoder(embedder.encoder).eval()
    ids = torch.tensor([[embedder.config.pad_token_id + 1] * 5, [embedder.config.pad_token_id + 1] * 5])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(
            graph,
            (ids, mask),
            str(path),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={**dynamic, "sentence_embedding": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )


def _quantize_int8(source: Path, target: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)  # its advice to run shape pre-processing is a root-logger warning
        try:
            # MatMul weights only, one scale per output channel: on all-MiniLM-L6-v2 the min cosine
            # to fp32 is 0.987, against 0.942 for the defaults (per-tensor scales, embeddings too).
            quantize_dynamic(
                str(source),
                str(target),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
            )
        finally:
            root.setLevel(level)


def onnx_parity(
    embedder: Embedder, folder: Path, file: str = "model.onnx", texts: Any = CHECK_TEXTS
) -> dict[str, float]:
    """Max abs difference and min cosine of the ONNX graph's embeddings vs our PyTorch encoder."""
    ours = embedder.encode(list(texts), convert_to_numpy=True)
    theirs = OnnxEmbedder(folder, file=file, embedder_meta=embedder).encode(list(texts))
    cos = (ours * theirs).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1))
    return {"max_abs_diff": float(np.abs(ours - theirs).max()), "min_cosine": float(cos.min())}


def export_onnx(
    embedder: Embedder, output: str | Path, quantize: str | None = None, card: str | None = None
) -> Path:
    """Write ``model.onnx`` (+ ``model_int8.onnx`` with ``quantize="int8"``), tokenizer and
    ``onnx_config.json`` into ``output`` (replaced as a whole, after the parity check).

    Raises:
        OnnxExportError: one line, when the model cannot be exported (expert-choice routing) or the
            graph disagrees with PyTorch; nothing is written then.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"export: --quantize must be int8 (or omitted), got {quantize!r}")
    reason = onnx_unsupported_reason(embedder.encoder)
    if reason is not None:
        raise OnnxExportError(f"export --format onnx: cannot export {embedder.name}: {reason}")
    if embedder.tokenizer is None:
        raise OnnxExportError("export --format onnx: the model has no tokenizer")
    output = Path(output).expanduser()
    embedder = embedder.eval()
    c = embedder.config
    meta = {
        "name": embedder.name,
        "inputs": ["input_ids", "attention_mask"],
        "output": "sentence_embedding",
        "embedding_dim": c.hidden_size,
        "max_seq_length": embedder.max_seq_length,
        "pad_token_id": c.pad_token_id,
        "prompts": {"query": c.query_prefix, "document": c.document_prefix},
        "normalized": True,
        "pooling": c.pooling,
        "moe": c.is_moe,
        "moe_note": "routing in the graph; every expert runs densely, weighted by its gate"
        if c.is_moe
        else None,
        "opset": OPSET,
        "files": {"fp32": "model.onnx", **({"int8": "model_int8.onnx"} if quantize else {})},
    }
    with atomic_folder(output, replaceable=replaceable_export_folder) as tmp:
        try:
            _export_graph(embedder, tmp / "model.onnx")
        except Exception as err:  # noqa: BLE001 - the exporter raises many types; say why in one line
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise OnnxExportError(
                f"export --format onnx: torch.onnx.export failed for {embedder.name} ({type(err).__name__}: {first})"
            ) from err
        save_tokenizer(embedder.tokenizer, tmp)
        atomic_write_text(tmp / "onnx_config.json", json.dumps(meta, indent=2) + "\n")
        parity = onnx_parity(embedder, tmp)
        if parity["max_abs_diff"] > FP32_TOLERANCE:
            raise OnnxExportError(
                f"export --format onnx: the graph disagrees with PyTorch by {parity['max_abs_diff']:.2e} "
                f"(> {FP32_TOLERANCE:g}); nothing written"
            )
        meta["parity_fp32"] = parity
        if quantize == "int8":
            _quantize_int8(tmp / "model.onnx", tmp / "model_int8.onnx")
            parity8 = onnx_parity(embedder, tmp, file="model_int8.onnx")
            if parity8["min_cosine"] < INT8_MIN_COSINE:
                raise OnnxExportError(
                    f"export --format onnx: int8 quantisation moved an embedding to cosine "
                    f"{parity8['min_cosine']:.3f} (< {INT8_MIN_COSINE}); nothing written"
                )
            meta["parity_int8"] = parity8
        atomic_write_text(tmp / "onnx_config.json", json.dumps(meta, indent=2) + "\n")
        if card is not None:
            atomic_write_text(tmp / "README.md", card)
        chmod_tree(tmp)
    return output


class OnnxEmbedder:
    """Embed texts with an exported ONNX folder and onnxruntime (CPU); numpy in, numpy out."""

    def __init__(
        self,
        folder: str | Path,
        file: str = "model.onnx",
        threads: int | None = None,
        embedder_meta: Embedder | None = None,
    ) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "onnx_config.json"
        if embedder_meta is not None:  # during export: the folder is not complete yet
            self.tokenizer = embedder_meta.tokenizer
            self.max_seq_length = embedder_meta.max_seq_length
            self.pad_token_id = embedder_meta.config.pad_token_id
            self.prompts = {"query": embedder_meta.query_prefix, "document": embedder_meta.document_prefix}
            self.name = embedder_meta.name
        else:
            from lit_nomic.data.tokenizer import load_tokenizer

            meta = json.loads(meta_path.read_text())
            self.tokenizer = load_tokenizer(self.folder)
            self.max_seq_length = int(meta["max_seq_length"])
            self.pad_token_id = int(meta["pad_token_id"])
            self.prompts = dict(meta.get("prompts") or {})
            self.name = meta.get("name") or self.folder.name
        self.session = _session(self.folder / file, threads)

    def tokenize(self, texts: list[str], prefix: str = "") -> list[list[int]]:
        return self.tokenizer(
            [prefix + t for t in texts],
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_seq_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]

    def encode(
        self, texts: list[str], batch_size: int = 64, prompt_name: str | None = None, prefix: str = ""
    ) -> np.ndarray:
        """float32 ``[N, D]`` unit-norm embeddings in input order (batches of similar length)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, got a single str")
        if prompt_name is not None:
            prefix = self.prompts[prompt_name]
        ids = self.tokenize(list(texts), prefix)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out: np.ndarray | None = None
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            longest = max(len(ids[i]) for i in rows)
            input_ids = np.full((len(rows), longest), self.pad_token_id, dtype=np.int64)
            mask = np.zeros((len(rows), longest), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            (emb,) = self.session.run(None, {"input_ids": input_ids, "attention_mask": mask})
            if out is None:
                out = np.empty((len(ids), emb.shape[1]), dtype=np.float32)
            out[rows] = emb
        return out if out is not None else np.empty((0, 0), dtype=np.float32)
