"""How ThroughputClock relates to Lightning's throughput utility (the reason it is kept: throughput.py)."""

from __future__ import annotations

import pytest
from lightning.fabric.utilities.throughput import Throughput

from lit_nomic.training.throughput import ThroughputClock


def test_the_rate_is_lightnings_two_update_window_plus_pauses() -> None:
    """Same quotient as fabric's Throughput(window_size=2) fed pause-free time; only ours pauses."""
    steps = [(1.0, 100, 4), (3.0, 300, 6), (3.5, 50, 2), (7.0, 700, 8)]  # (end time, tokens, samples)
    now = [0.0]
    clock = ThroughputClock(lambda: now[0])
    lightning = Throughput(window_size=2)
    tokens_seen = samples_seen = 0
    for batches, (end, tokens, samples) in enumerate(steps, start=1):
        now[0] = end
        ours = clock.tick(tokens, samples)
        tokens_seen, samples_seen = tokens_seen + tokens, samples_seen + samples
        lightning.update(time=end, batches=batches, samples=samples_seen, lengths=tokens_seen)
        theirs = lightning.compute()
        if ours is None:  # the first step: neither reports a rate
            assert "device/items_per_sec" not in theirs
            continue
        assert ours.tokens_per_s == pytest.approx(theirs["device/items_per_sec"], rel=1e-12)
        assert ours.samples_per_s == pytest.approx(theirs["device/samples_per_sec"], rel=1e-12)

    # A retrieval probe between two steps: ours leaves it out, Lightning's Throughput cannot know of it.
    now[0] = 8.0
    with clock.paused():
        now[0] = 100.0
    now[0] = 101.0
    rates = clock.tick(400, 4)
    assert rates is not None and rates.seconds == pytest.approx(2.0)  # 7 -> 8 and 100 -> 101
