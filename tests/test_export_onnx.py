"""lit-nomic export --format onnx: dynamic batch and length, parity with PyTorch for dense MiniLM and a
tiny MoE (routing in the graph), int8 within its looser bound, expert choice refused in one line."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from lit_nomic.config import preset
from lit_nomic.model.embedder import Embedder
from lit_nomic.model.encoder import Encoder

pytest.importorskip("onnxruntime")

from lit_nomic.export.graph import PaddedEncoder  # noqa: E402
from lit_nomic.export.onnx import FP32_TOLERANCE, INT8_MIN_COSINE, OnnxEmbedder, OnnxExportError, export_onnx  # noqa: E402

# other lengths and batch sizes than the 2 x 5 trace: the axes are dynamic
TEXTS = [
    "Sparse mixture-of-experts layers route each token to two of eight experts.",
    "short",
    "What causes the common cold?",
    "Rhinoviruses are the most frequent cause of the common cold " * 4,
    "x",
]


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> Embedder:
    return Embedder.from_pretrained(minilm_dir)


def _tiny_moe(minilm: Embedder, **overrides: object) -> Embedder:
    config = preset("tiny-moe", vocab_size=minilm.config.vocab_size, **overrides)
    model = Embedder(Encoder(config), minilm.tokenizer, "tiny-moe", 64).eval()
    for layer in model.encoder.moe_layers:  # a selection bias that changes routing is in the graph too
        layer.selection_bias.normal_(std=0.1)
    return model


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("kind", ["tiny-moe", "tiny-moe-sigmoid", "minilm"])
def test_onnx_parity_fp32_and_int8(kind: str, minilm: Embedder, tmp_path: Path) -> None:
    if kind == "minilm":
        model = minilm
    elif kind == "tiny-moe":
        model = _tiny_moe(minilm)
    else:
        model = _tiny_moe(minilm, router="sigmoid", loss_free_balancing=True, router_renormalize=True)
    out = export_onnx(model, tmp_path / kind, quantize="int8")
    assert {"model.onnx", "model_int8.onnx", "onnx_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()} == {0o644}
    ours = model.encode(TEXTS)
    fp32 = OnnxEmbedder(out).encode(TEXTS, batch_size=3)
    assert fp32.shape == ours.shape
    assert np.abs(fp32 - ours).max() <= FP32_TOLERANCE
    int8 = OnnxEmbedder(out, file="model_int8.onnx").encode(TEXTS, batch_size=5)
    assert _cosines(int8, ours).min() >= INT8_MIN_COSINE
    meta = json.loads((out / "onnx_config.json").read_text())
    assert meta["parity_fp32"]["max_abs_diff"] <= FP32_TOLERANCE and meta["moe"] == model.config.is_moe


def test_padded_graph_equals_the_encoder_for_left_padding(minilm: Embedder) -> None:
    import torch

    model = _tiny_moe(minilm, pooling="cls")
    ids = model.tokenize(TEXTS)
    right_ids, right_mask = model.collate(ids)
    left_ids, left_mask = right_ids.clone(), right_mask.clone()
    for row, x in enumerate(ids):
        left_ids[row] = model.config.pad_token_id
        left_mask[row] = False
        left_ids[row, -len(x) :], left_mask[row, -len(x) :] = torch.tensor(x), True
    with torch.no_grad():
        expected = model.encoder(right_ids, right_mask).embeddings
        graph = PaddedEncoder(model.encoder)
        torch.testing.assert_close(graph(right_ids, right_mask), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(graph(left_ids, left_mask), expected, atol=1e-6, rtol=0)


def test_expert_choice_is_refused_in_one_line(minilm: Embedder, tmp_path: Path) -> None:
    model = Embedder(
        Encoder(preset("tiny-moe", vocab_size=minilm.config.vocab_size, router="expert_choice")),
        minilm.tokenizer,
        "tiny-ec",
        64,
    )
    with pytest.raises(OnnxExportError, match="expert_choice") as info:
        export_onnx(model, tmp_path / "ec")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "ec").exists()
