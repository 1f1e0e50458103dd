"""``lit-nomic fit|validate``: LightningCLI over ContrastiveModule and ContrastiveDataModule.

Every hyper-parameter is read from the typed signatures of the two classes and their config
dataclasses, so ``--print_config`` shows the complete, reproducible run and a YAML typo fails at
parse time naming the key.

Run folder (RUN_DIR). Every output of a run lives under one folder, ``trainer.default_root_dir``:
TensorBoard logs in ``RUN_DIR/tb``, checkpoints in ``RUN_DIR/checkpoints``, the exported model in
``RUN_DIR/model``, fit-end evaluation results in ``RUN_DIR/eval`` and the resolved ``config.yaml`` in
``RUN_DIR`` itself. Paths a config leaves unset (``null``) are derived from RUN_DIR; explicit ones are kept.

* Without command-line overrides RUN_DIR is the config's ``trainer.default_root_dir``.
* With command-line overrides (any option other than ``-c/--config``, ``--ckpt_path``,
  ``--trainer.default_root_dir``, ``--print_config`` and ``--help``) RUN_DIR is
  ``<default_root_dir>-<slug>-<hash>``: ``slug`` reads ``key=value`` for each override (last key
  component, values reduced to ``[A-Za-z0-9._+]``), ``hash`` is 6 hex chars of the SHA-256 of the
  overrides in order, so an ablation never writes into the base run's folders and re-running the same
  overrides (e.g. with ``--ckpt_path last``) finds the same folder.
* ``--trainer.default_root_dir DIR`` on the command line is used exactly, without a suffix (a sweep
  runner always passes it).

``--ckpt_path last`` resumes ``RUN_DIR/checkpoints/last.ckpt`` (the ModelCheckpoint folder) and is an
error when that file does not exist: an automated resumer passes ``--ckpt_path last`` only when the
file exists, and nothing otherwise.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lit_nomic.data.datamodule import ContrastiveDataModule
from lit_nomic.training.module import ContrastiveModule

# Command-line options that do not make a different run (they do not change the run folder).
RUN_DIR_NEUTRAL = (
    "-c",
    "--config",
    "--ckpt_path",
    "--trainer.default_root_dir",
    "--print_config",
    "-h",
    "--help",
)
# Options that take no value.
_FLAGS = ("--print_config", "-h", "--help")
# Options LightningCLI would offer but this CLI refuses: model.optim owns the optimiser and schedule.
REFUSED_OPTIONS = ("--optimizer", "--lr_scheduler")
DEFAULT_RUN_DIR = "runs/lit-nomic"
# Sub-folders of RUN_DIR.
TB_NAME, CHECKPOINTS, MODEL, EVAL = "tb", "checkpoints", "model", "eval"
_TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
_CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"
_EXPORT = "lit_nomic.training.callbacks.ExportModel"
_EVAL = "lit_nomic.training.callbacks.RetrievalEval"


class CLIError(ValueError):
    """A bad ``lit-nomic fit|validate`` command line; the one-line message says what to do."""


# ---------------------------------------------------------------------------- command-line overrides
def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def split_options(args: Sequence[str]) -> list[tuple[str, str]]:
    """``(option, value)`` pairs of a command line in order (``--k v`` and ``--k=v`` alike; value "" for flags).

    Positional tokens (the subcommand) are skipped.
    """
    pairs: list[tuple[str, str]] = []
    tokens = list(args)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("-") or token == "-":
            continue
        if token.startswith("--") and "=" in token:
            key, value = token.split("=", 1)
            pairs.append((key, value))
            continue
        value = ""
        if token not in _FLAGS and i < len(tokens):
            nxt = tokens[i]
            if not nxt.startswith("-") or _is_number(nxt):
                value = nxt
                i += 1
        pairs.append((token, value))
    return pairs


def run_overrides(args: Sequence[str]) -> tuple[list[tuple[str, str]], str | None]:
    """The command-line overrides that make a different run, and an explicit ``--trainer.default_root_dir``."""
    overrides: list[tuple[str, str]] = []
    explicit: str | None = None
    for key, value in split_options(args):
        if key == "--trainer.default_root_dir":
            explicit = value
        elif key not in RUN_DIR_NEUTRAL:
            overrides.append((key, value))
    return overrides, explicit


def override_suffix(overrides: Sequence[tuple[str, str]]) -> str:
    """``<slug>-<hash6>`` naming a set of command-line overrides (empty when there are none)."""
    if not overrides:
        return ""
    pieces = []
    for key, value in overrides:
        short = key.lstrip("-").rsplit(".", 1)[-1]
        clean = re.sub(r"[^A-Za-z0-9._+]+", "_", value).strip("_")[:24]
        pieces.append(f"{short}={clean}" if clean else short)
    slug = "-".join(pieces)[:64].rstrip("-=")
    digest = hashlib.sha256("\n".join(f"{k}={v}" for k, v in overrides).encode()).hexdigest()[:6]
    return f"{slug}-{digest}"


def resolve_run_dir(base: str | None, args: Sequence[str]) -> tuple[str, list[tuple[str, str]]]:
    """RUN_DIR for a config's ``default_root_dir`` (``base``) and the command line ``args`` (module docstring)."""
    overrides, explicit = run_overrides(args)
    if explicit is not None:
        return explicit, overrides
    root = str(base) if base else DEFAULT_RUN_DIR
    suffix = override_suffix(overrides)
    return (f"{root.rstrip('/')}-{suffix}" if suffix else root), overrides


