"""The dense FFN and the activation registry that the MoE experts share with it."""

from __future__ import annotations

import math

import pytest
import torch

from lit_nomic.model.ffn import FeedForward, activation_fn, activation_grad

NAMES = ["gelu", "gelu_tanh", "relu", "silu"]


def test_activation_values() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0])
    phi = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # standard normal CDF at 1
    torch.testing.assert_close(activation_fn("gelu")(x), torch.tensor([-(1 - phi), 0.0, phi]))
    tanh_gelu_1 = 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1 + 0.044715)))
    torch.testing.assert_close(activation_fn("gelu_tanh")(x)[2], torch.tensor(tanh_gelu_1))
    assert activation_fn("gelu")(x)[2] != activation_fn("gelu_tanh")(x)[2]  # erf and tanh GELU differ
    torch.testing.assert_close(activation_fn("relu")(x), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(activation_fn("silu")(x)[2], torch.tensor(1 / (1 + math.exp(-1))))


@pytest.mark.parametrize("name", NAMES)
def test_activation_grad_matches_autograd(name: str) -> None:
    h = torch.randn(40, 9, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(40, 9, dtype=torch.float64)
    (expected,) = torch.autograd.grad(activation_fn(name)(h), h, upstream)
    torch.testing.assert_close(activation_grad(name)(upstream, h.detach()), expected)


def test_unknown_activation_is_named() -> None:
    with pytest.raises(ValueError, match="unknown activation 'swish'.*gelu, gelu_tanh, relu, silu"):
        activation_fn("swish")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        activation_grad("swish")
    with pytest.raises(ValueError, match="unknown activation"):
        FeedForward(8, 16, "swish")


@pytest.mark.parametrize("bias", [True, False])
def test_feed_forward_is_fc2_act_fc1_on_any_leading_shape(bias: bool) -> None:
    ffn = FeedForward(8, 24, "gelu", bias=bias)
    assert ffn.fc1.weight.shape == (24, 8) and ffn.fc2.weight.shape == (8, 24)
    assert (ffn.fc1.bias is not None) == bias and (ffn.fc2.bias is not None) == bias
    x = torch.randn(2, 5, 8)
    manual = torch.nn.functional.gelu(x @ ffn.fc1.weight.t() + (ffn.fc1.bias if bias else 0))
    manual = manual @ ffn.fc2.weight.t() + (ffn.fc2.bias if bias else 0)
    torch.testing.assert_close(ffn(x), manual)
    assert ffn(x.view(10, 8)).shape == (10, 8)
    with pytest.raises(ValueError, match="ffn_size=0"):
        FeedForward(8, 0, "gelu")
