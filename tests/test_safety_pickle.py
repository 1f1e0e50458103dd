"""Model paths are data, never code: crafted pickles in a ``.ckpt``, ``meta.pt`` or ``.metadata``
are refused by ``encode``, ``eval`` and ``info`` with a one-line error, and never run (issue 9).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_nomic.cli import main
from lit_nomic.config import preset
from lit_nomic.model.embedder import Embedder
from lit_nomic.model.encoder import Encoder


class Bomb:
    """Unpickling this creates ``marker``: proof that the pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("safety") / "model"
    config = preset("tiny-moe", vocab_size=30522)
    Embedder(Encoder(config), Embedder.from_pretrained(minilm_dir).tokenizer, "tiny").save_pretrained(folder)
    return folder


def _texts(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("first text\nsecond text\n")
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def _assert_refused(code: int | str | None, err: str, path: Path) -> None:
    assert code not in (0, None)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert str(path) in lines[0] and "refusing to load" in lines[0], lines[0]


def _bomb_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": {"model": Bomb(marker)}}, path)
    return path


def _sharded_with_bad_meta(folder: Path, marker: Path) -> Path:
    folder.mkdir()
    _bomb_checkpoint(folder / "meta.pt", marker)
    (folder / ".metadata").write_bytes(pickle.dumps(Bomb(marker)))
    return folder


def _sharded_with_bad_index(folder: Path, marker: Path) -> Path:
    """A sound meta.pt (architecture metadata only), then a crafted DCP ``.metadata``."""
    folder.mkdir()
    encoder_config = preset("tiny-moe", vocab_size=30522).to_dict()
    torch.save({"lit_nomic": {"encoder_config": encoder_config, "name": "x"}}, folder / "meta.pt")
    (folder / ".metadata").write_bytes(pickle.dumps(Bomb(marker)))
    return folder


CASES = {
    "ckpt": lambda tmp, marker: _bomb_checkpoint(tmp / "evil.ckpt", marker),
    "meta.pt": lambda tmp, marker: _sharded_with_bad_meta(tmp / "sharded", marker),
    ".metadata": lambda tmp, marker: _sharded_with_bad_index(tmp / "sharded", marker),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_encode_refuses_a_crafted_pickle_without_running_it(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    evil = CASES[case](tmp_path, marker)
    out = tmp_path / "emb.npy"
    code, err = _run(
        ["encode", "--model", str(evil), "--input", str(_texts(tmp_path)), "--output", str(out)], capsys
    )
    refused = evil / ".metadata" if case == ".metadata" else evil / "meta.pt" if case == "meta.pt" else evil
    _assert_refused(code, err, refused)
    assert not marker.exists()
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_eval_refuses_a_crafted_pickle_without_running_it(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    evil = CASES[case](tmp_path, marker)
    code, err = _run(
        ["eval", "--model", str(evil), "--data", str(tmp_path / "nodata"), "--output", str(tmp_path / "r")],
        capsys,
    )
    assert code not in (0, None)
    assert "refusing to load" in err and "Traceback" not in err
    assert not marker.exists()


def test_a_model_folder_loads_from_json_and_safetensors_ignoring_pickles(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.json + safetensors win over checkpoint files in the same folder, which are never read."""
    folder = tmp_path / "model"
    folder.mkdir()
    for entry in model_dir.iterdir():
        (folder / entry.name).write_bytes(entry.read_bytes())
    marker = tmp_path / "pwned"
    _bomb_checkpoint(folder / "meta.pt", marker)
    (folder / ".metadata").write_bytes(pickle.dumps(Bomb(marker)))
    out = tmp_path / "emb.npy"
    main(["encode", "--model", str(folder), "--input", str(_texts(tmp_path)), "--output", str(out)])
    assert np.load(out).shape == (2, 64)
    assert not marker.exists()


def test_info_reads_config_json_only(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``info`` never unpickles: neither beside a config.json nor when pointed at a checkpoint."""
    marker = tmp_path / "pwned"
    folder = _sharded_with_bad_meta(tmp_path / "model", marker)
    (folder / "config.json").write_text((model_dir / "config.json").read_text())
    evil = _bomb_checkpoint(tmp_path / "evil.ckpt", marker)
    for path in (folder / "config.json", folder, evil):
        try:  # whether `info` accepts the path and its error text are its own; nothing may run
            main(["info", "--config", str(path)])
        except (SystemExit, Exception):  # noqa: BLE001, S110
            pass
    assert not marker.exists()


def test_encode_help_says_what_each_kind_of_path_may_hold(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "never run" in out and "safetensors" in out and "meta.pt" in out


def test_a_pytorch_model_bin_with_a_crafted_pickle_is_refused(model_dir: Path, tmp_path: Path) -> None:
    """Hugging Face folders may carry pytorch_model.bin: tensors only, the rest is refused unrun."""
    from lit_nomic.model.weights import ConversionError, load_checkpoint_tensors

    marker = tmp_path / "pwned"
    torch.save({"weight": torch.ones(1), "evil": Bomb(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"pytorch_model.bin: cannot load .*Unsupported global") as exc:
        load_checkpoint_tensors(tmp_path)
    assert "\n" not in str(exc.value)
    assert not marker.exists()


def test_reading_a_checkpoint_keeps_the_resume_allow_list(tmp_path: Path) -> None:
    """Loading one checkpoint (export/eval) must not shrink torch's process-wide allow-list, or a
    later resume in the same process fails (torch's ``safe_globals`` context removes on exit)."""
    from torch.serialization import get_safe_globals

    from lit_nomic.training.export import _torch_load
    from lit_nomic.training.module import CHECKPOINT_SAFE_GLOBALS

    path = tmp_path / "sound.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"loss": CHECKPOINT_SAFE_GLOBALS[1]()}}, path)
    _torch_load(path)
    assert set(CHECKPOINT_SAFE_GLOBALS) <= set(get_safe_globals())
    torch.load(path, weights_only=True)  # what Lightning's resume does
