"""encode inputs and outputs, export folders and weight files fail or survive cleanly (issue 9):
row i is line i, bad bytes and truncated archives name the file, the output path is checked before
encoding, exports are world-readable and atomic per folder, crash leftovers are cleaned, and a
corrupt safetensors file is named."""

from __future__ import annotations

import gzip
import os
import stat
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from lit_nomic import fileio
from lit_nomic.cli import main
from lit_nomic.config import preset
from lit_nomic.model.embedder import Embedder
from lit_nomic.model.encoder import Encoder
from lit_nomic.model.weights import ConversionError, load_checkpoint_tensors


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path):  # noqa: ANN201 - a HF tokenizer
    return Embedder.from_pretrained(minilm_dir).tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("files") / "model"
    Embedder(Encoder(preset("tiny-dense", vocab_size=30522)), tokenizer, "tiny").save_pretrained(folder)
    return folder


def _encode(model: Path, inp: Path, out: Path) -> None:
    main(["encode", "--model", str(model), "--input", str(inp), "--output", str(out)])


# ----------------------------------------------------------------------------- encode inputs
def test_txt_rows_are_lines(model_dir: Path, tmp_path: Path) -> None:
    lines = ["alpha beta", "gamma", "a longer line about experts and routers"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    _encode(model_dir, tmp_path / "in.txt", tmp_path / "emb.npy")
    expected = Embedder.from_pretrained(model_dir).encode(lines, convert_to_tensor=True)
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), expected.numpy(), atol=1e-6)


def test_an_empty_txt_line_is_an_error_naming_file_and_line(model_dir: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("first\n\nthird\n")
    with pytest.raises(SystemExit) as exc:
        _encode(model_dir, inp, tmp_path / "emb.npy")
    assert f"{inp}:2: empty line" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "emb.npy").exists()


@pytest.mark.parametrize("name", ["in.txt", "in.jsonl", "in.txt.gz", "in.jsonl.gz"])
def test_invalid_utf8_names_file_and_line(name: str, model_dir: Path, tmp_path: Path) -> None:
    good = b'{"text": "fine"}\n' if "jsonl" in name else b"fine\n"
    data = good + good + b"caf\xe9\n"
    inp = tmp_path / name
    inp.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(SystemExit) as exc:
        _encode(model_dir, inp, tmp_path / "emb.npy")
    assert f"{inp}:3" in str(exc.value) and "UTF-8" in str(exc.value)


@pytest.mark.parametrize("name", ["in.txt.gz", "in.jsonl.gz"])
def test_a_truncated_gz_names_the_file(name: str, model_dir: Path, tmp_path: Path) -> None:
    row = b'{"text": "some text here"}\n' if "jsonl" in name else b"some text here\n"
    inp = tmp_path / name
    inp.write_bytes(gzip.compress(row * 2000)[:-40])
    with pytest.raises(SystemExit) as exc:
        _encode(model_dir, inp, tmp_path / "emb.npy")
    assert str(inp) in str(exc.value) and "gzip" in str(exc.value) and "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- encode output
def _fail_if_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the output path must be checked before encoding")

    monkeypatch.setattr(Embedder, "encode", boom)


