"""The pretraining recipe's model build: a dense nomic-xlm-2048-layout checkpoint (NomicBERT names,
non-zero fc1/fc2 biases, as XLM-R-derived checkpoints have) upcycled into the v2 MoE preset, whose
experts have no biases (contrastors: drop fc1/fc2 biases, zero-init the expert output bias)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from lit_nomic.config import preset
from lit_nomic.model.build import ModelSpec, build_embedder
from lit_nomic.model.encoder import Encoder
from lit_nomic.model.weights import ConversionError, to_nomic_state_dict

REPO = Path(__file__).resolve().parents[1]
TINY = {"vocab_size": 100, "hidden_size": 32, "num_layers": 4, "num_heads": 4, "ffn_size": 48}
DENSE_HF_CONFIG = {
    "model_type": "nomic_bert", "architectures": ["NomicBertModel"], "vocab_size": 100,
    "pad_vocab_size_multiple": 64, "n_embd": 32, "n_layer": 4, "n_head": 4, "n_inner": 48,
    "n_positions": 2048, "max_trained_positions": 2048, "type_vocab_size": 1, "pad_token_id": 1,
    "rotary_emb_fraction": 1.0, "rotary_emb_base": 10000, "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None, "rotary_scaling_factor": None, "prenorm": False,
    "activation_function": "gelu", "layer_norm_epsilon": 1e-5, "qkv_proj_bias": True,
    "mlp_fc1_bias": True, "mlp_fc2_bias": True, "resid_pdrop": 0.0, "attn_pdrop": 0.0, "embd_pdrop": 0.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("nomic-xlm-tiny")
    torch.manual_seed(0)
    dense = Encoder(preset("nomic-xlm-2048", **TINY))
    with torch.no_grad():
        for name, p in dense.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)  # non-zero FFN (and other) biases, as in the released checkpoint
    sd = to_nomic_state_dict(dense)
    assert any(k.endswith("mlp.fc1.bias") for k in sd) and any(k.endswith("mlp.fc2.bias") for k in sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(DENSE_HF_CONFIG))
    return folder


def recipe_spec(checkpoint: Path, **changes: object) -> ModelSpec:
    """``model.model`` of experiments/nomic-v2-pretrain.yaml, shrunk and pointed at the checkpoint."""
    block = yaml.safe_load((REPO / "experiments" / "nomic-v2-pretrain.yaml").read_text())["model"]["model"]
    overrides = {**(block.get("overrides") or {}), **TINY, "matryoshka_dims": [32, 16]}
    block = {**block, "init_from": str(checkpoint), "overrides": overrides}
    return ModelSpec(**{**block, **changes})


def test_pretraining_recipe_builds_from_a_dense_checkpoint_with_biases(dense_checkpoint: Path) -> None:
    embedder = build_embedder(recipe_spec(dense_checkpoint))
    config = embedder.config
    assert config.moe_layer_indices == [1, 3] and not config.expert_bias and config.moe_output_bias
    state = embedder.encoder.state_dict()
    for layer in (1, 3):
        assert f"blocks.{layer}.ffn.experts.b1" not in state
        assert torch.equal(state[f"blocks.{layer}.ffn.output_bias"], torch.zeros(32))  # zero-init
    # the dense layers keep their biases, and the experts copy the dense weights exactly
    from safetensors.torch import load_file

    src = load_file(str(dense_checkpoint / "model.safetensors"))
    fc1 = next(v for k, v in src.items() if k.endswith("layers.1.mlp.fc1.weight"))
    assert torch.equal(state["blocks.1.ffn.experts.w1"][0], fc1.t())
    assert state["blocks.0.ffn.fc1.bias"].abs().sum() > 0
    ids = torch.randint(5, 100, (2, 7))
    out = embedder.encoder(ids, torch.ones_like(ids, dtype=torch.bool)).embeddings
    assert out.shape == (2, 32) and torch.isfinite(out).all()


def test_strict_bias_policy_still_refuses(dense_checkpoint: Path) -> None:
    with pytest.raises(ConversionError, match="fc1 bias but the MoE config has expert_bias=False"):
        build_embedder(recipe_spec(dense_checkpoint, upcycle_biases="strict"))
    with pytest.raises(ValueError, match="upcycle_biases='sometimes'"):
        recipe_spec(dense_checkpoint, upcycle_biases="sometimes")


def test_keep_policy_carries_the_output_bias(dense_checkpoint: Path) -> None:
    embedder = build_embedder(recipe_spec(dense_checkpoint, upcycle_biases="keep"))
    assert embedder.encoder.state_dict()["blocks.1.ffn.output_bias"].abs().sum() > 0
