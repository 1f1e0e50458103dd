"""MatryoshkaLoss equals the weighted sum of the base loss on separately re-normalised prefixes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_nomic.objectives import ContrastiveOutput, InfoNCELoss, MatryoshkaLoss

B, D, N_NEG = 6, 12, 2


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.randn(B, D, dtype=torch.float64)
    d = q + torch.randn(B, D, dtype=torch.float64)
    negs = torch.randn(B * N_NEG, D, dtype=torch.float64)
    ids = torch.tensor([0, 1, 2, 0, 3, 1])
    return q, d, negs, ids


def separate_losses(
    base: InfoNCELoss,
    dims: list[int],
    weights: list[float],
    q: torch.Tensor,
    d: torch.Tensor,
    negs: torch.Tensor,
    ids: torch.Tensor,
) -> torch.Tensor:
    """Σ_m w_m · L(unit(x[:, :m])) — each slice re-normalised explicitly before the base loss sees it."""
    unit = lambda t, m: F.normalize(t[:, :m], dim=-1)
    return sum(
        w * base(unit(q, m), unit(d, m), unit(negs, m), ids).loss for m, w in zip(dims, weights, strict=True)
    )


@pytest.mark.parametrize("symmetric", [False, True])
def test_equals_weighted_sum_of_renormalised_slices(symmetric: bool) -> None:
    q, d, negs, ids = inputs()
    base = InfoNCELoss(temperature=0.05, symmetric=symmetric)
    dims, weights = [12, 4], [1.0, 0.25]
    out = MatryoshkaLoss(base, dims, weights)(q, d, negs, ids)
    torch.testing.assert_close(out.loss, separate_losses(base, dims, weights, q, d, negs, ids))
    assert sorted(out.per_dim_loss) == [4, 12]
    full = base(q, d, negs, ids)
    torch.testing.assert_close(out.per_dim_loss[12], full.loss)
    torch.testing.assert_close(out.accuracy, full.accuracy)  # reported for the widest prefix


def test_gradients_match_and_learned_temperature_is_shared() -> None:
    q, d, negs, ids = inputs()
    q.requires_grad_()
    base = InfoNCELoss(temperature=0.05, learn_temperature=True, symmetric=True)
    MatryoshkaLoss(base, [12, 8, 4])(q, d, negs, ids).loss.backward()
    got_q, got_scale = q.grad.clone(), base.log_logit_scale.grad.clone()
    q.grad = base.log_logit_scale.grad = None
    separate_losses(base, [12, 8, 4], [1.0, 1.0, 1.0], q, d, negs, ids).backward()
    torch.testing.assert_close(got_q, q.grad)
    torch.testing.assert_close(got_scale, base.log_logit_scale.grad)


class _NonGatheringLoss(nn.Module):
    """A base loss without gather()/loss_on(): MatryoshkaLoss must fall back to calling it per prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = InfoNCELoss(temperature=0.05)

    def forward(
        self,
        query: torch.Tensor,
        document: torch.Tensor,
        negatives: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> ContrastiveOutput:
        return self.inner(query, document, negatives, doc_ids)


def test_generic_base_loss_fallback_agrees() -> None:
    q, d, negs, ids = inputs()
    dims = [12, 6]
    fast = MatryoshkaLoss(InfoNCELoss(temperature=0.05), dims)(q, d, negs, ids)
    generic = MatryoshkaLoss(_NonGatheringLoss(), dims)(q, d, negs, ids)
    torch.testing.assert_close(generic.loss, fast.loss)


@pytest.mark.parametrize(
    ("dims", "weights", "message"),
    [
        ([], None, "at least one"),
        ([12, 0], None, "positive integers"),
        ([8, 8], None, "distinct"),
        ([12, 4], [1.0], "got 1 weights for 2 dims"),
        ([12, 4], [1.0, -1.0], "non-negative"),
    ],
)
def test_bad_configuration_is_rejected(dims: list[int], weights: list[float] | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MatryoshkaLoss(InfoNCELoss(), dims, weights)


def test_prefix_wider_than_embedding_is_rejected() -> None:
    q, d, negs, ids = inputs()
    with pytest.raises(ValueError, match=r"dims \[768, 256\] exceed the embedding width 12"):
        MatryoshkaLoss(InfoNCELoss(), [768, 256])(q, d, negs, ids)
