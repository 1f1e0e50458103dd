"""Per-step seeding of the random draws inside a training step (dropout, router jitter).

Saving the global RNG state in a checkpoint and restoring it on resume is fragile: anything that
draws from the global generator between two steps breaks the replay, and Lightning does exactly that
(every ``iter()`` of a DataLoader without its own generator draws a base seed: at the start of each
epoch, and once more when a resumed run rebuilds its loader mid-epoch; validation loaders too).
Instead every micro-batch reseeds the generators from ``(seed, epoch, batch index, rank)``, the way
fairseq seeds each update: the draws of a step are then a pure function of its position, which a
checkpoint restores exactly, so a resumed run replays the uninterrupted dropout masks by construction.
Ranks get different streams (different masks on different data), which plain ``seed_everything`` does not.
"""

from __future__ import annotations

import hashlib
import os

import torch

SEED_ENV = "PL_GLOBAL_SEED"


def global_seed(default: int = 0) -> int:
    """The run seed set by ``seed_everything`` (LightningCLI's ``seed_everything:``), else ``default``."""
    value = os.environ.get(SEED_ENV)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {SEED_ENV}={value!r} is not an integer seed") from err


def step_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """A 63-bit seed that differs for every (seed, epoch, micro-batch, rank) and is stable across runs."""
    key = f"lit-nomic-step|{seed}|{epoch}|{batch_idx}|{rank}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def seed_step(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """Reseed torch's CPU and CUDA generators for one micro-batch; returns the seed used."""
    value = step_seed(seed, epoch, batch_idx, rank)
    torch.manual_seed(value)
    return value
