"""``lit-nomic fit|validate|test``: LightningCLI over ContrastiveModule and ContrastiveDataModule.

Every hyper-parameter is read from the typed signatures of the two classes and their config
dataclasses, so ``--print_config`` shows the complete, reproducible run and a YAML typo fails at
parse time naming the key.
"""

from __future__ import annotations

import os

from lightning.pytorch.cli import LightningCLI

from lit_nomic.data.datamodule import ContrastiveDataModule
from lit_nomic.training.module import ContrastiveModule


def build_cli(
    args: list[str] | None, run: bool = True, cli_class: type[LightningCLI] = LightningCLI
) -> LightningCLI:
    """The LightningCLI of ``lit-nomic fit|validate|test`` (``cli_class`` lets tests parse without running)."""
    return cli_class(
        ContrastiveModule,
        ContrastiveDataModule,
        args=args,
        run=run,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "lit-nomic"},
    )


def run_lightning_cli(args: list[str]) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        build_cli(args)
    finally:
        import torch.distributed as dist

        # A gloo process that exits without this intermittently aborts (exit 134) after a good run.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
