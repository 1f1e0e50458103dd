"""``lit-nomic export --format nomic``: the layout of the released nomic-embed-text-v2-moe.

``config.json`` is a NomicBertConfig (``model_type: nomic_bert``, GPT-2 style field names, the MoE
fields ``moe_every_n_layers``/``num_experts``/``moe_top_k``/``moe_normalize_expert_weights``/
``router_aux_loss_coef``/``moe_impl``, and the released ``auto_map`` to the remote modeling code),
``model.safetensors`` holds NomicBERT parameter names and megablocks expert layouts
(:func:`lit_nomic.model.weights.to_nomic_state_dict`), and the sentence-transformers files the
release ships (mean pooling, Normalize, ``search_query: ``/``search_document: `` style prompts)
carry pooling, normalisation and prefixes. Code written for the released model (its remote
``NomicBertModel``, sentence-transformers with ``trust_remote_code=True``) reads it as the release,
and ``Embedder.from_pretrained`` imports it back to identical embeddings.

What the released architecture cannot express is refused in one line before anything is written:
expert biases, router biases, shared experts, expert-choice or sigmoid routers, loss-free selection
biases that move routing, MoE layers not at ``i % n == 1``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lit_nomic.config import EncoderConfig
from lit_nomic.export.common import replaceable_export_folder
from lit_nomic.export.sentence_transformers import write_st_modules
from lit_nomic.fileio import atomic_folder, atomic_write_bytes, atomic_write_text
from lit_nomic.model.embedder import Embedder, check_finite_tensors, save_tokenizer
from lit_nomic.model.weights import ConversionError, to_nomic_state_dict

__all__ = ["NOMIC_AUTO_MAP", "export_nomic", "nomic_config", "nomic_incompatibility"]

# As in nomic-ai/nomic-embed-text-v2-moe's config.json.
NOMIC_AUTO_MAP = {
    "AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
    "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel",
    "AutoModelForMaskedLM": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertForPreTraining",
}
_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def _moe_every_n(config: EncoderConfig) -> int | None:
    """The n with MoE exactly at layers ``i % n == 1`` (the released code's rule), or None."""
    layers = config.moe_layer_indices
    for n in range(2, config.num_layers + 1):
        if layers == [i for i in range(config.num_layers) if i % n == 1]:
            return n
    return None


def nomic_incompatibility(embedder: Embedder) -> str | None:
    """None when the released NomicBERT architecture computes this model, else one line why not."""
    c = embedder.config
    reasons = []
    if c.is_moe:
        if _moe_every_n(c) is None:
            reasons.append(f"MoE layers {c.moe_layer_indices} are not every n-th layer from layer 1")
        if c.router != "softmax":
            reasons.append(f"router={c.router!r} (the release routes softmax top-k)")
        if c.router_bias:
            reasons.append("router_bias=True")
        if c.expert_bias:
            reasons.append("expert_bias=True (megablocks experts have no biases)")
        if c.num_shared_experts:
            reasons.append(f"num_shared_experts={c.num_shared_experts}")
        if c.expert_ffn_size is not None and c.ffn_size % c.expert_ffn_size:
            reasons.append(f"expert_ffn_size={c.expert_ffn_size} does not divide ffn_size={c.ffn_size}")
        if c.loss_free_balancing and any(bool(m.selection_bias.any()) for m in embedder.encoder.moe_layers):
            reasons.append("loss-free selection biases change routing and have no NomicBERT field")
    if not reasons:
        return None
    return f"the released NomicBERT architecture cannot express {', '.join(reasons)}"


def nomic_config(embedder: Embedder) -> dict[str, Any]:
    """The NomicBertConfig dict (released field names and defaults) of ``embedder``."""
    c = embedder.config
    rope = c.position_embedding == "rope"
    out: dict[str, Any] = {
        "architectures": ["NomicBertModel"],
        "auto_map": NOMIC_AUTO_MAP,
        "model_type": "nomic_bert",
        "activation_function": _ACT[c.activation],
        "attn_pdrop": c.attention_dropout,
        "bos_token_id": None,
        "causal": False,
        "dense_seq_output": True,
        "embd_pdrop": c.hidden_dropout,
        "eos_token_id": None,
        "fused_bias_fc": True,
        "fused_dropout_add_ln": True,
        "initializer_range": c.initializer_range,
        "layer_norm_epsilon": c.layer_norm_eps,
        "max_trained_positions": c.max_position_embeddings,
        "mlp_fc1_bias": c.ffn_bias,
        "mlp_fc2_bias": c.ffn_bias,
        "n_embd": c.hidden_size,
        "n_head": c.num_heads,
        "n_inner": c.ffn_size,
        "n_layer": c.num_layers,
        "n_positions": c.max_position_embeddings,
        "pad_token_id": c.pad_token_id,
        "pad_vocab_size_multiple": c.pad_vocab_to_multiple_of,
        "parallel_block": False,
        "parallel_block_tied_norm": False,
        "prenorm": c.norm_position == "pre",
        "qkv_proj_bias": c.attention_bias,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": c.hidden_dropout,
        "rotary_emb_base": c.rope_base,
        "rotary_emb_fraction": 1.0 if rope else 0.0,
        "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
        "rotary_scaling_factor": None,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "torch_dtype": "float32",
        "type_vocab_size": c.type_vocab_size,
        "use_cache": True,
        "use_flash_attn": True,
        "use_rms_norm": False,
        "use_xentropy": True,
        "vocab_size": c.vocab_size,
    }
    if c.is_moe:
        out.update(
            moe_every_n_layers=_moe_every_n(c),
            num_experts=c.num_experts,
            moe_top_k=c.top_k,
            moe_normalize_expert_weights=c.router_renormalize,
            expert_choice_router=False,
            ffn_div=c.ffn_size // c.expert_ffn,
            moe_impl="megablocks",
            moe_resid_pdrop=c.hidden_dropout,
            num_shared_experts=0,
            router_aux_loss_coef=c.aux_loss_coef,
        )
    else:
        out.update(moe_every_n_layers=0, num_experts=0)
    return out


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def export_nomic(embedder: Embedder, output: str | Path, card: str | None = None) -> Path:
    """Write ``embedder`` in the released nomic-embed-text-v2-moe layout at ``output``.

    Raises:
        ConversionError: one line naming what the released architecture cannot express; nothing
            is written then.
    """
    from safetensors.torch import save

    reason = nomic_incompatibility(embedder)
    if reason is not None:
        raise ConversionError(f"export --format nomic: {reason}")
    output = Path(output).expanduser()
    c = embedder.config
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in to_nomic_state_dict(embedder.encoder).items()}
    if c.is_moe and not c.moe_output_bias:
        # megablocks always adds an output bias; ours has none: zeros compute the same function.
        import torch

        for layer in c.moe_layer_indices:
            tensors[f"encoder.layers.{layer}.mlp.experts.bias"] = torch.zeros(c.hidden_size)
    check_finite_tensors(tensors, f"{output}: refusing to export")
    with atomic_folder(output, replaceable=replaceable_export_folder) as tmp:
        atomic_write_bytes(tmp / "model.safetensors", save(tensors, metadata={"format": "pt"}))
        atomic_write_text(tmp / "config.json", _json(nomic_config(embedder)))
        save_tokenizer(embedder.tokenizer, tmp)
        write_st_modules(tmp, embedder, "sentence_transformers.models.Transformer", card)
    return output
