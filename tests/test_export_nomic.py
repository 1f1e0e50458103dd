"""lit-nomic export --format nomic: the released nomic-embed-text-v2-moe layout, and our importer's round trip."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from lit_nomic.config import preset
from lit_nomic.export.nomic import NOMIC_AUTO_MAP, export_nomic
from lit_nomic.model.embedder import Embedder
from lit_nomic.model.encoder import Encoder
from lit_nomic.model.weights import ConversionError

TEXTS = ["a mixture of experts", "routing tokens to experts in every other layer of the encoder", "x"]


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> Embedder:
    return Embedder.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def tiny_moe(minilm: Embedder) -> Embedder:
    config = preset(
        "tiny-moe",
        vocab_size=minilm.config.vocab_size,
        pad_vocab_to_multiple_of=64,
        query_prefix="search_query: ",
        document_prefix="search_document: ",
    )
    return Embedder(Encoder(config), minilm.tokenizer, "tiny-moe", 64).eval()


def test_tiny_moe_round_trip_and_released_layout(tiny_moe: Embedder, tmp_path: Path) -> None:
    out = export_nomic(tiny_moe, tmp_path / "nomic")
    cfg = json.loads((out / "config.json").read_text())
    c = tiny_moe.config
    assert cfg["model_type"] == "nomic_bert" and cfg["architectures"] == ["NomicBertModel"]
    assert cfg["auto_map"] == NOMIC_AUTO_MAP
    assert (cfg["moe_every_n_layers"], cfg["num_experts"], cfg["moe_top_k"]) == (2, 4, 2)
    assert cfg["n_embd"] == 64 and cfg["n_layer"] == 4 and cfg["rotary_emb_fraction"] == 1.0
    assert cfg["moe_normalize_expert_weights"] is False and cfg["pad_vocab_size_multiple"] == 64
    tensors = load_file(str(out / "model.safetensors"))
    e, f, d = c.num_experts, c.expert_ffn, c.hidden_size
    assert tensors["encoder.layers.1.mlp.experts.mlp.w1"].shape == (e * f, d)
    assert tensors["encoder.layers.1.mlp.experts.mlp.w2"].shape == (e * f, d)
    assert tensors["encoder.layers.1.mlp.router.layer.weight"].shape == (e, d)
    assert tensors["encoder.layers.3.mlp.experts.bias"].shape == (d,)
    assert "encoder.layers.0.mlp.fc1.weight" in tensors and "emb_ln.weight" in tensors
    assert "encoder.layers.0.attn.Wqkv.weight" in tensors
    prompts = json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts == {"query": "search_query: ", "document": "search_document: "}
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()} == {0o644}

    back = Embedder.from_pretrained(out)
    for kind in ("query", "document"):
        np.testing.assert_array_equal(
            back.encode(TEXTS, prompt_name=kind), tiny_moe.encode(TEXTS, prompt_name=kind)
        )
    for field in (
        "num_experts",
        "top_k",
        "moe_layer_indices",
        "position_embedding",
        "pooling",
        "query_prefix",
    ):
        assert getattr(back.config, field) == getattr(c, field)
    assert back.max_seq_length == 64


def test_dense_minilm_round_trip(minilm: Embedder, tmp_path: Path) -> None:
    out = export_nomic(minilm, tmp_path / "nomic_minilm")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rotary_emb_fraction"] == 0.0 and cfg["n_positions"] == 512 and cfg["num_experts"] == 0
    back = Embedder.from_pretrained(out)
    assert back.config == minilm.config and back.max_seq_length == 256
    np.testing.assert_array_equal(back.encode(TEXTS), minilm.encode(TEXTS))


def test_what_the_release_cannot_express_is_refused_in_one_line(minilm: Embedder, tmp_path: Path) -> None:
    moe = minilm.upcycled(preset("all-minilm-l6-v2-moe"))  # expert biases: megablocks has none
    with pytest.raises(ConversionError, match="expert_bias=True") as info:
        export_nomic(moe, tmp_path / "refused")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "refused").exists()
