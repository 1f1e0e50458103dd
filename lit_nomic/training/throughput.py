"""Training throughput measured as wall time between consecutive training steps.

The interval of step ``s`` runs from the end of step ``s-1`` to the end of step ``s``, so it contains
everything a user waits for: fetching the batch, forward, backward, the optimiser step, checkpoint
writes. Only work that is not training is cut out: the validation loop and in-training retrieval
probes call ``pause()``/``resume()`` (or ``with clock.paused():``). The first step after (re)start has
no previous step and reports nothing, instead of a rate inflated or deflated by set-up time.

Each rank logs its own rate as ``train/tokens_per_s`` through ``LightningModule.log`` with
``reduce_fx="sum"``: the job's throughput is the sum over ranks, and the value lands in
``trainer.callback_metrics``, where ``RunRecord`` reads it for run.json's ``train_tokens_per_s`` (the
mean over the steps that report a rate).

Why not Lightning's ``ThroughputMonitor`` (``lightning.pytorch.callbacks``, over
``lightning.fabric.utilities.throughput.Throughput``), read in lightning 2.6: with ``window_size=2``
its rate is the same quotient, the last step's items over the time between the last two updates
(``tests/test_training_throughput.py`` checks this; its default window averages 100 updates and
reports nothing before the 100th), but it cannot keep the rest of the meaning:

* it pauses only for the validation loop (shifting its private start time by the validation time);
  our ``RetrievalEval`` probes run inside ``on_train_batch_end``/``on_train_end`` and would count as
  training time, with no public way to pause it;
* it runs on rank 0 only and gets the job's rate as rank 0's rate times the world size, while the
  ranks' real (unpadded) token counts differ; we sum each rank's own rate;
* it logs through the logger connector directly and only on logging steps, so its values never
  reach ``trainer.callback_metrics`` (and nothing is logged without a logger): ``RunRecord`` would
  not see them, and its keys (``train/device/items_per_sec``) are not ours;
* it synchronises CUDA after every batch (we measure the host's step-to-step time, which in steady
  state averages to the same rate without stalling the queue), and warns unless the module defines
  ``flops_per_batch``.

Using only the fabric ``Throughput`` for the division would keep all of the above here and add
cumulative-count bookkeeping, so it is not used either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple


class Rates(NamedTuple):
    tokens_per_s: float
    samples_per_s: float
    seconds: float


class ThroughputClock:
    """Turns per-step token/sample counts into rates over the wall time between steps."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._last: float | None = None
        self._paused_at: float | None = None

    def reset(self) -> None:
        """Forget the previous step (call when training (re)starts)."""
        self._last = None
        self._paused_at = None

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self._clock()

    def resume(self) -> None:
        if self._paused_at is None:
            return
        if self._last is not None:
            self._last += self._clock() - self._paused_at
        self._paused_at = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def tick(self, tokens: int, samples: int) -> Rates | None:
        """Mark the end of a step that processed ``tokens``/``samples``; its rates, or None for the first."""
        self.resume()
        now = self._clock()
        last, self._last = self._last, now
        if last is None:
            return None
        seconds = max(now - last, 1e-9)
        return Rates(tokens / seconds, samples / seconds, seconds)


def batch_token_count(batch: dict[str, Any]) -> int:
    """Real (non-padding) tokens of a contrastive batch: queries, documents and negatives together.

    Counting attention masks, not ``input_ids.numel()``, keeps the rate honest: padding is neither
    computed by the unpadded encoder nor work the user asked for.
    """
    return sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask"))
