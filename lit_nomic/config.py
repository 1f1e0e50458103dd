"""The architecture of an embedding encoder, in one dataclass.

`EncoderConfig` is the single source of truth for every architectural hyper-parameter: the model,
weight import, upcycling, parameter counting, the CLI and the YAML experiments all read it, and it is
what `config.json` of a saved model holds. It validates itself at construction so that an impossible
ablation (top_k > num_experts, heads not dividing hidden, an unknown router) fails before any weight
is allocated, with a message naming the field.
"""

from __future__ import annotations

import copy
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

PositionKind = Literal["absolute", "rope"]
NormPosition = Literal["post", "pre"]
Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
RouterKind = Literal["softmax", "sigmoid", "expert_choice"]
MoEBackend = Literal["torch", "megablocks", "cuda_grouped_mm"]
AttentionBackend = Literal["sdpa", "flash_attn"]
Pooling = Literal["mean", "cls"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "position_embedding": ("absolute", "rope"),
    "norm_position": ("post", "pre"),
    "activation": ("gelu", "gelu_tanh", "relu", "silu"),
    "router": ("softmax", "sigmoid", "expert_choice"),
    "moe_backend": ("torch", "megablocks", "cuda_grouped_mm"),
    "attention_backend": ("sdpa", "flash_attn"),
    "pooling": ("mean", "cls"),
}


class ConfigError(ValueError):
    """An impossible or unknown configuration value; the message names the field."""


# Fields that only steer training or the kernels, never what a saved model computes: a saved
# config.json may omit them (they take their defaults). Every other field changes the embeddings, so
# a saved config.json must spell it out: a missing ``pooling`` silently falling back to "mean" changed
# embeddings by up to 0.18 (issue 9).
RUNTIME_FIELDS = frozenset(
    {
        "hidden_dropout",
        "attention_dropout",
        "attention_backend",
        "moe_backend",
        "initializer_range",
        "router_init_std",
        "router_jitter",
        "aux_loss_coef",
        "z_loss_coef",
        "loss_free_update_rate",
    }
)


