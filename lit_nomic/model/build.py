"""Build the embedder a run starts from: a preset, imported weights, or a dense checkpoint upcycled to MoE.

``ModelSpec`` is the YAML ``model.model`` block. The architecture is the preset's (or, without a
preset, the imported checkpoint's), with ``overrides`` applied on top, so an ablation changes one field
(``num_experts: 16``) and inherits everything else. When the target has MoE layers and the weights
are dense, the run starts from a sparse upcycle of those weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lit_nomic.config import EncoderConfig, preset
from lit_nomic.data.tokenizer import load_tokenizer
from lit_nomic.model.embedder import Embedder
from lit_nomic.model.encoder import Encoder

UPCYCLE_BIASES = ("auto", "drop", "keep", "strict")


@dataclass
class ModelSpec:
    """Which architecture, which initial weights.

    Attributes:
        preset: architecture preset name; None takes the architecture of ``init_from``.
        init_from: weights to start from (our folder, a Hugging Face / sentence-transformers folder, a
            packaged checkpoint name such as ``all-minilm-l6-v2``, or a Hub id); None = random init.
        overrides: ``EncoderConfig`` fields changed on top of the preset/checkpoint architecture.
        tokenizer: tokenizer folder or name, needed when ``init_from`` brings none; resolved as
            ``data.tokenizer`` is (:func:`~lit_nomic.data.tokenizer.load_tokenizer`).
        upcycle_noise_std: relative noise added to each upcycled expert copy (0 = exact copies).
        upcycle_biases: what upcycling does with the dense FFN biases (an XLM-R / nomic-xlm-2048
            checkpoint has ``fc1``/``fc2`` biases): ``"drop"`` (contrastors' recipe for
            nomic-embed-text-v2-moe: experts without biases, expert output bias zero-initialised),
            ``"keep"`` (into ``b1``/``b2``/``output_bias`` where the config has them; drops silently
            what has no place), ``"strict"`` (``"keep"``, but a non-zero bias with no place is an
            error). ``"auto"`` (default): ``"drop"`` when the target has ``expert_bias=False``
            (the v2 preset), else ``"strict"``.
        name: model name used in logs and result tables.
    """

    preset: str | None = None
    init_from: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    upcycle_noise_std: float = 0.0
    upcycle_biases: str = "auto"
    name: str | None = None

    def __post_init__(self) -> None:
        if self.preset is None and self.init_from is None:
            raise ValueError("model: give a preset, an init_from checkpoint, or both")
        if self.upcycle_biases not in UPCYCLE_BIASES:
            raise ValueError(
                f"model.upcycle_biases={self.upcycle_biases!r} is not one of {', '.join(UPCYCLE_BIASES)}"
            )

    def upcycle_kwargs(self, target: EncoderConfig) -> dict[str, Any]:
        """The bias arguments of :func:`lit_nomic.model.weights.upcycle` for this policy."""
        policy = self.upcycle_biases
        if policy == "auto":
            policy = "drop" if not target.expert_bias else "strict"
        if policy == "drop":
            return {"dense_biases": "drop", "strict_biases": False}
        return {"dense_biases": "keep", "strict_biases": policy == "strict"}


def target_config(spec: ModelSpec, source: EncoderConfig | None) -> EncoderConfig:
    """The architecture the run trains (validated: a bad override names its field)."""
    if spec.preset is not None:
        return preset(spec.preset, **spec.overrides)
    assert source is not None
    return EncoderConfig.from_dict({**source.to_dict(), **spec.overrides})


def build_embedder(spec: ModelSpec) -> Embedder:
    tokenizer = load_tokenizer(spec.tokenizer) if spec.tokenizer else None
    if spec.init_from is None:
        config = target_config(spec, None)
        return Embedder(Encoder(config), tokenizer, spec.name or spec.preset or "lit-nomic").train()

    source = Embedder.from_pretrained(spec.init_from, tokenizer=tokenizer)
    config = target_config(spec, source.config)
    name = spec.name or source.name
    if config.is_moe and not source.config.is_moe:
        embedder = source.upcycled(
            config, name=name, noise_std=spec.upcycle_noise_std, **spec.upcycle_kwargs(config)
        )
    else:
        encoder = Encoder(config)
        encoder.load_state_dict(source.encoder.state_dict())
        embedder = Embedder(encoder, source.tokenizer, name, source.max_seq_length)
    return embedder.train()
