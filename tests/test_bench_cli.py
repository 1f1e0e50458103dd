"""``python -m lit_nomic.bench`` parsing (parse only, nothing runs): the documented command lines,
both spellings of an option, and one-line errors naming the option."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lit_nomic.bench.cli import main, parse
from lit_nomic.bench.report import REGENERATE

REPO = Path(__file__).resolve().parents[1]
PREFIX = "python -m lit_nomic.bench "


def _quoted_commands() -> list[str]:
    text = (REPO / "results" / "benchmarks.md").read_text()
    commands = re.findall(r"^Command: `([^`]+)`", text, re.M)
    assert len(commands) >= 6 and all(c.startswith(PREFIX) for c in commands)
    return [*commands, REGENERATE]


@pytest.mark.parametrize("command", _quoted_commands())
def test_every_command_in_benchmarks_md_parses(command: str) -> None:
    name, options = parse(shlex.split(command.removeprefix(PREFIX)))
    assert name == command.removeprefix(PREFIX).split()[0]
    if "--output" in command and name != "report":
        assert options["output"] == Path("results/bench")


def test_recorded_argparse_spellings_mean_what_they_meant() -> None:
    # the recorded commands (results/bench/*.json) use argparse's spellings: bare flags and dashes
    _, opts = parse(shlex.split("encoder --threads 1 --clock cpu --limit 16 --bf16 --no-moe --tag bf16"))
    assert (opts["bf16"], opts["moe"], opts["limit"], opts["threads"], opts["clock"]) == (
        True,
        False,
        16,
        1,
        "cpu",
    )
    _, opts = parse(["encoder", "--tune-malloc", "--tag", "tuned-malloc"])
    assert opts["tune_malloc"] is True and opts["tag"] == "tuned-malloc" and opts["moe"] is True
    _, opts = parse(["moe", "--bf16", "small", "--tokens", "512,4096", "--top-k", "1,2"])
    assert (opts["bf16"], opts["tokens"], opts["top_k"], opts["experts"]) == (
        "small",
        (512, 4096),
        (1, 2),
        (8,),
    )
    _, opts = parse(["export", "--eval-docs", "-1", "--moe"])
    assert opts["eval_docs"] == -1 and opts["moe"] is True


@pytest.mark.parametrize(
    ("argparse_style", "jsonargparse_style"),
    [
        ("moe --max-repeats 5 --budget-s 0.5 --tune-malloc", "moe --max_repeats 5 --budget_s 0.5 --tune_malloc true"),
        ("encoder --no-moe --batch-size 4,8", "encoder --moe false --batch_size 4,8"),
        ("train --preset tiny-dense --preset tiny-moe --quick", "train --preset+ tiny-dense --preset+ tiny-moe --quick=true"),
        ("profile encoder-moe --top-k 1", "profile encoder-moe --top_k 1"),
    ],
)  # fmt: skip
def test_both_spellings_parse_alike(argparse_style: str, jsonargparse_style: str) -> None:
    assert parse(shlex.split(argparse_style)) == parse(shlex.split(jsonargparse_style))


def test_train_presets_collect_in_order() -> None:
    assert parse(["train", "--preset", "tiny-dense", "--preset", "tiny-moe"])[1]["preset"] == [
        "tiny-dense",
        "tiny-moe",
    ]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        ("moe --clock gpu", "--clock 'gpu': expected one of wall, cpu"),
        ("moe --threads 0", "--threads '0'"),
        ("moe --tokens 1,x", "--tokens '1,x'"),
        (
            "encoder --batch-size 0",
            "--batch_size: Not of type Ints: expected comma-separated positive integers, got '0'",
        ),
        ("train --dtype fp8", "--dtype 'fp8': expected one of fp32, bf16, fp16"),
        ("encoder --bogus 1", "unrecognized arguments: --bogus 1"),
        ("moe --tune-malloc maybe", "unrecognized arguments: maybe"),
        ("profile gpu", "target 'gpu'"),
        ("nope", "invalid choice: 'nope'"),
    ],
)
def test_bad_options_end_in_one_line_naming_them(
    argv: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(shlex.split(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("python -m lit_nomic.bench") and named in err, err


def test_lit_nomic_bench_dispatches_here(capsys: pytest.CaptureFixture[str]) -> None:
    from lit_nomic.cli import main as lit_nomic_main

    with pytest.raises(SystemExit) as exit_info:
        lit_nomic_main(["bench", "report", "--help"])
    assert exit_info.value.code == 0
    assert "--input" in capsys.readouterr().out
