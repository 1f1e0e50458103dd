"""``lit-nomic export --format sentence-transformers``: a folder ``SentenceTransformer(DIR)`` loads offline.

Two layouts, both ``modules.json`` = input module, ``Pooling`` (mean or CLS, as the model pools),
``Normalize``, with the query/document prompts in ``config_sentence_transformers.json`` and the
token limit in ``sentence_bert_config.json``:

* **BERT-compatible dense models** (absolute positions, post-LN, biased projections: MiniLM and
  anything fine-tuned from it): a plain transformers ``BertModel`` folder read by the stock
  ``Transformer`` module. Any sentence-transformers version, ``transformers.AutoModel`` and
  ``Embedder.from_pretrained`` load it; nothing of lit_nomic is needed.
* **everything else** (MoE layers, RoPE, pre-LN): our folder format in the root plus
  :class:`lit_nomic.export.st_module.LitNomicTransformer` as the input module, an import path into
  the installed lit_nomic package (no Hub, no code in the folder). sentence-transformers >= 6 asks
  ``SentenceTransformer(DIR, trust_remote_code=True)`` for any class outside its own namespace.

Module types are written with the ``sentence_transformers.models.*`` names that every
sentence-transformers release since 2.x resolves. The folder is assembled in a temporary sibling and
renamed into place as a whole (:func:`lit_nomic.fileio.atomic_folder`), every file 0644.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lit_nomic.config import EncoderConfig
from lit_nomic.export.common import chmod_tree, replaceable_export_folder, version_info
from lit_nomic.fileio import atomic_folder, atomic_write_bytes, atomic_write_text
from lit_nomic.model.embedder import Embedder, save_tokenizer

__all__ = ["MODULE_TYPE", "bert_incompatibility", "export_sentence_transformers", "to_bert_state_dict"]

MODULE_TYPE = "lit_nomic.export.st_module.LitNomicTransformer"
_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def bert_incompatibility(config: EncoderConfig) -> str | None:
    """None when a plain ``BertModel`` computes this encoder, else why not."""
    checks = [
        (config.is_moe, f"MoE layers {config.moe_layer_indices}"),
        (config.position_embedding != "absolute", f"position_embedding={config.position_embedding!r}"),
        (config.norm_position != "post", f"norm_position={config.norm_position!r}"),
        (not config.attention_bias, "attention_bias=False"),
        (not config.ffn_bias, "ffn_bias=False"),
    ]
    reasons = [why for bad, why in checks if bad]
    return ", ".join(reasons) if reasons else None


def bert_config(config: EncoderConfig) -> dict[str, Any]:
    """A transformers ``BertConfig`` dict for a BERT-compatible :class:`EncoderConfig`."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": config.padded_vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.ffn_size,
        "hidden_act": _HF_ACT[config.activation],
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": max(config.type_vocab_size, 1),
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }


