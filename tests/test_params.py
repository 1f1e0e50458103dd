"""Parameter and FLOP counting on the meta device, checked against released numbers and real modules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lit_nomic.config import preset
from lit_nomic.model import Encoder
from lit_nomic.model.params import count_parameters, experts_per_token


def test_nomic_embed_text_v2_moe_counts_exactly() -> None:
    counts = count_parameters(preset("nomic-embed-text-v2-moe"))
    assert counts["total"] == 475_292_928
    assert counts["active"] == 305_423_616
    # Released layout: 250,048 x 768 words + one token-type row + embedding LN.
    assert counts["embedding"] == 250_048 * 768 + 768 + 2 * 768
    # 6 MoE layers x 8 experts x (w1 + w2), a quarter of which (top-2 of 8) is active.
    assert counts["routed_experts"] == 6 * 8 * 2 * 768 * 3072
    assert counts["router"] == 6 * 8 * 768
    per_layer = 2_365_440
    assert counts["non_embedding"] == 12 * per_layer + 6 * 4_722_432 + 6 * 37_755_648
    assert counts["active_non_embedding"] == 12 * per_layer + 6 * 4_722_432 + 6 * 9_444_096


def test_dense_backbone_and_minilm_counts(minilm_dir: Path) -> None:
    from safetensors import safe_open

    assert count_parameters(preset("nomic-xlm-2048"))["total"] == 192_039_168 + 12 * (2_365_440 + 4_722_432)
    minilm = count_parameters(preset("all-minilm-l6-v2"))
    assert minilm["total"] == minilm["active"] == 22_565_376
    with safe_open(str(minilm_dir / "model.safetensors"), "pt") as f:
        checkpoint = {k: f.get_slice(k).get_shape() for k in f.keys()}
    sizes = {k: math.prod(s) for k, s in checkpoint.items() if "position_ids" not in k}
    assert sum(sizes.values()) == 22_713_216  # the HF checkpoint includes the pooler ...
    pooler = sum(v for k, v in sizes.items() if "pooler" in k)
    assert sum(sizes.values()) - pooler == minilm["total"]  # ... which embeddings never use


@pytest.mark.parametrize("name", ["tiny-dense", "tiny-moe", "all-minilm-l6-v2-moe"])
def test_counts_agree_with_a_materialised_module(name: str) -> None:
    config = preset(name)
    counts = count_parameters(config)
    encoder = Encoder(config)
    assert counts["total"] == sum(p.numel() for p in encoder.parameters())
    routed = sum(p.numel() for n, p in encoder.named_parameters() if ".ffn.experts." in n)
    assert counts["routed_experts"] == routed
    assert counts["active"] == counts["total"] - routed + routed * config.top_k // config.num_experts


def test_flops_per_token() -> None:
    config = preset("tiny-dense")
    d, f, layers, seq = config.hidden_size, config.ffn_size, config.num_layers, 100
    counts = count_parameters(config, seq_len=100)
    matmul = layers * (3 * d * d + d * d + 2 * d * f)  # qkv, out, fc1, fc2 weights
    expected = 2 * matmul + layers * 4 * seq * d
    assert counts["seq_len"] == 100
    assert counts["flops_per_token_forward"] == expected
    assert counts["flops_per_token_train"] == 3 * expected
    moe = preset("tiny-moe")
    moe_counts, dense_like = (
        count_parameters(moe, 64),
        count_parameters(moe.replace(moe_every_n_layers=0), 64),
    )
    per_expert = 2 * moe.hidden_size * moe.expert_ffn
    expert_flops = 2 * 2 * (moe.top_k * per_expert + moe.num_experts * moe.hidden_size)  # 2 layers
    dense_ffn_flops = 2 * 2 * (2 * moe.hidden_size * moe.ffn_size)
    assert moe_counts["flops_per_token_forward"] - dense_like["flops_per_token_forward"] == (
        expert_flops - dense_ffn_flops
    )


def test_expert_choice_and_bad_seq_len() -> None:
    ec = preset("tiny-moe", router="expert_choice", expert_capacity_factor=1.5)
    assert experts_per_token(ec) == 3
    assert experts_per_token(preset("tiny-moe")) == 2
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        count_parameters(ec, seq_len=0)