# ---------------------------------------------------------------------------- config rewriting
def _class_path(value: Any) -> str | None:
    return value.get("class_path") if isinstance(value, Namespace | dict) else None


def _init_args(value: Any) -> Any:
    if value.get("init_args") is None:
        value["init_args"] = Namespace()
    return value["init_args"]


def _derive_logger(logger: Any, run_dir: str) -> Any:
    if logger is None or logger is True:
        return Namespace(
            class_path=_TENSORBOARD,
            init_args=Namespace(save_dir=run_dir, name=TB_NAME, version="", default_hp_metric=False),
        )
    if isinstance(logger, list):
        return [_derive_logger(item, run_dir) for item in logger]
    path = _class_path(logger)
    if path is None:
        return logger
    init = _init_args(logger)
    if init.get("save_dir") is None:
        init["save_dir"] = run_dir
    if path == _TENSORBOARD:
        if init.get("name") is None or init.get("name") == "lightning_logs":
            init["name"] = TB_NAME
        init["default_hp_metric"] = False  # else every run logs hp_metric = -1
    return logger


def apply_run_dir(section: Any, run_dir: str) -> None:
    """Point every unset output path of one subcommand's config at ``run_dir`` (in place)."""
    trainer = section["trainer"]
    trainer["default_root_dir"] = run_dir
    trainer["logger"] = _derive_logger(trainer.get("logger"), run_dir)
    defaults = {
        _CHECKPOINT: ("dirpath", CHECKPOINTS),
        _EXPORT: ("dirpath", MODEL),
        _EVAL: ("output_dir", EVAL),
    }
    callbacks = trainer.get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        key_sub = defaults.get(_class_path(callback) or "")
        if key_sub is not None:
            init = _init_args(callback)
            if init.get(key_sub[0]) is None:
                init[key_sub[0]] = str(Path(run_dir, key_sub[1]))


def checkpoint_dir(section: Any) -> Path:
    """The folder of the first ModelCheckpoint of a config (RUN_DIR/checkpoints when there is none)."""
    callbacks = section["trainer"].get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        if _class_path(callback) == _CHECKPOINT and _init_args(callback).get("dirpath"):
            return Path(_init_args(callback)["dirpath"])
    return Path(section["trainer"]["default_root_dir"], CHECKPOINTS)


