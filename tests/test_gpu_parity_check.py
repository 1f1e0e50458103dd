"""The GPU parity checks can fail: on CPU, a backend broken on purpose must fail the very check
``tests/test_gpu_backends.py`` runs on CUDA (forward, backward, the bf16-mixed cast)."""

from __future__ import annotations

import pytest

from lit_nomic.bench.parity import assert_parity, moe_parity
from lit_nomic.model import moe_backends
from lit_nomic.model.moe_backends import TorchBackend

TINY = {"device": "cpu", "tokens": 48, "hidden": 32, "ffn": 64, "experts": 4}


@pytest.mark.parametrize("mode", ["fp32", "bf16", "bf16-mixed"])
def test_correct_torch_backend_passes(mode: str) -> None:
    result = assert_parity("torch", "softmax", mode, **TINY)
    assert set(result.errors) == {"y", "grad x", "grad router", "grad w1", "grad w2", "grad b1", "grad b2"}


@pytest.mark.parametrize("mode", ["fp32", "bf16-mixed"])
def test_wrong_forward_fails(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    right = TorchBackend.__call__
    monkeypatch.setattr(TorchBackend, "__call__", lambda self, *a: right(self, *a) * 1.05)  # 5% off
    result = moe_parity("torch", "softmax", mode, **TINY)
    assert not result.ok and any(p.startswith("y:") for p in result.problems)
    with pytest.raises(AssertionError, match="torch softmax .* y: relative error"):
        assert_parity("torch", "softmax", mode, **TINY)


def test_wrong_weight_gradient_fails_with_a_right_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    right = moe_backends.grouped_weight_grad
    monkeypatch.setattr(moe_backends, "grouped_weight_grad", lambda *a: right(*a) * 0.97)
    result = moe_parity("torch", "softmax", "bf16", **TINY)
    failed = {p.split(":")[0] for p in result.problems}
    assert failed == {"grad w1", "grad w2"}, result.problems


def test_dropped_expert_rows_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """An off-by-one in the expert-major layout (last expert's rows ignored) is caught."""
    right = moe_backends.grouped_matmul

    def drop_last_expert(a, w, chunk, use_grouped_mm):  # noqa: ANN001, ANN202
        out = right(a, w, chunk, use_grouped_mm)
        last = int(chunk.tokens_per_expert[-1])
        if last:
            out[-last:] = 0
        return out

    monkeypatch.setattr(moe_backends, "grouped_matmul", drop_last_expert)
    assert not moe_parity("torch", "sigmoid", "fp32", **TINY).ok


def test_megablocks_without_the_autocast_cast_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug this check exists for: fp32 weights under bf16-mixed handed to gmm as they are."""
    from test_moe_backends import install_fake_megablocks

    install_fake_megablocks(monkeypatch)
    assert_parity("megablocks", "softmax", "bf16-mixed", **TINY)
    monkeypatch.setattr(moe_backends, "cast_for_autocast", lambda x, params: (x, params))
    with pytest.raises(RuntimeError, match="Expected bfloat16"):
        moe_parity("megablocks", "softmax", "bf16-mixed", **TINY)


def test_fp32_gradients_are_required_under_bf16_mixed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights cast to bf16 outside autograd (their gradients would be bf16 or lost) fail the check."""
    right = moe_backends.cast_for_autocast

    def detached_cast(x, params):  # noqa: ANN001, ANN202
        x, cast = right(x, params)
        return x, moe_backends.ExpertParams(
            *(None if p is None else p.detach() for p in cast.__dict__.values())
        )

    monkeypatch.setattr(moe_backends, "cast_for_autocast", detached_cast)
    with pytest.raises((AssertionError, RuntimeError)):
        assert_parity("torch", "softmax", "bf16-mixed", **TINY)


def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="fp16"):
        moe_parity("torch", mode="fp16", **TINY)
