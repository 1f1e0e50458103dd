"""The dense feed-forward block and the activation registry shared with the MoE experts.

Experts, the shared expert and the dense FFN must apply *the same* activation function, otherwise
upcycling a dense checkpoint into identical experts would not reproduce the dense output; keeping
the name -> function mapping here gives every caller one definition.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    # BERT / XLM-R / Nomic use the exact (erf) GELU; the tanh form is a different function and
    # only matches checkpoints trained with it (GPT-2 style "gelu_new").
    "gelu": F.gelu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


# dL/dh from dL/da and the pre-activation h, for fused kernels that run outside autograd.
_ACTIVATION_GRADS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "gelu": lambda grad, h: torch.ops.aten.gelu_backward(grad, h),
    "gelu_tanh": lambda grad, h: torch.ops.aten.gelu_backward(grad, h, approximate="tanh"),
    "relu": lambda grad, h: torch.ops.aten.threshold_backward(grad, h, 0),
    "silu": lambda grad, h: torch.ops.aten.silu_backward(grad, h),
}


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """The activation called ``name`` (``EncoderConfig.activation``)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(_ACTIVATIONS)}") from None


def activation_grad(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``(grad_out, h) -> grad_h`` of the activation called ``name``: autograd's own backward kernels,
    for code that stores the pre-activation itself and differentiates by hand (the fused MoE experts)."""
    try:
        return _ACTIVATION_GRADS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of: {', '.join(_ACTIVATION_GRADS)}"
        ) from None


class FeedForward(nn.Module):
    """Dense two-layer FFN ``fc2(act(fc1(x)))``; also the always-on shared expert of DeepSeekMoE.

    The parameter names ``fc1``/``fc2`` match what weight import and upcycling copy into the
    experts (``experts.w1[e] = fc1.weight.T``, ``experts.w2[e] = fc2.weight.T``).
    """

    def __init__(self, hidden_size: int, ffn_size: int, activation: str, bias: bool = True) -> None:
        super().__init__()
        if hidden_size < 1 or ffn_size < 1:
            raise ValueError(
                f"FeedForward needs positive sizes, got hidden_size={hidden_size}, ffn_size={ffn_size}"
            )
        self.fc1 = nn.Linear(hidden_size, ffn_size, bias=bias)
        self.fc2 = nn.Linear(ffn_size, hidden_size, bias=bias)
        self.activation = activation
        self.act = activation_fn(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
