"""AdamW parameter groups and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_inverse_sqrt_schedule,
    get_linear_schedule_with_warmup,
)

from lit_nomic.model.build import ModelSpec
from lit_nomic.training.module import ContrastiveModule, LossConfig
from lit_nomic.training.optim import OptimConfig, build_optimizer, lr_multiplier, no_weight_decay


@pytest.fixture(scope="module")
def module() -> ContrastiveModule:
    overrides = {
        "expert_bias": True,
        "router_bias": True,
        "num_shared_experts": 1,
        "loss_free_balancing": True,
    }
    return ContrastiveModule(
        model=ModelSpec(preset="tiny-moe", overrides=overrides), loss=LossConfig(learn_temperature=True)
    )


def test_weight_decay_only_on_matrices(module: ContrastiveModule) -> None:
    cfg = OptimConfig(lr=1e-3, weight_decay=0.1)
    opt, _ = build_optimizer(list(module.named_parameters()), cfg, total_steps=10)
    by_decay = {g["weight_decay"]: set(g["param_names"]) for g in opt.param_groups}
    decayed, kept = by_decay[0.1], by_decay[0.0]
    assert not decayed & kept
    assert decayed | kept == {n for n, p in module.named_parameters() if p.requires_grad}
    no_decay = [
        "loss_fn.log_logit_scale",  # the learned temperature
        "embedder.encoder.embeddings.norm.weight",
        "embedder.encoder.embeddings.norm.bias",
        "embedder.encoder.blocks.0.norm1.weight",
        "embedder.encoder.blocks.0.attn.qkv.bias",
        "embedder.encoder.blocks.1.ffn.router.bias",
        "embedder.encoder.blocks.1.ffn.experts.b1",  # [E, F]: 2-D, still a bias
        "embedder.encoder.blocks.1.ffn.experts.b2",
        "embedder.encoder.blocks.1.ffn.output_bias",
        "embedder.encoder.blocks.1.ffn.shared_expert.fc1.bias",
    ]
    decay = [
        "embedder.encoder.embeddings.word_embeddings.weight",
        "embedder.encoder.blocks.0.attn.qkv.weight",
        "embedder.encoder.blocks.0.ffn.fc1.weight",
        "embedder.encoder.blocks.1.ffn.router.weight",
        "embedder.encoder.blocks.1.ffn.experts.w1",
        "embedder.encoder.blocks.1.ffn.experts.w2",
        "embedder.encoder.blocks.1.ffn.shared_expert.fc2.weight",
    ]
    assert set(no_decay) <= kept, sorted(set(no_decay) - kept)
    assert set(decay) <= decayed, sorted(set(decay) - decayed)
    # Router selection biases are buffers, not parameters: the optimiser never touches them.
    assert not any("selection_bias" in n for n in decayed | kept)


def test_no_weight_decay_rule() -> None:
    matrix = torch.nn.Parameter(torch.zeros(2, 2))
    assert no_weight_decay("encoder.blocks.0.norm2.weight", matrix)
    assert no_weight_decay("ffn.experts.b1", matrix)
    assert not no_weight_decay("ffn.experts.w1", matrix)
    assert no_weight_decay("any.vector", torch.nn.Parameter(torch.zeros(3)))


def _multipliers(cfg: OptimConfig, total: int) -> list[float]:
    return [lr_multiplier(s, cfg, total) for s in range(total + 2)]


def test_warmup_is_linear_from_the_first_step() -> None:
    cfg = OptimConfig(warmup_steps=4, schedule="constant")
    assert _multipliers(cfg, 6)[:6] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "schedule, reference",
    [
        ("linear", lambda o: get_linear_schedule_with_warmup(o, 4, 20)),
        ("cosine", lambda o: get_cosine_schedule_with_warmup(o, 4, 20)),
        ("inverse_sqrt", lambda o: get_inverse_sqrt_schedule(o, 4)),
    ],
)
def test_schedules_match_transformers_after_warmup(schedule: str, reference: object) -> None:
    cfg = OptimConfig(warmup_steps=4, schedule=schedule)  # type: ignore[arg-type]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = reference(opt)  # type: ignore[operator]
    # Steps warmup..total (past the end transformers' cosine rises again; ours stays at the floor).
    ours = [lr_multiplier(s, cfg, 20) for s in range(4, 21)]
    theirs = [hf.lr_lambdas[0](s) for s in range(4, 21)]
    assert ours == pytest.approx(theirs, abs=1e-12)


def _transformers_multiplier(schedule: str, warmup: int, total: int):  # noqa: ANN202 - step -> factor
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    made = {
        "constant": lambda: get_constant_schedule_with_warmup(opt, warmup),
        "linear": lambda: get_linear_schedule_with_warmup(opt, warmup, total),
        "cosine": lambda: get_cosine_schedule_with_warmup(opt, warmup, total),
        "inverse_sqrt": lambda: get_inverse_sqrt_schedule(opt, warmup),
    }[schedule]()
    return made.lr_lambdas[0]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "inverse_sqrt"])
@pytest.mark.parametrize("warmup, total", [(4, 40), (100, 1000)])
def test_relation_to_transformers_step_by_step(schedule: str, warmup: int, total: int) -> None:
    """Why optim.py keeps its own schedules (its lr_multiplier docstring): what differs, and by how much."""
    cfg = OptimConfig(warmup_steps=warmup, schedule=schedule)  # type: ignore[arg-type]
    theirs = _transformers_multiplier(schedule, warmup, total)
    ours = [lr_multiplier(s, cfg, total) for s in range(total + 1)]
    # Warmup: ours is theirs one step later, exactly; theirs starts at 0.
    assert ours[:warmup] == [theirs(s + 1) for s in range(warmup)]
    assert theirs(0) == 0.0 and all(ours[s] - theirs(s) == pytest.approx(1 / warmup) for s in range(warmup))
    after = [(ours[s], theirs(s)) for s in range(warmup, total + 1)]
    if schedule in ("constant", "cosine"):
        assert all(a == b for a, b in after)  # bit-identical up to total_steps
    else:  # the same function, rounded differently at some steps
        assert max(abs(a - b) for a, b in after) <= 2.3e-16
        assert any(a != b for a, b in after)


def test_where_transformers_differs_beyond_rounding() -> None:
    cosine = OptimConfig(warmup_steps=4, schedule="cosine")
    theirs = _transformers_multiplier("cosine", 4, 40)
    assert lr_multiplier(50, cosine, 40) == 0.0 and theirs(50) > 0.05  # past the end theirs rises again
    no_warmup = OptimConfig(warmup_steps=0, schedule="inverse_sqrt")
    theirs = _transformers_multiplier("inverse_sqrt", 0, 40)
    assert lr_multiplier(4, no_warmup, 40) == 0.5 and theirs(4) > 0.99  # theirs: a 10,000-step timescale


def test_schedule_values() -> None:
    linear = OptimConfig(warmup_steps=2, schedule="linear")
    assert lr_multiplier(2, linear, 12) == 1.0
    assert lr_multiplier(7, linear, 12) == pytest.approx(0.5)
    assert lr_multiplier(12, linear, 12) == 0.0
    assert lr_multiplier(50, linear, 12) == 0.0  # past the end: stays at the floor
    cosine = OptimConfig(warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    assert lr_multiplier(7, cosine, 12) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(12, cosine, 12) == pytest.approx(0.1)
    inv = OptimConfig(warmup_steps=4, schedule="inverse_sqrt")
    assert lr_multiplier(16, inv, 100) == pytest.approx(0.5)
    assert lr_multiplier(3, inv, 100) == 1.0


def test_scheduler_applies_multipliers_per_step() -> None:
    param = torch.nn.Parameter(torch.zeros(2, 2))
    cfg = OptimConfig(lr=0.1, warmup_steps=2, schedule="cosine")
    opt, sched = build_optimizer([("w", param)], cfg, total_steps=10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1 * lr_multiplier(s, cfg, 10) for s in range(10)])
    assert seen[0] == pytest.approx(0.05) and seen[1] == pytest.approx(0.1)
    assert seen[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": 0.0}, "optim.lr must be > 0"),
        ({"warmup_steps": -1}, "optim.warmup_steps must be >= 0"),
        ({"schedule": "step"}, "optim.schedule='step' is not one of"),
        ({"min_lr_ratio": 1.5}, r"optim.min_lr_ratio must be in \[0, 1\]"),
        ({"total_steps": 0}, "optim.total_steps must be >= 1 or null"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OptimConfig(**kwargs)
