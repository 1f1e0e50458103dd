"""ContrastiveModule: the loss it optimises, what it logs, how it balances routers and seeds steps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from train_common_loader import load_train_common

from lit_nomic.objectives.infonce import InfoNCELoss
from lit_nomic.training.expert_stats import coefficient_of_variation, expert_load_metrics
from lit_nomic.training.module import ContrastiveModule
from lit_nomic.training.optim import lr_multiplier
from lit_nomic.training.seeding import seed_step, step_seed
from lit_nomic.training.throughput import ThroughputClock, batch_token_count

common = load_train_common()


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return common.write_toy_pairs(tmp_path_factory.mktemp("toy") / "pairs.jsonl")


def _batch(data: Path, batch_size: int = 8, step: int = 0) -> dict[str, Any]:
    datamodule = common.make_datamodule(data, batch_size)
    datamodule.build()
    return datamodule.dataset.batch(0, step)


def _trainer(root: Path, steps: int, **kwargs: Any) -> L.Trainer:
    options = {**common.quiet_trainer_kwargs(root), **kwargs}
    return L.Trainer(max_steps=steps, **options)


# ----------------------------------------------------------------------------- the loss
def test_total_is_infonce_plus_weighted_router_losses(toy: Path) -> None:
    torch.manual_seed(0)
    module = common.make_module(common.tiny_moe_spec(aux_loss_coef=0.5, z_loss_coef=0.1))
    batch = _batch(toy)
    out = module.compute_losses(batch)
    q, d = out.passes
    # Router losses: summed over the query and document passes, each already a mean over MoE layers.
    torch.testing.assert_close(out.aux_loss, (q.aux_loss + d.aux_loss).detach())
    torch.testing.assert_close(out.z_loss, (q.z_loss + d.z_loss).detach())
    torch.testing.assert_close(out.loss, out.infonce + 0.5 * out.aux_loss + 0.1 * out.z_loss)
    reference = InfoNCELoss(temperature=0.05)(q.embeddings, d.embeddings, None, batch["doc_ids"])
    torch.testing.assert_close(out.infonce, reference.loss)
    # A freshly initialised router is near uniform: the balancing loss is ~1 per pass (E*sum f*p).
    assert 1.8 < float(out.aux_loss) < 2.5
    assert float(out.z_loss) > 0


def test_balancing_loss_reaches_the_router(toy: Path) -> None:
    batch = _batch(toy)
    grads = []
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        module = common.make_module(common.tiny_moe_spec(aux_loss_coef=coef, z_loss_coef=0.0))
        module.compute_losses(batch).loss.backward()
        grads.append(module.encoder.blocks[1].ffn.router.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1], atol=1e-7)


def test_matryoshka_through_the_module(toy: Path) -> None:
    torch.manual_seed(0)
    spec = common.tiny_moe_spec()
    module = common.make_module(spec, matryoshka_dims=[64, 32], matryoshka_weights=[1.0, 0.5])
    batch = _batch(toy)
    out = module.compute_losses(batch)
    q, d = out.passes
    base = InfoNCELoss(temperature=0.05)
    full = base(q.embeddings, d.embeddings, None, batch["doc_ids"]).loss
    half = base(q.embeddings[:, :32], d.embeddings[:, :32], None, batch["doc_ids"]).loss
    assert sorted(out.per_dim_loss) == [32, 64]
    torch.testing.assert_close(out.per_dim_loss[64], full.detach())
    torch.testing.assert_close(out.per_dim_loss[32], half.detach())
    torch.testing.assert_close(out.infonce, full + 0.5 * half)
    out.loss.backward()
    assert module.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_loss_falls_on_a_toy_set(toy: Path, tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    module = common.make_module(common.tiny_moe_spec(), lr=2e-3)
    log = tmp_path / "losses.jsonl"
    trainer = _trainer(tmp_path, 30, callbacks=[common.LossRecorder(log)])
    trainer.fit(module, datamodule=common.make_datamodule(toy, batch_size=16))
    losses = [json.loads(line)["infonce"] for line in log.read_text().splitlines()]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, losses  # ln(16) = 2.77 at chance


def test_module_needs_a_model_spec() -> None:
    with pytest.raises(ValueError, match="needs model="):
        ContrastiveModule()


# ----------------------------------------------------------------------------- loss-free balancing
class _TokenCounter(L.Callback):
    """Real query+document tokens of every micro-batch, in training order."""

    def __init__(self) -> None:
        self.tokens: list[int] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: dict[str, Any], *args: Any
    ) -> None:
        self.tokens.append(batch_token_count(batch))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_loss_free_biases_move_once_per_optimizer_step(toy: Path, tmp_path: Path, accumulate: int) -> None:
    L.seed_everything(0, verbose=False)
    module = common.make_module(common.tiny_moe_spec())
    encoder = module.encoder
    seen: list[list[float]] = []
    original = encoder.update_loss_free_biases

    def spy() -> None:
        seen.append([float(layer.load_accumulator.sum()) for layer in encoder.moe_layers])
        original()

    encoder.update_loss_free_biases = spy  # type: ignore[method-assign]
    counter = _TokenCounter()
    trainer = _trainer(tmp_path, 3, callbacks=[counter], accumulate_grad_batches=accumulate)
    trainer.fit(module, datamodule=common.make_datamodule(toy, batch_size=4))
    assert len(counter.tokens) == 3 * accumulate
    assert len(seen) == 3  # one update per optimiser step, however many micro-batches
    top_k = encoder.config.top_k
    for i, loads in enumerate(seen):
        # The accumulator holds every routed assignment of the step's micro-batches (q and d passes).
        expected = top_k * sum(counter.tokens[i * accumulate : (i + 1) * accumulate])
        assert loads == [expected] * len(encoder.moe_layers), (i, loads, expected)
    for layer in encoder.moe_layers:
        assert float(layer.load_accumulator.sum()) == 0.0  # reset after each update
        steps = layer.selection_bias / 0.01
        assert torch.allclose(steps, steps.round(), atol=1e-4) and float(steps.abs().max()) <= 3
    assert any(float(layer.selection_bias.abs().sum()) > 0 for layer in encoder.moe_layers)


# ----------------------------------------------------------------------------- logging
def test_per_source_curves_have_a_point_only_where_the_source_was_drawn(toy: Path, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lit_nomic.data.datamodule import ContrastiveDataModule
    from lit_nomic.data.mixture import SourceSpec

    class DrawnSources(L.Callback):
        def __init__(self) -> None:
            self.by_step: dict[int, str] = {}

        def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
            self.by_step[trainer.global_step] = str(batch["source"])

    specs = [
        SourceSpec(name=n, path=str(toy), query_prefix="", document_prefix="", max_query_length=32,
                   max_document_length=32)
        for n in ("a", "b")
    ]  # fmt: skip
    datamodule = ContrastiveDataModule(
        sources=specs, tokenizer=common.TOKENIZER, batch_size=8, weighting="uniform"
    )
    L.seed_everything(0, verbose=False)
    module = common.make_module(common.tiny_moe_spec())
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    drawn = DrawnSources()
    steps = 8
    trainer = _trainer(tmp_path, steps, logger=logger, log_every_n_steps=1, callbacks=[drawn])
    trainer.fit(module, datamodule=datamodule)
    events = EventAccumulator(str(Path(logger.log_dir)), size_guidance={"scalars": 0})
    events.Reload()
    assert sorted(drawn.by_step) == list(range(steps)) and set(drawn.by_step.values()) == {"a", "b"}
    for source in ("a", "b"):
        expected = sorted(s for s, name in drawn.by_step.items() if name == source)
        for tag in (f"train/infonce/{source}", f"train/accuracy/{source}"):
            assert sorted(e.step for e in events.Scalars(tag)) == expected, tag


def test_tensorboard_receives_every_training_signal(toy: Path, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    L.seed_everything(0, verbose=False)
    module = common.make_module(common.tiny_moe_spec(aux_loss_coef=0.01, z_loss_coef=0.001))
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    steps = 4
    trainer = _trainer(tmp_path, steps, logger=logger, log_every_n_steps=1)
    trainer.fit(module, datamodule=common.make_datamodule(toy, batch_size=8))
    events = EventAccumulator(str(Path(logger.log_dir)), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    required = {
        "train/loss", "train/infonce", "train/aux_loss", "train/z_loss", "train/accuracy",
        "train/accuracy/toy", "train/infonce/toy", "train/lr", "train/temperature", "train/logit_scale",
        "train/tokens_per_s", "train/samples_per_s",
    }  # fmt: skip
    for layer in (1, 3):  # tiny-moe: MoE FFN in blocks 1 and 3
        required |= {f"moe/layer{layer}/load_cv", f"moe/layer{layer}/router_entropy"}
        required |= {f"moe/layer{layer}/expert{e}" for e in range(4)}
    assert required <= tags, sorted(required - tags)

    def series(tag: str) -> list[float]:
        return [e.value for e in sorted(events.Scalars(tag), key=lambda e: e.step)]

    total, infonce, aux, z = (series(f"train/{k}") for k in ("loss", "infonce", "aux_loss", "z_loss"))
    assert len(total) == steps
    assert series("train/infonce/toy") == pytest.approx(infonce)  # one source: the same curve
    for t, i, a, zz in zip(total, infonce, aux, z, strict=True):
        assert t == pytest.approx(i + 0.01 * a + 0.001 * zz, rel=1e-6, abs=1e-6)
    cfg = module.optim_config
    assert series("train/lr") == pytest.approx([cfg.lr * lr_multiplier(s, cfg, steps) for s in range(steps)])
    assert series("train/temperature") == pytest.approx([0.05] * steps)
    assert len(series("train/tokens_per_s")) == steps - 1  # the first step has no previous step
    assert all(v > 0 for v in series("train/tokens_per_s"))
    for layer in (1, 3):
        fractions = [series(f"moe/layer{layer}/expert{e}") for e in range(4)]
        for per_step in zip(*fractions, strict=True):
            assert sum(per_step) == pytest.approx(1.0, abs=1e-5)
        assert all(0 < h <= math.log(4) + 1e-5 for h in series(f"moe/layer{layer}/router_entropy"))


def test_expert_load_metrics_values() -> None:
    class Pass:
        def __init__(self, counts: list[list[int]], entropy: list[float]) -> None:
            self.tokens_per_expert = [torch.tensor(c) for c in counts]
            self.router_entropy = [torch.tensor(h) for h in entropy]

    passes = [Pass([[6, 2, 0, 0], [2, 2, 2, 2]], [0.5, 1.0]), Pass([[2, 6, 0, 0], [1, 1, 1, 1]], [0.2, 0.4])]
    metrics = expert_load_metrics(passes, layer_ids=[1, 3])
    assert [metrics[f"layer1/expert{e}"] for e in range(4)] == [0.5, 0.5, 0.0, 0.0]
    assert metrics["layer1/load_cv"] == pytest.approx(1.0)  # std 0.25 / mean 0.25
    assert metrics["layer3/load_cv"] == pytest.approx(0.0)
    assert metrics["layer1/router_entropy"] == pytest.approx((0.5 * 8 + 0.2 * 8) / 16)  # token-weighted
    assert metrics["layer3/router_entropy"] == pytest.approx((1.0 * 8 + 0.4 * 4) / 12)
    collapsed = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert float(coefficient_of_variation(collapsed)) == pytest.approx(math.sqrt(3))
    with pytest.raises(ValueError, match="2 MoE layers reported but 1 layer ids"):
        expert_load_metrics(passes, layer_ids=[1])


def test_throughput_is_tokens_over_wall_time_between_steps() -> None:
    now = [0.0]
    clock = ThroughputClock(lambda: now[0])
    assert clock.tick(100, 4) is None  # no previous step
    now[0] = 2.0
    rates = clock.tick(300, 6)
    assert rates is not None and rates.tokens_per_s == 150.0 and rates.samples_per_s == 3.0
    now[0] = 3.0
    with clock.paused():  # e.g. a validation loop or a retrieval probe: not training time
        now[0] = 53.0
    now[0] = 54.0
    rates = clock.tick(200, 2)
    assert rates is not None and rates.seconds == pytest.approx(2.0) and rates.tokens_per_s == 100.0
    batch = {
        "query_input_ids": torch.ones(2, 5, dtype=torch.long),
        "query_attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
        "doc_attention_mask": torch.tensor([[1, 1], [1, 0]]),
        "doc_ids": torch.tensor([7, 8]),
    }
    assert batch_token_count(batch) == 11  # padding is not counted


# ----------------------------------------------------------------------------- seeding
def test_step_seeds_are_stable_and_distinct() -> None:
    assert step_seed(0, 1, 2, 0) == step_seed(0, 1, 2, 0)
    seeds = {step_seed(s, e, b, r) for s in (0, 1) for e in (0, 1) for b in range(4) for r in (0, 1)}
    assert len(seeds) == 32
    dropout = torch.nn.Dropout(0.5)
    seed_step(0, 0, 3, 0)
    a = dropout(torch.ones(64))
    torch.manual_seed(123)  # anything drawn in between (a DataLoader iter(), a callback) is irrelevant
    seed_step(0, 0, 3, 0)
    b = dropout(torch.ones(64))
    seed_step(0, 0, 3, 1)
    c = dropout(torch.ones(64))
    assert torch.equal(a, b) and not torch.equal(a, c)