def to_bert_state_dict(embedder: Embedder) -> dict[str, torch.Tensor]:
    """Our parameters under HF ``BertModel`` names (the inverse of the BERT importer).

    The fused ``qkv`` is split into query/key/value; a model without a token-type table gets one
    zero row (BERT always adds row 0, which then adds nothing); the unused pooler is written as
    identity/zero so that transformers does not warn about freshly initialised weights.
    """
    config = embedder.config
    sd = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in embedder.encoder.state_dict().items()
    }
    d = config.hidden_size
    out: dict[str, torch.Tensor] = {
        "embeddings.word_embeddings.weight": sd["embeddings.word_embeddings.weight"],
        "embeddings.position_embeddings.weight": sd["embeddings.position_embeddings.weight"],
        "embeddings.token_type_embeddings.weight": sd.get(
            "embeddings.token_type_embeddings.weight", torch.zeros(1, d)
        ),
        "embeddings.LayerNorm.weight": sd["embeddings.norm.weight"],
        "embeddings.LayerNorm.bias": sd["embeddings.norm.bias"],
        "pooler.dense.weight": torch.eye(d),
        "pooler.dense.bias": torch.zeros(d),
    }
    names = {
        "attn.out": "attention.output.dense",
        "norm1": "attention.output.LayerNorm",
        "ffn.fc1": "intermediate.dense",
        "ffn.fc2": "output.dense",
        "norm2": "output.LayerNorm",
    }
    for i in range(config.num_layers):
        ours, theirs = f"blocks.{i}.", f"encoder.layer.{i}."
        for param in ("weight", "bias"):
            q, k, v = sd[f"{ours}attn.qkv.{param}"].chunk(3, dim=0)
            for part, value in zip(("query", "key", "value"), (q, k, v), strict=True):
                out[f"{theirs}attention.self.{part}.{param}"] = value.contiguous()
            for src, dst in names.items():
                out[f"{theirs}{dst}.{param}"] = sd[f"{ours}{src}.{param}"]
    return out


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def export_sentence_transformers(embedder: Embedder, output: str | Path, card: str | None = None) -> Path:
    """Write ``embedder`` as a sentence-transformers folder at ``output`` (replaced as a whole).

    Args:
        embedder: the model; its tokenizer is required.
        output: the folder to write.
        card: README.md text (the model card); none is written when None.
    """
    from safetensors.torch import save

    if embedder.tokenizer is None:
        raise ValueError("export: the model has no tokenizer; a sentence-transformers folder needs one")
    output = Path(output).expanduser()
    config = embedder.config
    plain_bert = bert_incompatibility(config) is None
    with atomic_folder(output, replaceable=replaceable_export_folder) as tmp:
        if plain_bert:
            tensors = to_bert_state_dict(embedder)
            from lit_nomic.model.embedder import check_finite_tensors

            check_finite_tensors(tensors, f"{output}: refusing to export")
            atomic_write_bytes(tmp / "model.safetensors", save(tensors, metadata={"format": "pt"}))
            atomic_write_text(tmp / "config.json", _json(bert_config(config)))
            save_tokenizer(embedder.tokenizer, tmp)
        else:
            embedder.write_model_files(tmp)
            atomic_write_text(
                tmp / "lit_nomic_module.json", _json({"max_seq_length": embedder.max_seq_length})
            )
        transformer = "sentence_transformers.models.Transformer" if plain_bert else MODULE_TYPE
        write_st_modules(tmp, embedder, transformer, card)
    return output


def write_st_modules(folder: Path, embedder: Embedder, transformer_type: str, card: str | None) -> None:
    """The sentence-transformers files around a model folder (module list, pooling, normalisation,
    prompts, model card), shared by the sentence-transformers and the nomic exports; modes 0644.

    ``transformer_type`` is module 0's class: sentence-transformers' own ``Transformer`` for folders
    that transformers loads natively, ours (``MODULE_TYPE``) otherwise.
    """
    config = embedder.config
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": transformer_type},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {
        "word_embedding_dimension": config.hidden_size,
        "pooling_mode_cls_token": config.pooling == "cls",
        "pooling_mode_mean_tokens": config.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,  # our prefixes are part of the text, pooled like every other token
    }
    st_config = {
        "__version__": version_info(),
        "prompts": {"query": config.query_prefix, "document": config.document_prefix},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    max_seq_length = embedder.max_seq_length
    atomic_write_text(
        folder / "sentence_bert_config.json",
        _json({"max_seq_length": max_seq_length, "do_lower_case": False}),
    )
    atomic_write_text(folder / "modules.json", _json(modules))
    atomic_write_text(folder / "config_sentence_transformers.json", _json(st_config))
    (folder / "1_Pooling").mkdir()
    atomic_write_text(folder / "1_Pooling" / "config.json", _json(pooling))
    (folder / "2_Normalize").mkdir()
    atomic_write_text(folder / "2_Normalize" / "config.json", _json({}))
    if card is not None:
        atomic_write_text(folder / "README.md", card)
    chmod_tree(folder)
