"""Every YAML in experiments/ parses with the LightningCLI parser, and what can be built on CPU builds.

The nomic-v2 recipes name GPUs, multi-node meshes and Hub checkpoints that are not here: they are
parsed (types, class paths, callback arguments) and their architecture is built on the meta device.
The CPU recipes (quickstart and its dense baseline) are instantiated completely, model and data.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

from lit_nomic.model.build import ModelSpec, target_config
from lit_nomic.model.encoder import Encoder
from lit_nomic.training.cli import LitNomicCLI, build_cli
from lit_nomic.training.module import ContrastiveModule

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
YAMLS = sorted(EXPERIMENTS.glob("*.yaml"))
CPU_RECIPES = ("quickstart.yaml", "minilm-dense-finetune.yaml")


class ParseOnlyCLI(LitNomicCLI):
    """Parse and validate a config without instantiating anything."""

    def instantiate_classes(self) -> None:
        pass


def _parse(path: Path, *extra: str) -> Any:
    return build_cli(["--config", str(path), *extra], run=False, cli_class=ParseOnlyCLI).config


def test_the_recipes_are_all_there() -> None:
    names = {p.name for p in YAMLS}
    assert {
        "quickstart.yaml",
        "minilm-dense-finetune.yaml",
        "nomic-v2-pretrain.yaml",
        "nomic-v2-finetune.yaml",
    } <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_every_experiment_parses(path: Path) -> None:
    config = _parse(path)
    spec = ModelSpec(**config.model.model.as_dict())
    assert config.data.sources, f"{path.name}: no training sources"
    # bounded: by steps, or by epochs (the nomic-v2 recipes stop after contrastors' num_epochs)
    assert config.trainer.max_steps > 0 or (config.trainer.max_epochs or 0) > 0
    for callback in config.trainer.callbacks:
        # Constructing a callback has no side effects; it checks argument values the types cannot.
        module_name, _, class_name = callback.class_path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        cls(**callback.init_args.as_dict())
    strategy = config.trainer.strategy
    if not isinstance(strategy, str) and strategy.class_path.endswith("ModelParallelStrategy"):
        # FSDP2 recipes: the data-parallel mesh must cover every process.
        world = config.trainer.devices * config.trainer.num_nodes
        assert strategy.init_args.data_parallel_size == world, path.name
        assert strategy.init_args.tensor_parallel_size == 1, path.name
    if spec.preset is not None:
        with torch.device("meta"):
            encoder = Encoder(target_config(spec, None))
        assert encoder.config.is_moe


def test_nomic_recipes_train_the_released_architecture() -> None:
    for name, global_batch in (("nomic-v2-pretrain.yaml", 16384), ("nomic-v2-finetune.yaml", 256)):
        config = _parse(EXPERIMENTS / name)
        spec = ModelSpec(**config.model.model.as_dict())
        with torch.device("meta"):
            encoder = Encoder(target_config(spec, None))
        assert sum(p.numel() for p in encoder.parameters()) == 475_292_928  # nomic-embed-text-v2-moe
        assert encoder.config.moe_layer_indices == [1, 3, 5, 7, 9, 11]
        assert config.data.batch_size * config.trainer.strategy.init_args.data_parallel_size == global_batch
        assert config.model.loss.temperature == 0.02
    finetune = _parse(EXPERIMENTS / "nomic-v2-finetune.yaml")
    assert finetune.model.loss.matryoshka_dims == [768, 256]
    assert all(s.num_negatives == 10 for s in finetune.data.sources)


def test_a_typo_fails_at_parse_time_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    text = (EXPERIMENTS / "quickstart.yaml").read_text().replace("temperature: 0.05", "temprature: 0.05")
    broken.write_text(text)
    with pytest.raises(SystemExit):
        _parse(broken)
    assert "temprature" in capsys.readouterr().err


@pytest.mark.data
def test_cpu_recipes_build_completely(
    shared_data: Path, minilm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIT_NOMIC_DATA", str(shared_data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # the recipes write under runs/: keep it out of the checkout
    built: dict[str, tuple[ContrastiveModule, Any]] = {}
    for name in CPU_RECIPES:
        cli = build_cli(["--config", str(EXPERIMENTS / name)], run=False)
        module, datamodule = cli.model, cli.datamodule
        dataset = datamodule.build()
        assert [s.name for s in datamodule.specs] == ["scifact", "medquad"]
        assert dataset.plan.global_batch_size == 32
        batch = dataset.batch(0, 0)
        # A forward of the full 32 x 192-token batch costs ~15 s on two CPU cores: check 4 rows.
        batch = {k: v[:4] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            step = module.compute_losses(batch)
        assert torch.isfinite(step.loss) and 0 < float(step.infonce) < 10
        built[name] = (module, batch)
    moe, dense = built["quickstart.yaml"][0], built["minilm-dense-finetune.yaml"][0]
    assert moe.encoder.config.moe_layer_indices == [1, 3, 5] and moe.encoder.config.num_experts == 8
    assert not dense.encoder.config.is_moe
    # Sparse upcycling with renormalised top-2 over identical experts starts where the dense model is:
    # the fair baseline and the MoE run begin from the same function.
    texts = ["sparse mixture of experts", "what causes influenza?"]
    torch.testing.assert_close(moe.embedder.encode(texts), dense.embedder.encode(texts), atol=1e-5, rtol=1e-4)
