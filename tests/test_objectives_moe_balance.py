"""moe_regularisation: mean over layers, sum over passes, weighted by the coefficients."""

from __future__ import annotations

import pytest
import torch

from lit_nomic.objectives import moe_regularisation


def test_mean_over_layers_sum_over_passes() -> None:
    aux = [[torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)], [torch.tensor(2.0), torch.tensor(4.0)]]
    z = [[torch.tensor(0.5), torch.tensor(1.5), torch.tensor(1.0)], [torch.tensor(3.0), torch.tensor(1.0)]]
    out = moe_regularisation(aux, z, aux_coef=0.1, z_coef=0.01)
    assert out.aux.item() == pytest.approx(2.0 + 3.0)
    assert out.z.item() == pytest.approx(1.0 + 2.0)
    assert out.total.item() == pytest.approx(0.1 * 5.0 + 0.01 * 3.0)


def test_each_layer_gets_coef_over_its_pass_depth() -> None:
    aux = [[torch.tensor(1.0, requires_grad=True) for _ in range(4)], [torch.tensor(1.0, requires_grad=True)]]
    z = [[torch.tensor(2.0, requires_grad=True) for _ in range(2)]]
    moe_regularisation(aux, z, aux_coef=0.2, z_coef=0.5).total.backward()
    assert [t.grad.item() for t in aux[0]] == pytest.approx([0.05] * 4)
    assert aux[1][0].grad.item() == pytest.approx(0.2)
    assert [t.grad.item() for t in z[0]] == pytest.approx([0.25, 0.25])


def test_stacked_per_pass_tensors_and_missing_z_loss() -> None:
    out = moe_regularisation([torch.tensor([1.0, 3.0]), torch.tensor([2.0])], [], aux_coef=1.0, z_coef=1e-3)
    assert out.aux.item() == pytest.approx(4.0)
    assert out.z.item() == 0.0
    assert out.total.item() == pytest.approx(4.0)


def test_dense_model_gives_zero() -> None:
    out = moe_regularisation([], [], aux_coef=0.1, z_coef=0.1)
    assert out.total.item() == 0.0 and out.total.shape == ()


@pytest.mark.parametrize(
    ("aux", "z", "message"),
    [
        ([[torch.tensor(1.0)], []], [], r"aux_losses\[1\] is empty"),
        (
            [[torch.tensor(1.0)]],
            [[torch.tensor(1.0), torch.ones(3)]],
            r"z_losses\[0\]\[1\] must be a scalar tensor, got \(3,\)",
        ),
        ([[1.0]], [], r"aux_losses\[0\]\[0\] must be a scalar tensor, got float"),
    ],
)
def test_bad_input_is_named(aux: list, z: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        moe_regularisation(aux, z, aux_coef=0.1, z_coef=0.1)


def test_negative_coefficient_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        moe_regularisation([], [], aux_coef=-0.1, z_coef=0.0)
