"""The global batch plan: homogeneity, coverage, weighting, rank slicing, purity in (seed, epoch, step)."""

from __future__ import annotations

import numpy as np
import pytest

from lit_nomic.data.sampler import GlobalBatchPlan, SequentialPlan


def epoch_batches(plan: GlobalBatchPlan, epoch: int) -> list[tuple[int, np.ndarray]]:
    return [plan.global_batch(epoch, step) for step in range(plan.steps_per_epoch)]


def test_size_weighting_is_one_exact_pass_per_epoch() -> None:
    sizes = [103, 40, 67]
    plan = GlobalBatchPlan(sizes, 8, seed=3, weighting="size")
    assert plan.steps_per_epoch == 12 + 5 + 8
    batches = epoch_batches(plan, 0)
    for source, size in enumerate(sizes):
        rows = np.concatenate([r for s, r in batches if s == source])
        assert rows.shape == ((size // 8) * 8,)
        assert len(np.unique(rows)) == rows.shape[0]  # no row twice in an epoch
        assert rows.min() >= 0 and rows.max() < size
    assert np.bincount(plan.schedule(0), minlength=3).tolist() == [12, 5, 8]
    # the left-over rows differ between epochs because the permutation does
    left0 = set(range(103)) - set(np.concatenate([r for s, r in batches if s == 0]).tolist())
    left1 = set(range(103)) - set(np.concatenate([r for s, r in epoch_batches(plan, 1) if s == 0]).tolist())
    assert len(left0) == len(left1) == 7 and left0 != left1


def test_plan_is_a_pure_function_of_seed_epoch_step() -> None:
    a = GlobalBatchPlan([50, 90], 4, seed=11, weighting="uniform", steps_per_epoch=30)
    b = GlobalBatchPlan([50, 90], 4, seed=11, weighting="uniform", steps_per_epoch=30)
    steps = [(e, s) for e in range(3) for s in range(30)]
    forward = {key: a.global_batch(*key) for key in steps}
    for key in reversed(steps):  # random access, fresh object, other order: same batches
        source, rows = b.global_batch(*key)
        assert source == forward[key][0] and np.array_equal(rows, forward[key][1])
    other_seed = GlobalBatchPlan([50, 90], 4, seed=12, weighting="uniform", steps_per_epoch=30)
    assert not np.array_equal(a.schedule(0), other_seed.schedule(0))
    assert not np.array_equal(a.schedule(0), a.schedule(1))


def test_uniform_weighting_upsamples_small_sources_with_fresh_passes() -> None:
    plan = GlobalBatchPlan([16, 400], 4, seed=0, weighting="uniform", steps_per_epoch=400)
    schedule = plan.schedule(0)
    counts = np.bincount(schedule, minlength=2)
    assert abs(counts[0] / 400 - 0.5) < 0.06
    small = [rows for source, rows in epoch_batches(plan, 0) if source == 0]
    assert len(small) > 4  # more draws than the 4 batches one pass of 16 rows holds
    for start in range(0, len(small) - 3, 4):  # every consecutive 4 draws form one pass of all 16 rows
        assert sorted(np.concatenate(small[start : start + 4]).tolist()) == list(range(16))
    assert not np.array_equal(np.concatenate(small[0:4]), np.concatenate(small[4:8]))  # reshuffled


def test_explicit_weights_and_iid_size_weighting() -> None:
    plan = GlobalBatchPlan(
        [100, 100, 100], 2, seed=5, weighting="explicit", weights=[1, 2, 7], steps_per_epoch=5000
    )
    freq = np.bincount(plan.schedule(0), minlength=3) / 5000
    assert np.allclose(freq, [0.1, 0.2, 0.7], atol=0.02)
    iid = GlobalBatchPlan([300, 100], 2, seed=5, weighting="size", steps_per_epoch=4000)
    assert np.allclose(np.bincount(iid.schedule(0)) / 4000, [0.75, 0.25], atol=0.03)


def test_rank_slices_tile_the_global_batch() -> None:
    plan = GlobalBatchPlan([64, 48], 12, seed=2)
    for step in range(plan.steps_per_epoch):
        source, rows = plan.global_batch(0, step)
        parts = [plan.rank_batch(0, step, r, 4) for r in range(4)]
        assert all(p[0] == source for p in parts)
        assert np.array_equal(np.concatenate([p[1] for p in parts]), rows)
        assert all(p[1].shape == (3,) for p in parts)
    with pytest.raises(ValueError, match="not divisible by world size 5"):
        plan.rank_batch(0, 0, 0, 5)


def test_errors_are_explicit() -> None:
    with pytest.raises(ValueError, match="source 'tiny' has 3 rows, fewer than one global batch of 4"):
        GlobalBatchPlan([3, 10], 4, names=["tiny", "big"])
    with pytest.raises(ValueError, match="needs one weight per source"):
        GlobalBatchPlan([10], 2, weighting="explicit")
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        GlobalBatchPlan([10], 2, seed=-1)
    with pytest.raises(IndexError, match="step 5 outside the epoch"):
        GlobalBatchPlan([10], 2).global_batch(0, 5)


def test_fingerprint_reflects_what_changes_batches() -> None:
    base = GlobalBatchPlan([10, 20], 2, seed=1).fingerprint()
    assert base == GlobalBatchPlan([10, 20], 2, seed=1).fingerprint()
    assert base != GlobalBatchPlan([10, 20], 4, seed=1).fingerprint()
    assert base != GlobalBatchPlan([10, 21], 2, seed=1).fingerprint()
    assert base != GlobalBatchPlan([10, 20], 2, seed=2).fingerprint()


def test_sequential_plan_walks_sources_in_file_order() -> None:
    plan = SequentialPlan([10, 7], 3, names=["a", "b"])
    assert plan.steps_per_epoch == 3 + 2
    got = [(s, rows.tolist()) for s, rows in (plan.global_batch(0, i) for i in range(5))]
    assert got == [(0, [0, 1, 2]), (0, [3, 4, 5]), (0, [6, 7, 8]), (1, [0, 1, 2]), (1, [3, 4, 5])]
    capped = SequentialPlan([10, 7], 3, max_batches_per_source=1)
    assert [capped.global_batch(0, i)[0] for i in range(capped.steps_per_epoch)] == [0, 1]
    assert plan.rank_batch(0, 4, 1, 3)[1].tolist() == [4]
    with pytest.raises(ValueError, match="validation source 'tiny' has 2 rows"):
        SequentialPlan([2], 3, names=["tiny"])
