"""Checkpoint key maps (HF BERT, RoBERTa/XLM-R, NomicBERT), sparse upcycling, and a weight hash.

Every converter maps a foreign ``config.json`` dict to an :class:`EncoderConfig` and a foreign state
dict to ours (names and layouts of :mod:`lit_nomic.model.encoder`), and refuses what it cannot
represent exactly (gated MLPs, relative positions, interleaved rotary, ...) with an error naming the
field or key, rather than loading a model that silently computes something else.

Our names, per block ``blocks.{i}``: ``attn.qkv`` (fused [q; k; v], Linear D -> 3D), ``attn.out``,
``norm1`` (after attention in post-LN), ``norm2``, and ``ffn`` = dense ``fc1``/``fc2`` or MoE
``router.weight`` [E, D], ``experts.w1`` [E, D, F], ``experts.w2`` [E, F, D], ``experts.b1`` [E, F],
``experts.b2`` [E, D], ``output_bias`` [D]. Embeddings: ``embeddings.word_embeddings``,
``embeddings.position_embeddings``, ``embeddings.token_type_embeddings``, ``embeddings.norm``.

RoBERTa / XLM-R position ids start at ``padding_idx + 1`` (HF ``create_position_ids_from_input_ids``
gives real tokens ``pad_id + 1 + rank``), and the first ``pad_id + 1`` rows of the table are never
used for real tokens. Our encoder indexes positions by rank from 0, and EncoderConfig has no
position offset field, so the importer drops those rows: ``ours[p] = roberta[p + pad_id + 1]`` and
``max_position_embeddings = roberta.max_position_embeddings - pad_id - 1`` (514 -> 512 for XLM-R).
The result is exact, for right and left padding alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lit_nomic.config import EncoderConfig
from lit_nomic.model.encoder import Encoder

__all__ = [
    "ConversionError",
    "NOMIC_DEFAULT_PREFIXES",
    "config_from_hf",
    "convert_bert_state_dict",
    "convert_nomic_state_dict",
    "convert_roberta_state_dict",
    "convert_state_dict",
    "load_checkpoint_tensors",
    "load_into",
    "state_dict_hash",
    "to_nomic_state_dict",
    "upcycle",
    "upcycle_encoder",
]

# What nomic-embed-text-v1/v1.5/v2 expect on the query and document side.
NOMIC_DEFAULT_PREFIXES = ("search_query: ", "search_document: ")

_HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


class ConversionError(ValueError):
    """A foreign checkpoint or config that cannot be represented exactly; names the file, field or key."""


# ============================================================================= files
def load_checkpoint_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF-style folder: model.safetensors, pytorch_model.bin, or their sharded index.

    ``pytorch_model.bin`` goes through torch's ``weights_only`` unpickler (tensors only, no code).
    """
    folder = Path(folder)
    single = {"model.safetensors": "safetensors", "pytorch_model.bin": "torch"}
    for name, kind in single.items():
        path = folder / name
        if path.is_file():
            return _load_safetensors(path) if kind == "safetensors" else _torch_load(path)
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (KeyError, json.JSONDecodeError) as err:
                raise ConversionError(f"{index}: not a valid shard index ({err})") from err
            tensors: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                path = folder / shard
                tensors.update(
                    _load_safetensors(path) if shard.endswith(".safetensors") else _torch_load(path)
                )
            return tensors
    raise FileNotFoundError(
        f"no weights in {folder}: expected model.safetensors, pytorch_model.bin or a sharded index"
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file; a truncated or corrupt file is an error naming it.

    safetensors' own ``SafetensorError`` (e.g. "incomplete metadata, file not fully covered") does
    not say which file of a folder or shard set is broken.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConversionError(
            f"{path}: cannot read the safetensors weights ({reason}); the file is truncated or corrupt, "
            "re-export or re-download it"
        ) from err


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - unpickling errors, truncated zips, refused classes
        # torch's refusal is a page whose first line invites loading the file unsafely: keep the cause.
        found = re.search(r"Unsupported (?:global|operand)[^\n]*", str(err))
        reason = found.group(0) if found else (str(err).splitlines() or [type(err).__name__])[0]
        raise ConversionError(
            f"{path}: cannot load the weights as tensors ({type(err).__name__}: {reason}); "
            "pickled objects other than tensors are refused, never run"
        ) from err


# ============================================================================= configs
def _require(hf: Mapping[str, Any], key: str, source: str) -> Any:
    if key not in hf:
        raise ConversionError(f"{source}: missing field {key!r}")
    return hf[key]


def _activation(name: str, field: str, source: str) -> str:
    if name not in _HF_ACTIVATIONS:
        raise ConversionError(
            f"{source}: {field}={name!r} is not supported (gated MLPs such as swiglu/geglu are not "
            f"implemented by FeedForward); supported: {sorted(_HF_ACTIVATIONS)}"
        )
    return _HF_ACTIVATIONS[name]


def _bert_like_config(
    hf: Mapping[str, Any], source: str, pad_token_id: int, position_offset: int
) -> dict[str, Any]:
    kind = hf.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise ConversionError(
            f"{source}: position_embedding_type={kind!r} is not supported (only 'absolute')"
        )
    max_pos = int(_require(hf, "max_position_embeddings", source)) - position_offset
    if max_pos < 1:
        raise ConversionError(
            f"{source}: max_position_embeddings leaves no position after the RoBERTa offset"
        )
    return dict(
        vocab_size=int(_require(hf, "vocab_size", source)),
        type_vocab_size=int(hf.get("type_vocab_size", 2)),
        max_position_embeddings=max_pos,
        position_embedding="absolute",
        pad_token_id=pad_token_id,
        hidden_size=int(_require(hf, "hidden_size", source)),
        num_layers=int(_require(hf, "num_hidden_layers", source)),
        num_heads=int(_require(hf, "num_attention_heads", source)),
        ffn_size=int(_require(hf, "intermediate_size", source)),
        norm_position="post",
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        activation=_activation(hf.get("hidden_act", "gelu"), "hidden_act", source),
        hidden_dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
    )


def _nomic_config(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    """NomicBertConfig (a GPT2Config): n_embd, n_layer, n_head, n_inner, rotary_*, MoE fields.

    Defaults for absent fields are those of GPT2Config/NomicBertConfig, so a sparse config.json means
    what it meant to the remote code.
    """
    fraction = float(hf.get("rotary_emb_fraction", 0.0))
    if fraction not in (0.0, 1.0):
        raise ConversionError(f"{source}: rotary_emb_fraction={fraction} (partial rotary) is not supported")
    if hf.get("rotary_emb_interleaved", False):
        raise ConversionError(f"{source}: rotary_emb_interleaved=true (GPT-J layout) is not supported")
    if hf.get("rotary_emb_scale_base") is not None:
        raise ConversionError(f"{source}: rotary_emb_scale_base (xPos) is not supported")
    if hf.get("rotary_scaling_factor"):
        raise ConversionError(f"{source}: rotary_scaling_factor (dynamic NTK) is not supported")
    for flag in ("parallel_block", "causal", "use_rms_norm"):
        if hf.get(flag, False):
            raise ConversionError(f"{source}: {flag}=true is not supported")
    if hf.get("mlp_fc1_bias", True) != hf.get("mlp_fc2_bias", True):
        raise ConversionError(f"{source}: mlp_fc1_bias != mlp_fc2_bias; FeedForward has one bias switch")
    hidden = int(_require(hf, "n_embd", source))
    rope = fraction == 1.0
    values: dict[str, Any] = dict(
        vocab_size=int(_require(hf, "vocab_size", source)),
        pad_vocab_to_multiple_of=int(hf.get("pad_vocab_size_multiple", 1)),
        type_vocab_size=int(hf.get("type_vocab_size", 2)),
        max_position_embeddings=int(
            hf.get("max_trained_positions", 2048) if rope else hf.get("n_positions", 1024)
        ),
        position_embedding="rope" if rope else "absolute",
        rope_base=float(hf.get("rotary_emb_base", 10000.0)),
        pad_token_id=int(hf.get("pad_token_id") or 0),
        hidden_size=hidden,
        num_layers=int(_require(hf, "n_layer", source)),
        num_heads=int(_require(hf, "n_head", source)),
        ffn_size=int(hf.get("n_inner") or 4 * hidden),
        norm_position="pre" if hf.get("prenorm", False) else "post",
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=_activation(hf.get("activation_function", "gelu_new"), "activation_function", source),
        hidden_dropout=float(hf.get("resid_pdrop", 0.0)),
        attention_dropout=float(hf.get("attn_pdrop", 0.0)),
        attention_bias=bool(hf.get("qkv_proj_bias", True)),
        ffn_bias=bool(hf.get("mlp_fc1_bias", True)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
        query_prefix=NOMIC_DEFAULT_PREFIXES[0],
        document_prefix=NOMIC_DEFAULT_PREFIXES[1],
    )
    every_n = int(hf.get("moe_every_n_layers", 0) or 0)
    num_experts = int(hf.get("num_experts", 0) or 0)
    if every_n > 0 and num_experts > 0:
        if int(hf.get("num_shared_experts", 0) or 0):
            raise ConversionError(
                f"{source}: num_shared_experts > 0 (megablocks shared expert) is not supported"
            )
        layers = values["num_layers"]
        # The remote code puts MoE on layers with i % n == 1; ours uses i % n == n - 1 (equal for n = 2).
        moe_layers = [i for i in range(layers) if i % every_n == 1]
        values.update(
            num_experts=num_experts,
            top_k=int(hf.get("moe_top_k", 1)),
            router="expert_choice" if hf.get("expert_choice_router", False) else "softmax",
            router_renormalize=bool(hf.get("moe_normalize_expert_weights", False)),
            router_bias=False,
            ffn_div=int(hf.get("ffn_div", 1)),
            expert_bias=False,
            moe_output_bias=True,
            aux_loss_coef=float(hf.get("router_aux_loss_coef", 1.0)),
        )
        if every_n == 2:
            values["moe_every_n_layers"] = 2
        else:
            values["moe_layers"] = moe_layers
    return values


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> tuple[EncoderConfig, str]:
    """(EncoderConfig, family) from a HF ``config.json`` dict; family is 'bert', 'roberta' or 'nomic'."""
    model_type = hf.get("model_type")
    pad = hf.get("pad_token_id")
    if model_type == "bert":
        pad = 0 if pad is None else int(pad)
        return EncoderConfig(**_bert_like_config(hf, source, pad, position_offset=0)), "bert"
    if model_type in ("roberta", "xlm-roberta"):
        pad = 1 if pad is None else int(pad)  # RoBERTa's <pad>; positions start after it
        return EncoderConfig(**_bert_like_config(hf, source, pad, position_offset=pad + 1)), "roberta"
    if model_type == "nomic_bert":
        return EncoderConfig(**_nomic_config(hf, source)), "nomic"
    raise ConversionError(
        f"{source}: model_type={model_type!r} is not supported; expected bert, roberta, xlm-roberta or nomic_bert"
    )


# ============================================================================= state dicts
def _strip_prefix(
    sd: Mapping[str, torch.Tensor], prefixes: tuple[str, ...], anchor: str
) -> tuple[dict[str, torch.Tensor], str]:
    """Remove the first of ``prefixes`` under which ``anchor`` exists (keys without it stay as they are)."""
    for prefix in (*prefixes, ""):
        if prefix + anchor in sd:
            n = len(prefix)
            return {(k[n:] if k.startswith(prefix) else k): v for k, v in sd.items()}, prefix
    raise ConversionError(f"checkpoint has no {anchor!r} under any of the prefixes {[*prefixes, '']}")


def _pad_vocab(weight: torch.Tensor, config: EncoderConfig, key: str) -> torch.Tensor:
    rows = config.padded_vocab_size
    if weight.shape[0] > rows:
        raise ConversionError(f"{key}: {weight.shape[0]} rows exceed the padded vocabulary of {rows}")
    if weight.shape[0] < rows:  # padded rows are never indexed by the tokenizer; zeros as in contrastors
        weight = torch.cat([weight, weight.new_zeros(rows - weight.shape[0], weight.shape[1])])
    return weight


_BERT_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_BERT_LAYER_MAP = {
    "attention.output.dense": "attn.out",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "ffn.fc1",
    "output.dense": "ffn.fc2",
    "output.LayerNorm": "norm2",
}
_BERT_DROPPED = re.compile(
    r"^(pooler\.|cls\.|lm_head\.|embeddings\.position_ids$|embeddings\.token_type_ids$)"
)


def convert_bert_state_dict(
    sd: Mapping[str, torch.Tensor], config: EncoderConfig, prefix: str = "bert.", position_offset: int = 0
) -> dict[str, torch.Tensor]:
    """HF BERT (``bert.`` prefix optional) -> ours; fuses q/k/v, drops the pooler and MLM/NSP heads."""
    sd, prefix = _strip_prefix(sd, (prefix,), "embeddings.word_embeddings.weight")
    sd = {re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)): v
          for k, v in sd.items()}  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if _BERT_DROPPED.match(key):
            continue
        if key == "embeddings.word_embeddings.weight":
            out["embeddings.word_embeddings.weight"] = _pad_vocab(value, config, key)
        elif key == "embeddings.position_embeddings.weight":
            out["embeddings.position_embeddings.weight"] = value[position_offset:]
        elif key == "embeddings.token_type_embeddings.weight":
            out[key] = value
        elif key.startswith("embeddings.LayerNorm."):
            out["embeddings.norm." + key.rsplit(".", 1)[1]] = value
        elif m := _BERT_LAYER.match(key):
            layer, rest = int(m.group(1)), m.group(2)
            module, _, param = rest.rpartition(".")
            if module in ("attention.self.query", "attention.self.key", "attention.self.value"):
                qkv.setdefault((layer, param), {})[module.rsplit(".", 1)[1]] = value
            elif module in _BERT_LAYER_MAP:
                out[f"blocks.{layer}.{_BERT_LAYER_MAP[module]}.{param}"] = value
            else:
                raise ConversionError(f"unexpected BERT checkpoint key {prefix + key!r}")
        else:
            raise ConversionError(f"unexpected BERT checkpoint key {prefix + key!r}")
    for (layer, param), parts in sorted(qkv.items()):
        missing = {"query", "key", "value"} - set(parts)
        if missing:
            raise ConversionError(
                f"layer {layer}: attention.self.{sorted(missing)}.{param} missing from checkpoint"
            )
        out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    return out


def convert_roberta_state_dict(
    sd: Mapping[str, torch.Tensor], config: EncoderConfig
) -> dict[str, torch.Tensor]:
    """RoBERTa / XLM-R -> ours: BERT names under ``roberta.``; position rows shifted by pad_id + 1."""
    return convert_bert_state_dict(sd, config, prefix="roberta.", position_offset=config.pad_token_id + 1)


_NOMIC_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_NOMIC_LAYER_MAP = {
    "attn.Wqkv": "attn.qkv",
    "attn.out_proj": "attn.out",
    "norm1": "norm1",
    "norm2": "norm2",
    "mlp.fc1": "ffn.fc1",
    "mlp.fc2": "ffn.fc2",
}


def _expert_shape(config: EncoderConfig) -> tuple[int, int, int]:
    return config.num_experts, config.expert_ffn, config.hidden_size


def convert_nomic_state_dict(
    sd: Mapping[str, torch.Tensor], config: EncoderConfig
) -> dict[str, torch.Tensor]:
    """NomicBERT / nomic-embed-text-v2-moe -> ours.

    MoE layers as released (megablocks dMoE): ``mlp.router.layer.weight`` [E, D];
    ``mlp.experts.mlp.w1`` and ``w2`` both [E*F, D] with the expert axis outer, w1 applied transposed
    (x @ w1[e].T) and w2 as is (h @ w2[e]); ``mlp.experts.bias`` [D] added once after the weighted sum.
    Viewing w2 as [E, D, F] also "works" shape-wise and silently gives noise, hence the explicit views.
    """
    sd, _ = _strip_prefix(sd, ("bert.", "model."), "embeddings.word_embeddings.weight")
    e, f, d = _expert_shape(config)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if _BERT_DROPPED.match(key):
            continue
        if key == "embeddings.word_embeddings.weight":
            out[key] = _pad_vocab(value, config, key)
        elif key in ("embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight"):
            out[key] = value
        elif key.startswith("emb_ln."):
            out["embeddings.norm." + key.split(".", 1)[1]] = value
        elif m := _NOMIC_LAYER.match(key):
            layer, rest = int(m.group(1)), m.group(2)
            module, _, param = rest.rpartition(".")
            prefix = f"blocks.{layer}."
            if module in _NOMIC_LAYER_MAP:
                out[prefix + _NOMIC_LAYER_MAP[module] + "." + param] = value
            elif rest == "mlp.router.layer.weight":
                out[prefix + "ffn.router.weight"] = value
            elif rest in ("mlp.experts.mlp.w1", "mlp.experts.mlp.w2"):
                if tuple(value.shape) != (e * f, d):
                    raise ConversionError(f"{key}: shape {tuple(value.shape)} != (E*F, D) = {(e * f, d)}")
                per_expert = value.reshape(e, f, d)
                if rest.endswith("w1"):
                    out[prefix + "ffn.experts.w1"] = per_expert.transpose(1, 2).contiguous()
                else:
                    out[prefix + "ffn.experts.w2"] = per_expert.contiguous()
            elif rest == "mlp.experts.bias":
                out[prefix + "ffn.output_bias"] = value
            elif module in ("mlp.fc11", "mlp.fc12"):
                raise ConversionError(f"{key}: gated MLP (fc11/fc12) checkpoints are not supported")
            else:
                raise ConversionError(f"unexpected NomicBERT checkpoint key {key!r}")
        else:
            raise ConversionError(f"unexpected NomicBERT checkpoint key {key!r}")
    return out


def to_nomic_state_dict(encoder: Encoder) -> dict[str, torch.Tensor]:
    """Our parameters -> NomicBERT names and layouts (the inverse of :func:`convert_nomic_state_dict`).

    Buffers (MoE balancing state) have no NomicBERT counterpart and are left out; a parameter with
    no counterpart (expert biases, shared experts, a router bias) is an error.
    """
    config = encoder.config
    inverse = {v: k for k, v in _NOMIC_LAYER_MAP.items()}
    e, f, d = _expert_shape(config)
    out: dict[str, torch.Tensor] = {}
    for key, param in encoder.named_parameters():
        value = param.detach()
        m = re.match(r"^blocks\.(\d+)\.(.+)$", key)
        if key.startswith("embeddings.norm."):
            out["emb_ln." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("embeddings."):
            out[key] = value
        elif m is not None:
            prefix, rest = f"encoder.layers.{m.group(1)}.", m.group(2)
            module, _, param_name = rest.rpartition(".")
            if module in inverse:
                out[prefix + inverse[module] + "." + param_name] = value
            elif rest == "ffn.router.weight":
                out[prefix + "mlp.router.layer.weight"] = value
            elif rest == "ffn.experts.w1":
                out[prefix + "mlp.experts.mlp.w1"] = value.transpose(1, 2).reshape(e * f, d).contiguous()
            elif rest == "ffn.experts.w2":
                out[prefix + "mlp.experts.mlp.w2"] = value.reshape(e * f, d).contiguous()
            elif rest == "ffn.output_bias":
                out[prefix + "mlp.experts.bias"] = value
            else:
                raise ConversionError(f"parameter {key!r} has no NomicBERT equivalent")
        else:
            raise ConversionError(f"parameter {key!r} has no NomicBERT equivalent")
    return out


def convert_state_dict(
    family: str, sd: Mapping[str, torch.Tensor], config: EncoderConfig
) -> dict[str, torch.Tensor]:
    """Dispatch on the family returned by :func:`config_from_hf`."""
    converters = {
        "bert": convert_bert_state_dict,
        "roberta": convert_roberta_state_dict,
        "nomic": convert_nomic_state_dict,
    }
    if family not in converters:
        raise ConversionError(f"unknown checkpoint family {family!r}; expected one of {sorted(converters)}")
    return converters[family](sd, config)


def load_into(encoder: Encoder, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a converted state dict, requiring every parameter and matching shapes.

    Buffers the checkpoint does not carry (MoE balancing state) keep their fresh values.
    """
    expected = encoder.state_dict()
    params = {name for name, _ in encoder.named_parameters()}
    unexpected = sorted(set(sd) - set(expected))
    missing = sorted(params - set(sd))
    if unexpected or missing:
        raise ConversionError(
            f"{source}: keys do not match the model: missing {missing}, unexpected {unexpected}"
        )
    for key, value in sd.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConversionError(
                f"{source}: {key} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    encoder.load_state_dict(dict(sd), strict=False)


# ============================================================================= sparse upcycling
_UPCYCLE_SAME = (
    "vocab_size", "pad_vocab_to_multiple_of", "type_vocab_size", "max_position_embeddings",
    "position_embedding", "hidden_size", "num_layers", "num_heads", "ffn_size", "norm_position",
    "attention_bias", "activation",
)  # fmt: skip


def upcycle(
    dense_state_dict: Mapping[str, torch.Tensor],
    dense_config: EncoderConfig,
    moe_config: EncoderConfig,
    *,
    noise_std: float = 0.0,
    seed: int = 0,
    strict_biases: bool = True,
    dense_biases: str = "keep",
) -> dict[str, torch.Tensor]:
    """Sparse upcycling (Komatsuzaki et al. 2023): every dense FFN in an MoE layer becomes E experts.

    Expert e copies the dense FFN (w1 = fc1.weight.T, w2 = fc2.weight.T); with fine-grained experts
    (expert_ffn = ffn_size / k) expert e takes neuron slice e mod k. ``fc1.bias`` goes to ``b1``; ``fc2.bias``
    to ``output_bias`` if the config has one, else to every expert's ``b2``. With identical experts
    and top-k weights that sum to 1 (router_renormalize), the MoE layer equals the dense FFN
    exactly, which is the starting point the routers then learn to break. The router is drawn from
    N(0, router_init_std); ``noise_std`` adds N(0, noise_std * std(w)) per expert copy to break symmetry.

    Returns every MoE-model key it can derive; keys it cannot (shared experts, balancing buffers)
    are left out for :func:`upcycle_encoder` to keep at their fresh init. ``strict_biases`` makes a
    dense bias with no place in the MoE config an error (the Nomic v2 recipe drops them: pass False).

    ``dense_biases``: ``"keep"`` (above) or ``"drop"``, contrastors' upcycling of nomic-xlm-2048 into
    nomic-embed-text-v2-moe: the dense ``fc1``/``fc2`` biases are not carried into the experts (zero
    ``b1``/``b2`` where the config has them) and the expert output bias starts at zero; never an error.
    """
    if dense_biases not in ("keep", "drop"):
        raise ValueError(f"upcycle: dense_biases must be 'keep' or 'drop', got {dense_biases!r}")
    drop = dense_biases == "drop"
    for name in _UPCYCLE_SAME:
        if getattr(dense_config, name) != getattr(moe_config, name):
            raise ConversionError(
                f"upcycle: {name} differs (dense {getattr(dense_config, name)!r} vs MoE {getattr(moe_config, name)!r})"
            )
    if dense_config.is_moe:
        raise ConversionError(
            f"upcycle: the source config already has MoE layers {dense_config.moe_layer_indices}"
        )
    e, f_expert, _ = _expert_shape(moe_config)
    f_dense = dense_config.ffn_size
    if f_dense % f_expert:
        raise ConversionError(f"upcycle: expert_ffn={f_expert} does not divide the dense ffn_size={f_dense}")
    n_slices = f_dense // f_expert
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        template = Encoder(moe_config).state_dict()

    out: dict[str, torch.Tensor] = {}
    for key in template:
        m = re.match(r"^blocks\.(\d+)\.ffn\.(.+)$", key)
        if m is None or not moe_config.is_moe_layer(int(m.group(1))):
            if key not in dense_state_dict:
                raise ConversionError(f"upcycle: dense state dict has no {key!r}")
            out[key] = dense_state_dict[key]
    for layer in moe_config.moe_layer_indices:
        src, dst = f"blocks.{layer}.ffn.", f"blocks.{layer}.ffn."
        w1_FD, w2_DF = dense_state_dict[src + "fc1.weight"], dense_state_dict[src + "fc2.weight"]
        b1_F, b2_D = dense_state_dict.get(src + "fc1.bias"), dense_state_dict.get(src + "fc2.bias")
        if drop:
            b1_F = b2_D = None
        slices = [slice((i % n_slices) * f_expert, (i % n_slices + 1) * f_expert) for i in range(e)]
        w1 = torch.stack([w1_FD[s].T for s in slices])  # [E, D, F]
        w2 = torch.stack([w2_DF[:, s].T for s in slices])  # [E, F, D]
        if noise_std > 0:
            w1 = w1 + noise_std * w1_FD.std() * torch.randn(w1.shape, generator=generator).to(w1)
            w2 = w2 + noise_std * w2_DF.std() * torch.randn(w2.shape, generator=generator).to(w2)
        out[dst + "experts.w1"], out[dst + "experts.w2"] = w1.contiguous(), w2.contiguous()
        router = template[dst + "router.weight"]
        out[dst + "router.weight"] = (
            torch.randn(tuple(router.shape), generator=generator) * moe_config.router_init_std
        ).to(w1.dtype)
        if dst + "router.bias" in template:
            out[dst + "router.bias"] = torch.zeros(tuple(template[dst + "router.bias"].shape), dtype=w1.dtype)
        has_b1, has_b2 = dst + "experts.b1" in template, dst + "experts.b2" in template
        has_out = dst + "output_bias" in template
        if has_b1:
            out[dst + "experts.b1"] = (
                torch.stack([b1_F[s] for s in slices]) if b1_F is not None else w1.new_zeros(e, f_expert)
            )
        elif b1_F is not None and strict_biases and bool(b1_F.any()):
            raise ConversionError(
                f"upcycle: layer {layer} has an fc1 bias but the MoE config has expert_bias=False "
                "(pass strict_biases=False to drop it)"
            )
        d = w1.shape[1]
        b2 = b2_D if b2_D is not None else w1.new_zeros(d)
        if has_out:
            out[dst + "output_bias"] = b2.clone()
            if has_b2:
                out[dst + "experts.b2"] = w1.new_zeros(e, d)
        elif has_b2:
            out[dst + "experts.b2"] = b2.unsqueeze(0).expand(e, d).clone()
        elif b2_D is not None and strict_biases and bool(b2_D.any()):
            raise ConversionError(
                f"upcycle: layer {layer} has an fc2 bias but the MoE config has neither expert_bias nor "
                "moe_output_bias (pass strict_biases=False to drop it)"
            )
    return out


def upcycle_encoder(dense: Encoder, moe_config: EncoderConfig, **kwargs: Any) -> Encoder:
    """An MoE :class:`Encoder` upcycled from ``dense`` (see :func:`upcycle` for the keyword args)."""
    param = next(dense.parameters())
    moe = Encoder(moe_config).to(device=param.device, dtype=param.dtype)
    derived = upcycle(dense.state_dict(), dense.config, moe_config, **kwargs)
    moe.load_state_dict(derived, strict=False)
    return moe


# ============================================================================= hashing
def state_dict_hash(state_dict: Mapping[str, torch.Tensor], config: EncoderConfig, length: int = 12) -> str:
    """A short, stable hash of the config and every tensor (name, dtype, shape, bytes).

    Independent of device and of dict order, so evaluation caches keyed on it survive a reload.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:length]
