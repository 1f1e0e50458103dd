"""InfoNCELoss against a hand-written reference: explicit logits matrix, explicit masking, F.cross_entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_nomic.objectives import InfoNCELoss, false_negative_mask
from lit_nomic.objectives.infonce import masked_logits

B, D = 5, 8


def reference_loss(
    query: torch.Tensor,
    document: torch.Tensor,
    negatives: torch.Tensor | None,
    scale: torch.Tensor | float,
    symmetric: bool,
    doc_ids: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-process InfoNCE written out entry by entry; returns (loss, top-1 accuracy)."""
    q = query / query.norm(dim=-1, keepdim=True)
    d = document / document.norm(dim=-1, keepdim=True)
    cands = d if negatives is None else torch.cat([d, negatives / negatives.norm(dim=-1, keepdim=True)])
    n = q.shape[0]
    rows_qd, rows_dq = [], []
    for i in range(n):
        row = torch.stack([scale * torch.dot(q[i], c) for c in cands])
        back = torch.stack([scale * torch.dot(d[i], qj) for qj in q])
        if doc_ids is not None:
            for j in range(n):
                if j != i and doc_ids[j] == doc_ids[i]:
                    row = row.index_put((torch.tensor([j]),), torch.tensor(float("-inf"), dtype=row.dtype))
                    back = back.index_put((torch.tensor([j]),), torch.tensor(float("-inf"), dtype=back.dtype))
        rows_qd.append(row)
        rows_dq.append(back)
    labels = torch.arange(n)
    logits = torch.stack(rows_qd)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(torch.stack(rows_dq), labels))
    accuracy = (logits.argmax(dim=1) == labels).double().mean()
    return loss, accuracy


def batch(
    n_neg: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    q = torch.randn(B, D, dtype=dtype)
    d = q + 0.8 * torch.randn(B, D, dtype=dtype)  # correlated so accuracy is neither 0 nor 1 by construction
    negs = torch.randn(B * n_neg, D, dtype=dtype) if n_neg else None
    return q, d, negs


@pytest.mark.parametrize("n_neg", [0, 3])
@pytest.mark.parametrize("symmetric", [False, True])
def test_matches_reference(n_neg: int, symmetric: bool) -> None:
    q, d, negs = batch(n_neg)
    out = InfoNCELoss(symmetric=symmetric)(q, d, negs)
    ref, ref_acc = reference_loss(q, d, negs, 50.0, symmetric)
    torch.testing.assert_close(out.loss, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out.accuracy, ref_acc)
    assert out.logit_scale.item() == pytest.approx(50.0)


def test_gradients_match_reference() -> None:
    q, d, negs = batch(2)
    q.requires_grad_()
    d.requires_grad_()
    InfoNCELoss(temperature=0.05, symmetric=True)(q, d, negs).loss.backward()
    got = (q.grad.clone(), d.grad.clone())
    q.grad = d.grad = None
    reference_loss(q, d, negs, 20.0, symmetric=True)[0].backward()
    torch.testing.assert_close(got[0], q.grad)
    torch.testing.assert_close(got[1], d.grad)


def test_normalisation_inside_and_idempotent() -> None:
    q, d, negs = batch(2)
    loss = InfoNCELoss()
    base = loss(q, d, negs).loss
    rescaled = loss(3.0 * q, 0.1 * d, 7.0 * negs).loss
    renormalised = loss(F.normalize(q, dim=-1), F.normalize(d, dim=-1), F.normalize(negs, dim=-1)).loss
    torch.testing.assert_close(rescaled, base)
    torch.testing.assert_close(renormalised, base)


def test_learnable_temperature_gets_reference_gradient() -> None:
    q, d, negs = batch(2)
    loss = InfoNCELoss(temperature=0.07, learn_temperature=True, symmetric=True)
    assert [name for name, _ in loss.named_parameters()] == ["log_logit_scale"]
    loss(q, d, negs).loss.backward()
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    reference_loss(q, d, negs, log_scale.exp(), symmetric=True)[0].backward()
    assert loss.log_logit_scale.grad is not None and loss.log_logit_scale.grad.abs() > 0
    torch.testing.assert_close(loss.log_logit_scale.grad.double(), log_scale.grad, rtol=1e-5, atol=1e-7)


def test_learned_scale_is_capped_like_clip() -> None:
    q, d, _ = batch(0)
    loss = InfoNCELoss(learn_temperature=True, max_logit_scale=100.0)
    with torch.no_grad():
        loss.log_logit_scale.fill_(math.log(250.0))
    out = loss(q, d)
    assert out.logit_scale.item() == pytest.approx(100.0)
    out.loss.backward()
    assert loss.log_logit_scale.grad.item() == 0.0  # above the cap the scale stops moving
    torch.testing.assert_close(out.loss, reference_loss(q, d, None, 100.0, False)[0])


def test_fixed_temperature_is_exact_and_survives_low_precision_casts() -> None:
    loss = InfoNCELoss(temperature=0.02).to(torch.bfloat16)  # what a "bf16-true" precision plugin does
    assert list(loss.parameters()) == [] and loss.state_dict() == {}
    assert loss.logit_scale.item() == 50.0
    q, d, _ = batch(0)
    assert loss(q, d).logit_scale.item() == 50.0


def test_false_negative_mask_entries() -> None:
    ids = torch.tensor([0, 1, 0, 2, 1, 0])
    mask = false_negative_mask(ids[2:4], ids, offset=2)  # rank holding global rows 2 and 3
    expected = torch.zeros(2, 6, dtype=torch.bool)
    expected[0, 0] = expected[0, 5] = True  # row 2 (id 0) vs the other id-0 positives, not its own column 2
    assert torch.equal(mask, expected)


def test_masking_changes_exactly_the_masked_logits() -> None:
    q, d, negs = batch(2)
    ids = torch.tensor([4, 7, 4, 9, 7])
    mask = false_negative_mask(ids, ids, offset=0)
    cands = torch.cat([d, negs])
    plain = masked_logits(q, cands, torch.tensor(50.0, dtype=q.dtype), None)
    masked = masked_logits(q, cands, torch.tensor(50.0, dtype=q.dtype), mask)
    changed = plain != masked
    assert torch.equal(changed[:, :B], mask)
    assert not changed[:, B:].any()  # hard-negative columns untouched
    assert torch.isneginf(masked[changed]).all()


@pytest.mark.parametrize("symmetric", [False, True])
def test_masked_loss_matches_reference(symmetric: bool) -> None:
    q, d, negs = batch(2)
    ids = [4, 7, 4, 9, 7]
    out = InfoNCELoss(symmetric=symmetric)(q, d, negs, doc_ids=torch.tensor(ids))
    ref, ref_acc = reference_loss(q, d, negs, 50.0, symmetric, doc_ids=ids)
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.accuracy, ref_acc)
    unmasked = InfoNCELoss(symmetric=symmetric)(q, d, negs).loss
    assert out.loss < unmasked  # removing candidates can only lower each row's log-sum-exp


