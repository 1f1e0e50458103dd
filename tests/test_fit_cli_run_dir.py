"""``lit-nomic fit|validate``: every output under one run folder, override suffixes, resume, one-line errors.

Parse-only tests read experiments/quickstart.yaml; the fit tests train a tiny MoE for two steps on
toy pairs (tests/dist_scripts/train_common.py) and look at what landed where.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from train_common_loader import load_train_common

from lit_nomic.cli import main
from lit_nomic.training.callbacks import StepRichProgressBar
from lit_nomic.training.cli import CLIError, LitNomicCLI, build_cli, override_suffix, resolve_run_dir

common = load_train_common()
QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"


class ParseOnlyCLI(LitNomicCLI):
    def instantiate_classes(self) -> None:
        pass


def _parse(*args: str) -> Any:
    return build_cli(["--config", str(QUICKSTART), *args], run=False, cli_class=ParseOnlyCLI).config


def _output_paths(config: Any) -> list[str]:
    trainer = config.trainer
    paths = [trainer.logger.init_args.save_dir]
    for callback in trainer.callbacks:
        init = callback.init_args
        paths.append(init.get("dirpath") or init.get("output_dir"))
    return paths


# ----------------------------------------------------------------------------- the run-dir rule
def test_quickstart_without_overrides_writes_under_runs_quickstart() -> None:
    config = _parse()
    assert config.trainer.default_root_dir == "runs/quickstart"
    assert _output_paths(config) == [
        "runs/quickstart",  # TensorBoard: runs/quickstart/tb
        "runs/quickstart/checkpoints",
        "runs/quickstart/model",
        "runs/quickstart/eval",
    ]
    assert config.trainer.logger.init_args.name == "tb"
    assert config.trainer.logger.init_args.default_hp_metric is False


def test_an_override_gets_its_own_run_folder() -> None:
    config = _parse("--model.model.overrides.num_experts", "16")
    run_dir = config.trainer.default_root_dir
    assert run_dir != "runs/quickstart" and run_dir.startswith("runs/quickstart-num_experts=16-")
    assert len(run_dir.rsplit("-", 1)[1]) == 6
    assert all(p == run_dir or p.startswith(run_dir + "/") for p in _output_paths(config))
    assert config.model.model.overrides["num_experts"] == 16
    # The same overrides name the same folder (so --ckpt_path last finds it); others do not.
    assert _parse("--model.model.overrides.num_experts=16").trainer.default_root_dir == run_dir
    assert _parse("--model.model.overrides.num_experts", "4").trainer.default_root_dir != run_dir


def test_an_explicit_root_dir_is_used_exactly() -> None:
    config = _parse("--model.model.overrides.num_experts", "16", "--trainer.default_root_dir", "sweep/e16")
    assert config.trainer.default_root_dir == "sweep/e16"
    assert _output_paths(config) == [
        "sweep/e16",
        "sweep/e16/checkpoints",
        "sweep/e16/model",
        "sweep/e16/eval",
    ]


def test_neutral_options_keep_the_base_folder() -> None:
    run_dir, overrides = resolve_run_dir(
        "runs/q", ["fit", "-c", "a.yaml", "--config=b.yaml", "--ckpt_path", "last"]
    )
    assert (run_dir, overrides) == ("runs/q", [])
    run_dir, overrides = resolve_run_dir(
        "runs/q", ["fit", "--trainer.max_epochs", "-1", "--data.path", "a/b c.jsonl"]
    )
    assert overrides == [("--trainer.max_epochs", "-1"), ("--data.path", "a/b c.jsonl")]
    assert run_dir == "runs/q-" + override_suffix(overrides)
    assert run_dir.startswith("runs/q-max_epochs=1-path=a_b_c.jsonl-")


def test_every_recipe_leaves_its_paths_to_the_run_folder() -> None:
    for path in sorted(QUICKSTART.parent.glob("*.yaml")):
        text = path.read_text()
        assert "save_dir:" not in text and "dirpath:" not in text and "output_dir:" not in text, path.name
        config = build_cli(["--config", str(path)], run=False, cli_class=ParseOnlyCLI).config
        run_dir = config.trainer.default_root_dir
        assert all(p == run_dir or p.startswith(run_dir + "/") for p in _output_paths(config)), path.name


# ----------------------------------------------------------------------------- a tiny real fit
def _tiny_recipe(tmp_path: Path, pairs: Path | None = None, val: bool = False) -> Path:
    pairs = pairs or common.write_toy_pairs(tmp_path / "pairs.jsonl", count=48)
    beir = common.write_toy_beir(
        tmp_path / "toy-beir", common.write_toy_pairs(tmp_path / "beir.jsonl", count=48)
    )
    source = {
        "name": "toy",
        "path": str(pairs),
        "query_prefix": "",
        "document_prefix": "",
        "max_query_length": 32,
        "max_document_length": 32,
    }
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_model_summary": False,
            "default_root_dir": "runs/tiny",
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"every_n_train_steps": 1, "save_last": True},
                },
                {"class_path": "lit_nomic.training.callbacks.ExportModel"},
                {
                    "class_path": "lit_nomic.training.callbacks.RetrievalEval",
                    "init_args": {"data": str(beir), "split": "test", "max_corpus": 20},
                },
            ],
        },
        "model": {
            "model": {
                "preset": "tiny-moe",
                "tokenizer": common.TOKENIZER,
                "overrides": {"vocab_size": 30522, "matryoshka_dims": []},
            },
            "loss": {"temperature": 0.05},
            "optim": {"lr": 1e-3, "warmup_steps": 1},
        },
        "data": {
            "tokenizer": common.TOKENIZER,
            "batch_size": 8,
            "sources": [source],
            **({"val_sources": [{**source, "name": "toy-val"}]} if val else {}),
        },
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_a_tiny_fit_writes_everything_under_its_run_folder(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _tiny_recipe(in_tmp)
    args = ["fit", "-c", str(recipe), "--model.model.overrides.num_experts", "8"]
    monkeypatch.setattr(sys, "argv", ["lit-nomic", *args])  # as the entry point runs it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = build_cli(args)
    assert not [w for w in caught if "args parameter" in str(w.message)]
    run_dir = Path(cli.run_dir)
    assert run_dir.parent == Path("runs") and run_dir.name.startswith("tiny-num_experts=8-")
    assert f"run folder {run_dir}" in capsys.readouterr().out
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml", "eval", "model", "tb"]
    assert not Path("runs/tiny").exists()  # the base run's folder is untouched
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "model" / "config.json").is_file()
    assert list((run_dir / "eval").rglob("*.json")) and list((run_dir / "tb").glob("events.out.tfevents.*"))
    saved = (run_dir / "config.yaml").read_text()
    assert f"default_root_dir: {run_dir}\n" in saved and f"dirpath: {run_dir}/checkpoints" in saved
    # TensorBoard gets no hp_metric = -1, and the bar reads "Epoch 0", not "Epoch 0/-2".
    assert cli.trainer.logger._default_hp_metric is False
    bars = [c for c in cli.trainer.callbacks if isinstance(c, StepRichProgressBar)]
    assert len(bars) == 1 and bars[0]._get_train_description(0).strip() == "Epoch 0"

    # --ckpt_path last resumes RUN_DIR/checkpoints/last.ckpt of the same overrides.
    with pytest.raises(CLIError, match="last.ckpt does not exist"):  # max_steps is an override too ...
        build_cli([*args, "--trainer.max_steps", "3", "--ckpt_path", "last"])
    explicit = [*args, "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", "3"]
    resumed = build_cli([*explicit, "--ckpt_path", "last"])  # ... so a resumer names the folder
    assert resumed.trainer.ckpt_path == str(run_dir / "checkpoints" / "last.ckpt")
    assert resumed.trainer.global_step == 3


def test_ckpt_path_last_without_a_checkpoint_names_the_folder(in_tmp: Path) -> None:
    recipe = _tiny_recipe(in_tmp)
    with pytest.raises(CLIError, match=r"runs/tiny/checkpoints/last\.ckpt does not exist"):
        build_cli(["fit", "-c", str(recipe), "--ckpt_path", "last"])
    assert not Path("runs/tiny").exists()  # nothing trained from scratch


# ----------------------------------------------------------------------------- one-line refusals
def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_optimizer_and_lr_scheduler_point_at_model_optim(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _tiny_recipe(in_tmp)
    for option in (["--optimizer", "SGD"], ["--lr_scheduler=StepLR"], ["--optimizer.lr", "0.1"]):
        err = _one_line_error(capsys, ["fit", "-c", str(recipe), *option])
        assert err.startswith("lit-nomic fit: error: --") and "model.optim" in err


def test_validate_without_validation_sources_is_an_error(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _one_line_error(capsys, ["validate", "-c", str(_tiny_recipe(in_tmp))])
    assert "lit-nomic validate: error:" in err and "data.val_sources" in err


def test_malformed_training_jsonl_is_one_line(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = in_tmp / "bad.jsonl"
    bad.write_text('{"query": "a", "document": "b"}\n{"query": oops}\n')
    err = _one_line_error(capsys, ["fit", "-c", str(_tiny_recipe(in_tmp, pairs=bad))])
    assert err.startswith("lit-nomic fit: error: ") and f"{bad}:2" in err


def test_a_bad_config_value_is_one_line_naming_the_field(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _tiny_recipe(in_tmp)
    err = _one_line_error(capsys, ["fit", "-c", str(recipe), "--model.model.overrides.num_experts", "eight"])
    assert err == "lit-nomic fit: error: num_experts must be an int, got 'eight'"


def test_print_config_shows_the_derived_paths(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "-c", str(QUICKSTART), "--model.model.overrides.num_experts", "16", "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    run_dir = _parse("--model.model.overrides.num_experts", "16").trainer.default_root_dir
    assert f"default_root_dir: {run_dir}\n" in out and f"dirpath: {run_dir}/checkpoints\n" in out
    assert f"output_dir: {run_dir}/eval\n" in out and "run folder" not in out
