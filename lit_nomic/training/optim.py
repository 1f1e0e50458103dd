"""AdamW parameter groups and warmup learning-rate schedules for contrastive training.

Weight decay is applied only to matrices: decaying biases (dense, router and per-expert), LayerNorm
gains or the learnable temperature pulls them toward zero for no regularisation benefit (and a
decayed temperature drifts toward a uniform softmax), as BERT, CLIP and contrastors all do. The
loss-free balancing selection biases are buffers, never seen by the optimiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Schedule = Literal["constant", "linear", "cosine", "inverse_sqrt"]


@dataclass
class OptimConfig:
    """Optimiser and schedule hyper-parameters (the YAML ``model.optim`` block).

    ``total_steps`` fixes the length of the decay; by default it is ``trainer.max_steps`` (or the
    estimated stepping batches), so a resumed or extended run must set it to keep the same schedule.
    """

    lr: float = 2e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Schedule = "linear"
    min_lr_ratio: float = 0.0
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule not in ("constant", "linear", "cosine", "inverse_sqrt"):
            raise ValueError(
                f"optim.schedule={self.schedule!r} is not one of constant, linear, cosine, inverse_sqrt"
            )
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"optim.total_steps must be >= 1 or null, got {self.total_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


# Stacked per-expert biases are 2-D ([E, F], [E, D]) yet still biases: match them by name, not by ndim.
_BIAS_NAMES = frozenset({"bias", "b1", "b2", "output_bias"})


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """True for biases (incl. stacked expert biases), LayerNorm parameters, the temperature and any 0/1-D tensor."""
    leaf = name.rsplit(".", 1)[-1]
    module_path = name.lower().split(".")[:-1]
    return (
        param.ndim < 2
        or leaf in _BIAS_NAMES
        or any("norm" in part for part in module_path)
        or "logit_scale" in leaf
    )


def parameter_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups (decayed matrices, undecayed rest); groups carry ``param_names`` (torch's own key)."""
    trainable = [(n, p) for n, p in named if p.requires_grad]
    decay = [(n, p) for n, p in trainable if not no_weight_decay(n, p)]
    keep = [(n, p) for n, p in trainable if no_weight_decay(n, p)]
    groups = [
        {"params": [p for _, p in decay], "param_names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in keep], "param_names": [n for n, _ in keep], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def lr_multiplier(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """The factor on the base learning rate for optimiser step ``step`` (0-based).

    Warmup is ``(step + 1) / warmup_steps``, so the very first update already moves the weights (a
    0-based ``step / warmup`` ramp, as in ``transformers``, spends its first step at lr 0 while still
    updating Adam's moments). After warmup the schedules are the ``transformers`` ones: linear
    ``(total - step) / (total - warmup)``, half-cosine over the same span, ``inverse_sqrt``
    ``sqrt(warmup / step)``; ``min_lr_ratio`` lifts linear/cosine to a floor instead of 0.

    Why not ``transformers.get_*_schedule_with_warmup`` (compared step by step over 10,000 steps,
    ``tests/test_training_optim.py`` pins each relation):

    * warmup: ours at step ``s`` is theirs at ``s + 1`` (exactly); theirs is lower by
      ``1 / warmup_steps`` at every warmup step, starting from 0;
    * constant and cosine: bit-identical from the end of warmup to ``total_steps``; past it ours stays
      at the floor while their cosine rises again (``total_steps`` below ``max_steps`` is allowed);
    * linear and inverse_sqrt: equal within one rounding (at most 2.2e-16) after warmup, but not
      bit-identical at about a third of the steps (their ``(total - step) / span`` vs our
      ``1 - (step - warmup) / span``): switching would change every recorded run's learning rates
      in the last bit, and the quickstart's linear schedule with them;
    * ``min_lr_ratio``: their linear schedule has no floor;
    * inverse_sqrt without warmup: theirs uses a 10,000-step timescale, ours ``1 / sqrt(step)``.
    """
    warmup = cfg.warmup_steps
    if warmup and step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "inverse_sqrt":
        return math.sqrt(max(warmup, 1) / max(step, 1))
    span = max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    if cfg.schedule == "linear":
        decay = 1.0 - progress
    else:  # cosine
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def build_optimizer(
    named: list[tuple[str, nn.Parameter]], cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW(
        parameter_groups(named, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps
    )
    steps = cfg.total_steps or total_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, cfg, steps))
    return opt, sched