def test_an_output_that_is_a_folder_fails_before_encoding(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.txt").write_text("text\n")
    (tmp_path / "out.npy").mkdir()
    _fail_if_encoding(monkeypatch)
    with pytest.raises(SystemExit, match="is a folder"):
        _encode(model_dir, tmp_path / "in.txt", tmp_path / "out.npy")


def test_an_output_under_a_file_fails_before_encoding(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.txt").write_text("text\n")
    (tmp_path / "afile").write_text("")
    _fail_if_encoding(monkeypatch)
    with pytest.raises(SystemExit, match="afile is not a folder"):
        _encode(model_dir, tmp_path / "in.txt", tmp_path / "afile" / "sub" / "out.npy")


def test_a_read_only_output_folder_fails_before_encoding(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.txt").write_text("text\n")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    mkstemp = tempfile.mkstemp

    def denied(*args: object, dir: str | os.PathLike | None = None, **kwargs: object):  # noqa: A002, ANN202
        if dir is not None and Path(dir) == readonly:  # what a read-only folder does (even as root)
            raise PermissionError(13, "Permission denied", str(readonly))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    _fail_if_encoding(monkeypatch)
    with pytest.raises(SystemExit, match="cannot write .*out.npy: Permission denied"):
        _encode(model_dir, tmp_path / "in.txt", readonly / "out.npy")


# ----------------------------------------------------------------------------- exported folders
def test_exported_files_are_world_readable(model_dir: Path) -> None:
    assert stat.S_IMODE(model_dir.stat().st_mode) == 0o755
    for entry in model_dir.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o644, entry.name


def _moe(tokenizer, experts: int) -> Embedder:  # noqa: ANN001
    return Embedder(
        Encoder(preset("tiny-moe", vocab_size=30522, num_experts=experts)), tokenizer, f"e{experts}"
    )


def test_a_crash_mid_export_leaves_the_previous_export_intact(
    tokenizer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    target = tmp_path / "export"
    _moe(tokenizer, 4).save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    written = []
    real = fileio.atomic_write_bytes

    def record(path: Path, data: bytes) -> Path:
        written.append(Path(path).name)
        return real(path, data)

    def crash(path: Path, text: str) -> Path:
        raise KeyboardInterrupt(f"killed before writing {Path(path).name}")

    monkeypatch.setattr("lit_nomic.model.embedder.atomic_write_bytes", record)
    monkeypatch.setattr("lit_nomic.model.embedder.atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        _moe(tokenizer, 8).save_pretrained(target)
    assert written == ["model.safetensors"]  # the 8-expert weights were written, then the kill
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no partial folder beside it
    monkeypatch.undo()
    assert Embedder.from_pretrained(target).config.num_experts == 4


def test_an_export_replaces_the_previous_one_as_a_whole(tokenizer, tmp_path: Path) -> None:  # noqa: ANN001
    target = tmp_path / "export"
    _moe(tokenizer, 4).save_pretrained(target)
    (target / "merges.txt").write_text("")  # a file of an older export that this one does not write
    _moe(tokenizer, 8).save_pretrained(target)
    assert Embedder.from_pretrained(target).config.num_experts == 8
    assert not (target / "merges.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_an_export_never_deletes_other_files(tokenizer, tmp_path: Path) -> None:  # noqa: ANN001
    target = tmp_path / "export"
    target.mkdir()
    (target / "notes.md").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.md"):
        _moe(tokenizer, 4).save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["notes.md"]


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_crash_leftovers_are_cleaned_by_the_next_write(tokenizer, tmp_path: Path) -> None:  # noqa: ANN001
    stale_folder = tmp_path / ".export.k1ll3dxx.tmp"
    stale_folder.mkdir()
    (stale_folder / "model.safetensors").write_bytes(b"half")
    stale_aside = tmp_path / ".export.k1ll3dxx.old"
    stale_aside.mkdir()
    stale_file = tmp_path / ".result.json.abc123yz.tmp"
    stale_file.write_text('{"half": ')
    fresh = tmp_path / ".result.json.inflight.tmp"  # another process writing right now
    fresh.write_text("{")
    foreign = tmp_path / ".editor-swap.tmp"  # not a name our writers make: never touched
    foreign.write_text("")
    for path in (stale_folder, stale_aside, stale_file, foreign):
        _age(path, 3600)
    _moe(tokenizer, 4).save_pretrained(tmp_path / "export")
    fileio.atomic_write_json(tmp_path / "result.json", {"ok": True})
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".editor-swap.tmp", ".result.json.inflight.tmp", "export", "result.json"]
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o644


# ----------------------------------------------------------------------------- corrupt weights
def test_a_truncated_safetensors_file_is_named(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for entry in model_dir.iterdir():
        (folder / entry.name).write_bytes(entry.read_bytes())
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConversionError, match=f"{weights}: cannot read the safetensors weights") as exc:
        load_checkpoint_tensors(folder)
    assert "\n" not in str(exc.value)
    with pytest.raises(SystemExit) as exit_info:
        _encode(folder, model_dir / "config.json", tmp_path / "emb.npy")
    assert exit_info.value.code == 2


def test_garbage_safetensors_is_named(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ConversionError, match="model.safetensors: cannot read"):
        load_checkpoint_tensors(tmp_path)
