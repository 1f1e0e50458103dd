"""lit-nomic filter / mine: the shared options (one definition, CurationOptions) are flat flags of both."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from lit_nomic.curation.cli import CurationOptions, filter_pairs, mine

REPO = Path(__file__).resolve().parents[1]
SHARED = {f.name for f in fields(CurationOptions)}


def _parser(func) -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(func, as_group=False)
    return parser


@pytest.mark.parametrize("func", [filter_pairs, mine])
def test_every_shared_option_is_a_flag_of_both_commands(func) -> None:
    parser = _parser(func)
    assert SHARED <= set(parser.get_defaults().keys())
    args = parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--batch_size", "8",
                              "--search", "torch", "--workers", "2", "--slurm.partition", "gpu"])  # fmt: skip
    assert (args.batch_size, args.search, args.workers, args.slurm.partition) == (8, "torch", 2, "gpu")


@pytest.mark.parametrize(
    ("func", "config"),
    [
        (filter_pairs, "experiments/curation/filter-medquad.yaml"),
        (mine, "experiments/curation/mine-scifact.yaml"),
    ],
)
def test_shipped_configs_parse(func, config: str) -> None:
    given = yaml.safe_load((REPO / config).read_text(encoding="utf-8"))
    args = _parser(func).parse_path(REPO / config)
    assert {k: args[k] for k in given} == given


def test_an_unknown_option_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="batchsize"):
        filter_pairs("m", "d", "o", batchsize=8)