def test_masked_duplicate_gets_no_gradient_from_its_twin() -> None:
    """Query 0's loss must not push away document 2 when both positives are the same text."""
    q, d, _ = batch(0)
    d.requires_grad_()
    ids = torch.tensor([4, 7, 4, 9, 7])
    loss = InfoNCELoss()
    qn = F.normalize(q, dim=-1)
    dn = F.normalize(d, dim=-1)
    only_row0 = F.cross_entropy(
        masked_logits(qn[:1], dn, torch.tensor(50.0, dtype=q.dtype), false_negative_mask(ids[:1], ids, 0)),
        torch.tensor([0]),
    )
    (grad,) = torch.autograd.grad(only_row0, d)
    assert torch.all(grad[2] == 0) and grad[1].abs().sum() > 0
    assert loss(q, d, doc_ids=ids).loss.isfinite()


def test_low_precision_inputs_are_scored_in_fp32() -> None:
    q, d, negs = batch(2, dtype=torch.float32)
    full = InfoNCELoss()(q, d, negs)
    half = InfoNCELoss()(q.bfloat16(), d.bfloat16(), negs.bfloat16())
    assert half.loss.dtype == torch.float32
    torch.testing.assert_close(half.loss, full.loss, atol=0.15, rtol=0.02)


def test_local_only_equals_gathered_when_not_distributed() -> None:
    q, d, negs = batch(2)
    ids = torch.tensor([0, 1, 0, 2, 3])
    gathered = InfoNCELoss(symmetric=True)(q, d, negs, ids)
    local = InfoNCELoss(symmetric=True, gather_across_ranks=False)(q, d, negs, ids)
    torch.testing.assert_close(gathered.loss, local.loss)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"document": torch.randn(4, D)}, r"query \(5, 8\) and document \(4, 8\)"),
        ({"negatives": torch.randn(7, D)}, "7 rows, not a positive multiple of the batch size 5"),
        ({"negatives": torch.randn(10, D + 1)}, r"negatives must be \[batch \* n, 8\]"),
        ({"doc_ids": torch.zeros(B, dtype=torch.int32)}, r"doc_ids must be an int64 tensor of shape \(5,\)"),
        ({"query": torch.randn(0, D), "document": torch.randn(0, D)}, "empty batch"),
        ({"query": torch.randn(B, D, 2)}, "must be"),
    ],
)
def test_bad_input_is_named(kwargs: dict[str, torch.Tensor], message: str) -> None:
    args = {"query": torch.randn(B, D), "document": torch.randn(B, D), "negatives": None, "doc_ids": None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        InfoNCELoss()(**args)


def test_bad_temperature_is_rejected() -> None:
    with pytest.raises(
        ValueError, match="temperature 0.005 gives logit scale 200, above max_logit_scale 100"
    ):
        InfoNCELoss(temperature=0.005)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        InfoNCELoss(temperature=0.0)
