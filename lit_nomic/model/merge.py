r"""Expert merging: collapse every MoE layer of a model into one dense FFN (``lit-nomic merge-experts``).

A dense model that starts from what the MoE learned is one of the two student initialisations of
MoE → dense distillation (:mod:`lit_nomic.training.distill`). Each MoE layer becomes

.. math::

    W_1 = \sum_e p_e\, w_1[e], \quad b_1 = \sum_e p_e\, b_1[e], \quad
    W_2 = \sum_e p_e\, w_2[e], \quad b_2 = \sum_e p_e\, b_2[e] + b_{out}

with ``p`` the layer's **routing frequency** (the share of token→expert assignments each expert
received when the MoE encoded real texts; Li et al. 2024, "Merge, then compress", weight experts by
usage) or **uniform** (``p_e = 1/E``). Frequency weighting keeps the experts the router actually
uses and discounts rarely chosen ones, which uniform averaging would let pull the weights away.

Why this is exact for upcycled models: upcycling copies one dense FFN into every expert, and with
renormalised top-k gates (they sum to 1, ``router_renormalize``) the MoE layer then *is* that FFN
for every token. Any convex combination of identical experts is that expert again, so merging a
freshly upcycled model gives back the dense model (``tests/test_merge_experts.py`` checks 1e-6).
For trained experts the merge is the usual first-order approximation; with gates that do not sum to
1 (no renormalisation, sigmoid routers) even identical experts are scaled by the gate mass and the
merge is approximate.

A shared expert (always on) is added exactly: its hidden units are concatenated to the merged
expert's (one FFN whose hidden layer is the union of both). When the merged hidden width is below the
model's dense ``ffn_size`` (fine-grained experts), the FFN is zero-padded: a hidden unit with zero
weights and bias outputs ``act(0) = 0`` for every supported activation, so the padding is exact.
Every other tensor (attention, embeddings, norms, dense layers) is copied unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # heavy imports stay inside the functions: ``lit-nomic --help`` lists this command
    import torch

    from lit_nomic.model.embedder import Embedder

__all__ = ["merge_experts", "merge_experts_command", "merged_state_dict", "routing_frequencies"]

Weighting = Literal["frequency", "uniform"]


def routing_frequencies(
    embedder: Embedder, texts: Sequence[str], batch_size: int = 32, max_length: int | None = 256
) -> dict[int, torch.Tensor]:
    """Share of token→expert assignments per expert, per MoE layer index (float64, sums to 1), on ``texts``.

    The model runs in eval mode (no router jitter), exactly as it routes when it encodes.
    """
    import torch

    if not texts:
        raise ValueError("routing frequencies need at least one text")
    layers = embedder.config.moe_layer_indices
    counts = {layer: torch.zeros(embedder.config.num_experts, dtype=torch.float64) for layer in layers}
    was_training = embedder.training
    embedder.eval()
    device = next(embedder.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                ids = embedder.tokenize(list(texts[start : start + batch_size]), max_length=max_length)
                input_ids, mask = embedder.collate(ids, device)
                out = embedder(input_ids, mask)
                for layer, tokens in zip(layers, out.tokens_per_expert, strict=True):
                    counts[layer] += tokens.to("cpu", torch.float64)
    finally:
        embedder.train(was_training)
    return {layer: c / c.sum() for layer, c in counts.items()}


def _uniform(embedder: Embedder) -> dict[int, torch.Tensor]:
    import torch

    e = embedder.config.num_experts
    return {
        layer: torch.full((e,), 1.0 / e, dtype=torch.float64) for layer in embedder.config.moe_layer_indices
    }


def merged_state_dict(
    embedder: Embedder, weights: dict[int, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], object]:
    """(dense state dict, dense ``EncoderConfig``) of ``embedder`` with every MoE layer merged by ``weights``."""
    import torch

    from lit_nomic.model.weights import ConversionError

    config = embedder.config
    if not config.is_moe:
        raise ValueError(f"model {embedder.name!r} has no MoE layer to merge")
    dense_config = replace(config, moe_every_n_layers=0, moe_layers=None)
    source = {k: v.detach().to("cpu") for k, v in embedder.encoder.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        block = key.split(".")
        if key.startswith("blocks.") and config.is_moe_layer(int(block[1])) and block[2] == "ffn":
            continue
        out[key] = value.clone()
    for layer in config.moe_layer_indices:
        prefix = f"blocks.{layer}.ffn."
        p = weights.get(layer)
        if p is None or p.shape != (config.num_experts,) or not torch.isfinite(p).all() or (p < 0).any():
            raise ValueError(f"layer {layer}: need {config.num_experts} non-negative expert weights, got {p}")
        if not p.sum() > 0:
            raise ValueError(f"layer {layer}: the expert weights sum to 0 (no token was routed)")
        p = p.to(torch.float64) / p.sum()
        w1, w2 = source[prefix + "experts.w1"], source[prefix + "experts.w2"]  # [E, D, F], [E, F, D]
        dtype = w1.dtype
        mix = lambda t, p=p: torch.einsum("e,e...->...", p, t.to(torch.float64))
        fc1_w = mix(w1).T  # [F, D]
        fc2_w = mix(w2).T  # [D, F]
        f_e, d = fc1_w.shape
        fc1_b = (
            mix(source[prefix + "experts.b1"]) if prefix + "experts.b1" in source else fc1_w.new_zeros(f_e)
        )
        fc2_b = mix(source[prefix + "experts.b2"]) if prefix + "experts.b2" in source else fc1_w.new_zeros(d)
        if prefix + "output_bias" in source:
            fc2_b = fc2_b + source[prefix + "output_bias"].to(torch.float64)
        shared = prefix + "shared_expert."
        if shared + "fc1.weight" in source:
            s1_w, s2_w = source[shared + "fc1.weight"].double(), source[shared + "fc2.weight"].double()
            s1_b = source.get(shared + "fc1.bias")
            s2_b = source.get(shared + "fc2.bias")
            fc1_w = torch.cat([fc1_w, s1_w])
            fc2_w = torch.cat([fc2_w, s2_w], dim=1)
            fc1_b = torch.cat([fc1_b, s1_b.double() if s1_b is not None else s1_w.new_zeros(s1_w.shape[0])])
            if s2_b is not None:
                fc2_b = fc2_b + s2_b.double()
        width = fc1_w.shape[0]
        if width > dense_config.ffn_size:
            raise ConversionError(
                f"layer {layer}: the merged FFN has {width} hidden units, more than the dense ffn_size "
                f"{dense_config.ffn_size} the other layers use"
            )
        pad = dense_config.ffn_size - width  # zero hidden units: act(0) = 0, so they add nothing
        fc1_w = torch.cat([fc1_w, fc1_w.new_zeros(pad, d)])
        fc1_b = torch.cat([fc1_b, fc1_b.new_zeros(pad)])
        fc2_w = torch.cat([fc2_w, fc2_w.new_zeros(d, pad)], dim=1)
        if not dense_config.ffn_bias and (bool(fc1_b.any()) or bool(fc2_b.any())):
            raise ConversionError(
                f"layer {layer}: the experts have biases but the dense layers have none (ffn_bias=False)"
            )
        out[prefix + "fc1.weight"] = fc1_w.to(dtype).contiguous()
        out[prefix + "fc2.weight"] = fc2_w.to(dtype).contiguous()
        if dense_config.ffn_bias:
            out[prefix + "fc1.bias"] = fc1_b.to(dtype)
            out[prefix + "fc2.bias"] = fc2_b.to(dtype)
    return out, dense_config


def merge_experts(
    embedder: Embedder,
    weighting: Weighting = "frequency",
    texts: Sequence[str] | None = None,
    name: str | None = None,
    batch_size: int = 32,
    max_length: int | None = 256,
) -> tuple[Embedder, dict[int, list[float]]]:
    """A dense :class:`Embedder` (same tokenizer) from an MoE one, and the expert weights used per layer.

    ``weighting="frequency"`` needs ``texts`` (the routing is measured on them); ``"uniform"`` does not.
    """
    from lit_nomic.model.embedder import Embedder
    from lit_nomic.model.encoder import Encoder

    if weighting == "frequency":
        if not texts:
            raise ValueError(
                "frequency weighting measures routing on texts: give some (or weighting='uniform')"
            )
        weights = routing_frequencies(embedder, texts, batch_size=batch_size, max_length=max_length)
    elif weighting == "uniform":
        weights = _uniform(embedder)
    else:
        raise ValueError(f"weighting must be 'frequency' or 'uniform', got {weighting!r}")
    state, dense_config = merged_state_dict(embedder, weights)
    encoder = Encoder(dense_config)  # type: ignore[arg-type]
    encoder.load_state_dict(state)
    param = next(embedder.parameters())
    encoder.to(device=param.device, dtype=param.dtype)
    dense = Embedder(encoder, embedder.tokenizer, name or f"{embedder.name}-merged", embedder.max_seq_length)
    return dense.eval(), {layer: [round(float(x), 6) for x in w] for layer, w in weights.items()}


def _texts(path: str, field: str, limit: int) -> list[str]:
    """The first ``limit`` texts of a .txt/.jsonl(.gz) file, looked up as given or under the data root."""
    from lit_nomic.cli import _read_texts
    from lit_nomic.data.paths import data_root

    candidate = Path(path).expanduser()
    if not candidate.exists() and (data_root() / path).exists():
        candidate = data_root() / path
    return _read_texts(candidate, field)[:limit]


def merge_experts_command(
    model: str,
    output: str,
    texts: str | None = None,
    field: str = "text",
    weighting: Weighting = "frequency",
    max_texts: int = 1000,
    batch_size: int = 32,
    max_length: int | None = 256,
    name: str | None = None,
) -> dict:
    """Merge every MoE layer of a model into one dense FFN and save a dense model folder.

    Each layer's experts are averaged, weighted by how often the router chose each of them on
    ``texts`` (``--weighting frequency``) or equally (``--weighting uniform``). The folder loads
    like any other (``Embedder.from_pretrained``, ``model.model.init_from`` of a training YAML,
    ``lit-nomic eval --model``). Prints the weights used per layer as JSON.

    Args:
        model: an MoE model folder, packaged name or training checkpoint.
        output: the dense model folder to write.
        texts: a .txt (one text per line) or .jsonl file of real texts, as given or under the data
            root (e.g. ``beir/scifact/corpus.jsonl``); needed for frequency weighting.
        field: the JSONL field holding the text.
        weighting: ``frequency`` (measured routing) or ``uniform``.
        max_texts: use the first N texts.
        batch_size: texts per forward pass when measuring routing.
        max_length: truncate texts to this many tokens when measuring routing.
        name: the dense model's name (default: the MoE's name + ``-merged``).
    """
    from lit_nomic.cli import load_any_model

    embedder = load_any_model(model)
    sample = _texts(texts, field, max_texts) if texts is not None else None
    dense, weights = merge_experts(embedder, weighting, sample, name, batch_size, max_length)
    dense.save_pretrained(output)
    report = {
        "model": model,
        "output": os.fspath(output),
        "weighting": weighting,
        "texts": texts,
        "num_texts": len(sample) if sample is not None else 0,
        "weights": {str(k): v for k, v in weights.items()},
    }
    print(json.dumps(report, indent=2))
    return report