@rank_zero_only
def _announce(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------- the CLI
class SaveRunConfig(SaveConfigCallback):
    """Save the resolved ``config.yaml`` in RUN_DIR (``trainer.default_root_dir``), not in the logger's folder."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            folder = Path(trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(
                self.config,
                str(folder / self.config_filename),
                skip_none=False,
                overwrite=True,
                multifile=self.multifile,
            )
        self.already_saved = True


class LitNomicCLI(LightningCLI):
    """LightningCLI with run folders derived from one root, ``fit``/``validate`` only, and one-line errors."""

    run_dir: str | None = None
    run_overrides: list[tuple[str, str]]

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # test/predict need loops this project does not have: ``lit-nomic eval`` evaluates a model.
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
        }

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # LightningCLI warns when ``args`` is given while sys.argv has arguments too; lit-nomic's entry
        # point passes sys.argv[1:] as ``args`` on purpose, so the warning would be printed by every run.
        argv = list(sys.argv[1:] if args is None else args)
        for key, _ in split_options(argv):
            if key.split(".", 1)[0] in REFUSED_OPTIONS:
                raise CLIError(
                    f"{key} is not supported: the optimiser, warm-up and schedule come from model.optim "
                    "(e.g. --model.optim.lr 1e-4 --model.optim.schedule cosine; see --help)"
                )
        # --print_config would print before the run folder is derived: print the final config instead.
        print_config = any(t == "--print_config" or t.startswith("--print_config=") for t in argv)
        self.config = parser.parse_args(
            [t for t in argv if not (t == "--print_config" or t.startswith("--print_config="))]
        )
        subcommand = self.config.get("subcommand")
        section = self.config[subcommand] if subcommand else self.config
        self.run_dir, self.run_overrides = resolve_run_dir(section["trainer"].get("default_root_dir"), argv)
        apply_run_dir(section, self.run_dir)
        if print_config and subcommand is not None:
            print(self._parser(subcommand).dump(section), end="")
            raise SystemExit(0)
        if subcommand == "validate" and not section["data"].get("val_sources"):
            raise CLIError(
                "validate needs validation data and the config has none: give data.val_sources "
                "(e.g. --data.val_sources mixture.yaml); to score retrieval use lit-nomic eval"
            )
        if section.get("ckpt_path") == "last":
            last = checkpoint_dir(section) / "last.ckpt"
            if not last.is_file():
                raise CLIError(
                    f"--ckpt_path last: there is no checkpoint to resume, {last} does not exist "
                    f"(run folder {self.run_dir}); drop --ckpt_path to start from scratch"
                )
            self._resume_from = str(last)
        if subcommand is not None:
            note = f" ({len(self.run_overrides)} command-line override(s))" if self.run_overrides else ""
            _announce(f"lit-nomic {subcommand}: run folder {self.run_dir}{note}")

    def before_instantiate_classes(self) -> None:
        resume = getattr(self, "_resume_from", None)
        if resume is not None and self.subcommand is not None:
            self.config[self.subcommand]["ckpt_path"] = resume

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        configured = list(config.get("callbacks") or []) + list(callbacks)
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in configured
        ):
            from lit_nomic.training.callbacks import step_progress_bar

            callbacks = [*callbacks, step_progress_bar()]
        return super()._instantiate_trainer(config, callbacks)


def build_cli(
    args: list[str] | None, run: bool = True, cli_class: type[LightningCLI] = LitNomicCLI
) -> LightningCLI:
    """The LightningCLI of ``lit-nomic fit|validate`` (``cli_class`` lets tests parse without running)."""
    return cli_class(
        ContrastiveModule,
        ContrastiveDataModule,
        args=args,
        run=run,
        seed_everything_default=0,
        save_config_callback=SaveRunConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "lit-nomic"},
        auto_configure_optimizers=False,
    )


def _ours(err: BaseException) -> bool:
    """A data/config error of lit_nomic (its message names the file, line or field), not a bug elsewhere."""
    if isinstance(err, CLIError):
        return True
    from lit_nomic.config import ConfigError

    if isinstance(err, ConfigError):
        return True
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = str(Path(__file__).resolve().parents[1]) + os.sep
    return tb is not None and str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(package)


def run_lightning_cli(args: list[str]) -> None:
    """Run ``lit-nomic fit|validate``; data and config errors print one line and exit 2.

    ``LIT_NOMIC_TRACEBACK=1`` shows the full traceback instead.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = args[0] if args else "fit"
    try:
        build_cli(args)
    except (ValueError, FileNotFoundError) as err:
        if not _ours(err) or os.environ.get("LIT_NOMIC_TRACEBACK") == "1":
            raise
        print(f"lit-nomic {command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        import torch.distributed as dist

        # A gloo process that exits without this intermittently aborts (exit 134) after a good run.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