@dataclass
class EncoderConfig:
    """Architecture of a bidirectional (BERT/XLM-R/NomicBERT) encoder with optional MoE FFN layers.

    MoE layers are chosen by ``moe_layers`` (explicit indices) or ``moe_every_n_layers`` (n=2 gives
    layers 1, 3, 5, ... as in Nomic Embed v2: the MoE block follows a dense one). Expert FFN width is
    ``expert_ffn_size`` when given, else ``ffn_size // ffn_div`` (fine-grained experts split one
    dense FFN into ``ffn_div`` narrower ones, so use more experts and a larger top_k to keep the
    active FLOPs).

    The defaults are the architecture of sentence-transformers/all-MiniLM-L6-v2 (the
    ``all-minilm-l6-v2`` preset, pinned field by field in tests/presets_resolved.json).
    """

    # --- vocabulary and embeddings
    vocab_size: int = 30522
    pad_vocab_to_multiple_of: int = 1
    type_vocab_size: int = 2
    max_position_embeddings: int = 512
    position_embedding: PositionKind = "absolute"
    rope_base: float = 10000.0
    pad_token_id: int = 0

    # --- transformer body
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    ffn_size: int = 1536
    norm_position: NormPosition = "post"
    layer_norm_eps: float = 1e-12
    activation: Activation = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    attention_bias: bool = True
    ffn_bias: bool = True
    attention_backend: AttentionBackend = "sdpa"
    initializer_range: float = 0.02

    # --- mixture of experts
    moe_every_n_layers: int = 0
    moe_layers: list[int] | None = None
    num_experts: int = 8
    top_k: int = 2
    router: RouterKind = "softmax"
    router_renormalize: bool = False
    router_bias: bool = False
    router_jitter: float = 0.0
    router_init_std: float = 0.02
    expert_ffn_size: int | None = None
    ffn_div: int = 1
    expert_bias: bool = False
    moe_output_bias: bool = True
    num_shared_experts: int = 0
    loss_free_balancing: bool = False
    loss_free_update_rate: float = 1e-3
    expert_capacity_factor: float = 1.0
    aux_loss_coef: float = 1.0
    z_loss_coef: float = 0.0
    moe_backend: MoEBackend = "torch"

    # --- embedding head
    pooling: Pooling = "mean"
    normalize: bool = True
    matryoshka_dims: list[int] = field(default_factory=list)
    query_prefix: str = ""
    document_prefix: str = ""

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived quantities
    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_to_multiple_of
        return ((self.vocab_size + m - 1) // m) * m

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def expert_ffn(self) -> int:
        """Hidden width of one routed expert."""
        return self.expert_ffn_size if self.expert_ffn_size is not None else self.ffn_size // self.ffn_div

    @property
    def moe_layer_indices(self) -> list[int]:
        if self.moe_layers is not None:
            return sorted(self.moe_layers)
        n = self.moe_every_n_layers
        if n <= 0:
            return []
        return [i for i in range(self.num_layers) if i % n == n - 1]

    def is_moe_layer(self, index: int) -> bool:
        return index in self.moe_layer_indices

    @property
    def is_moe(self) -> bool:
        return bool(self.moe_layer_indices)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        for f in fields(self):
            problem = _type_problem(getattr(self, f.name), _field_types()[f.name])
            if problem is not None:
                raise ConfigError(f"{f.name} must be {problem}, got {getattr(self, f.name)!r}")
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        positive = (
            "vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_size", "num_experts",
            "top_k", "pad_vocab_to_multiple_of", "max_position_embeddings", "ffn_div",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"num_heads={self.num_heads} does not divide hidden_size={self.hidden_size}")
        if self.position_embedding == "rope" and self.head_dim % 2:
            raise ConfigError(f"rope needs an even head dim; hidden_size/num_heads = {self.head_dim}")
        if self.type_vocab_size < 0:
            raise ConfigError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.pad_token_id < self.padded_vocab_size:
            raise ConfigError(f"pad_token_id={self.pad_token_id} is outside the vocabulary")
        if self.moe_every_n_layers < 0:
            raise ConfigError(f"moe_every_n_layers must be >= 0, got {self.moe_every_n_layers}")
        if self.moe_layers is not None:
            bad = [i for i in self.moe_layers if not 0 <= i < self.num_layers]
            if bad:
                raise ConfigError(f"moe_layers has indices {bad} outside [0, num_layers={self.num_layers})")
            if len(set(self.moe_layers)) != len(self.moe_layers):
                raise ConfigError(f"moe_layers has duplicates: {self.moe_layers}")
        if self.top_k > self.num_experts:
            raise ConfigError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.expert_ffn_size is None and self.ffn_size % self.ffn_div:
            raise ConfigError(f"ffn_div={self.ffn_div} does not divide ffn_size={self.ffn_size}")
        if self.expert_ffn_size is not None and self.expert_ffn_size < 1:
            raise ConfigError(f"expert_ffn_size must be >= 1, got {self.expert_ffn_size}")
        if self.num_shared_experts < 0:
            raise ConfigError(f"num_shared_experts must be >= 0, got {self.num_shared_experts}")
        if self.router == "expert_choice" and self.loss_free_balancing:
            raise ConfigError(
                "loss_free_balancing applies to token-choice routers, not router='expert_choice'"
            )
        if self.expert_capacity_factor <= 0:
            raise ConfigError(f"expert_capacity_factor must be > 0, got {self.expert_capacity_factor}")
        if self.router_jitter < 0:
            raise ConfigError(f"router_jitter must be >= 0, got {self.router_jitter}")
        for name in ("aux_loss_coef", "z_loss_coef", "loss_free_update_rate"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for d in self.matryoshka_dims:
            if not 1 <= d <= self.hidden_size:
                raise ConfigError(f"matryoshka_dims entry {d} is outside [1, hidden_size={self.hidden_size}]")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> EncoderConfig:
        """The config of a saved model: every field that changes the model must be present.

        Only :data:`RUNTIME_FIELDS` may be omitted; presets and ``overrides`` go through
        :func:`preset` instead, where unspecified fields take their defaults. ``source`` (the file
        the dict came from) prefixes every error message.
        """
        where = f"{source}: " if source is not None else ""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}an EncoderConfig must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{where}unknown EncoderConfig field(s) {unknown}; known fields: {sorted(known)}"
            )
        missing = sorted(known - RUNTIME_FIELDS - set(data))
        if missing:
            raise ConfigError(
                f"{where}saved config is missing field(s) {missing}; they change the model, so they "
                "are never defaulted: add them (EncoderConfig.save writes every field)"
            )
        try:
            return cls(**copy.deepcopy(data))
        except ConfigError as err:
            raise ConfigError(f"{where}{err}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EncoderConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
        if isinstance(data, dict):
            data.pop("_lit_nomic", None)  # a saved model folder's own metadata (Embedder.save_pretrained)
        return cls.from_dict(data, source=path)

    def replace(self, **changes: Any) -> EncoderConfig:
        """A validated copy with some fields changed (the ablation primitive)."""
        return replace(self, **changes)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> EncoderConfig:
        return preset(name, **overrides)


@cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(EncoderConfig)


def _type_problem(value: Any, hint: Any) -> str | None:
    """None when ``value`` fits the annotation ``hint``, else the expected type in words."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        problems = [_type_problem(value, h) for h in options if h is not type(None)]
        if any(p is None for p in problems):
            return None
        return " or ".join(problems) + (" or null" if type(None) in options else "")
    if origin is Literal:
        return None if isinstance(value, str) else "one of " + ", ".join(map(str, typing.get_args(hint)))
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, list) and all(_type_problem(v, item) is None for v in value):
            return None
        return f"a list of {str(_type_problem(object(), item)).split(' ', 1)[1]}s"
    if hint is bool:
        return None if isinstance(value, bool) else "a bool (true/false)"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an int"
    if hint is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "a float"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    return None


# ---------------------------------------------------------------------- presets
_NOMIC_BASE = dict(
    vocab_size=250002,
    pad_vocab_to_multiple_of=64,  # 250,002 -> 250,048, as released
    type_vocab_size=1,
    max_position_embeddings=2048,
    position_embedding="rope",
    rope_base=10000.0,
    pad_token_id=1,
    hidden_size=768,
    num_layers=12,
    num_heads=12,
    ffn_size=3072,
    norm_position="post",
    layer_norm_eps=1e-5,
    activation="gelu",
    hidden_dropout=0.0,
    attention_dropout=0.0,
    pooling="mean",
    normalize=True,
    query_prefix="search_query: ",
    document_prefix="search_document: ",
)

# all-MiniLM-L6-v2 is what EncoderConfig's defaults describe, so its preset names no field.
_MINILM: dict[str, Any] = {}

# What the tiny test presets share (each sets its own layers, positions and norm epsilon).
_TINY = dict(
    vocab_size=1000,
    max_position_embeddings=128,
    hidden_size=64,
    num_heads=4,
    ffn_size=128,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)

PRESETS: dict[str, dict[str, Any]] = {
    # nomic-ai/nomic-embed-text-v2-moe: MoE in every other layer (1, 3, ..., 11), 8 full-width
    # experts, top-2, plain softmax router (no bias, no renormalisation of the top-k weights),
    # bias-free experts plus one output bias per MoE layer. 475,292,928 parameters, 305,423,616 active.
    "nomic-embed-text-v2-moe": dict(
        _NOMIC_BASE,
        moe_every_n_layers=2,
        num_experts=8,
        top_k=2,
        router="softmax",
        router_renormalize=False,
        router_bias=False,
        expert_bias=False,
        moe_output_bias=True,
        aux_loss_coef=1.0,
        matryoshka_dims=[768, 256],
    ),
    # nomic-ai/nomic-xlm-2048: the dense backbone the v2 MoE model was upcycled from.
    "nomic-xlm-2048": dict(_NOMIC_BASE, moe_every_n_layers=0),
    # sentence-transformers/all-MiniLM-L6-v2 (BERT, mean pooling + L2 norm, no prefixes).
    "all-minilm-l6-v2": dict(_MINILM),
    # all-MiniLM-L6-v2 upcycled the Nomic way: 8 experts top-2 in every other layer.
    "all-minilm-l6-v2-moe": dict(
        _MINILM,
        moe_every_n_layers=2,
        num_experts=8,
        top_k=2,
        router_renormalize=True,
        expert_bias=True,
        moe_output_bias=False,
    ),
    # Tiny presets for tests: seconds on a CPU core.
    "tiny-dense": dict(_TINY, type_vocab_size=2, num_layers=2, layer_norm_eps=1e-12),
    "tiny-moe": dict(
        _TINY,
        type_vocab_size=1,
        position_embedding="rope",
        num_layers=4,
        layer_norm_eps=1e-5,
        moe_every_n_layers=2,
        num_experts=4,
        top_k=2,
        matryoshka_dims=[64, 32],
    ),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def preset(name: str, **overrides: Any) -> EncoderConfig:
    """Build a named preset, optionally overriding fields (validated as a whole)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    values = copy.deepcopy(PRESETS[name])
    known = {f.name for f in fields(EncoderConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown EncoderConfig field(s) {unknown} in overrides of preset {name!r}")
    values.update(overrides)
    return EncoderConfig(**values)
