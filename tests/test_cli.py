"""The ``lit-nomic`` entry point: help texts, info counts, encode, and errors that name the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_nomic.cli import main
from lit_nomic.config import preset
from lit_nomic.model.embedder import Embedder
from lit_nomic.model.encoder import Encoder


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "info", "encode", "eval", "bench"):
        assert f"  {command}" in out
    assert "  test " not in out  # there is no test loop: lit-nomic eval evaluates


def test_test_command_points_at_eval(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["test", "-c", "experiments/quickstart.yaml"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lit-nomic eval" in err


def test_info_reads_a_saved_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["info", "--preset", "tiny-moe"])
    from_preset = json.loads(capsys.readouterr().out)
    path = tmp_path / "config.json"
    preset("tiny-moe").save(path)
    main(["info", "--config", str(path), "--seq_len", "512"])
    from_file = json.loads(capsys.readouterr().out)
    assert from_file["config"] == str(path) and from_file["preset"] is None
    assert {k: v for k, v in from_file.items() if k not in ("preset", "config")} == {
        k: v for k, v in from_preset.items() if k not in ("preset", "config")
    }
    with pytest.raises(SystemExit, match="exactly one of --preset NAME or --config PATH"):
        main(["info"])


def test_info_names_the_missing_field_of_a_saved_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in preset("tiny-moe").to_dict().items() if k != "pooling"}))
    with pytest.raises(SystemExit) as exc:
        main(["info", "--config", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"lit-nomic info: error: {path}: " in err and "['pooling']" in err


@pytest.mark.parametrize("command", ["info", "encode", "eval"])
def test_subcommand_help_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"lit-nomic {command}" in out and "--" in out


def test_fit_help_shows_model_and_data_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lit_nomic.cli", "fit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "--model.model" in proc.stdout and "--data.batch_size" in proc.stdout


def test_info_prints_exact_nomic_v2_counts(capsys: pytest.CaptureFixture[str]) -> None:
    main(["info", "--preset", "nomic-embed-text-v2-moe"])
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == 475_292_928
    assert report["active"] == 305_423_616
    assert report["flops_per_token_forward"] > 0


def test_unknown_preset_names_field_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["info", "--preset", "nomic-v9"])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "preset" in err and "nomic-embed-text-v2-moe" in err


def test_unknown_command_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["trian"])
    assert exc.value.code == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_encode_writes_rows_in_input_order(tmp_path: Path, minilm_dir: Path) -> None:
    source = Embedder.from_pretrained(minilm_dir)
    config = preset("tiny-moe", vocab_size=30522, document_prefix="doc: ")
    model_dir = tmp_path / "model"
    Embedder(Encoder(config), source.tokenizer, "tiny").save_pretrained(model_dir)
    texts = [
        "a short one",
        "a much longer text about mixture of experts routing and embeddings",
        "mid length",
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    out = tmp_path / "emb.npy"
    main(["encode", "--model", str(model_dir), "--input", str(tmp_path / "in.jsonl"), "--output", str(out)])
    emb = np.load(out)
    assert emb.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    expected = Embedder.from_pretrained(model_dir).encode(texts, prefix="doc: ")
    np.testing.assert_allclose(emb, expected.numpy(), atol=1e-6)
    assert not torch.allclose(torch.from_numpy(emb[0]), torch.from_numpy(emb[1]))


def test_encode_names_file_and_line_of_bad_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(SystemExit) as exc:
        main(["encode", "--model", "unused", "--input", str(bad), "--output", str(tmp_path / "o.npy")])
    assert f"{bad}:2" in str(exc.value)
