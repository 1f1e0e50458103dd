"""The one tokenizer loader: every way a run names a tokenizer, and the error when none works."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from lit_nomic.data.tokenizer import load_tokenizer, resolve_tokenizer
from lit_nomic.model.build import ModelSpec, build_embedder

TEXT = "Hello world, a tokenizer test."


def test_a_local_folder(minilm_dir: Path) -> None:
    tok = load_tokenizer(minilm_dir)
    assert tok.vocab_size == 30522 and tok.pad_token_id == 0
    assert load_tokenizer(str(minilm_dir))(TEXT)["input_ids"] == tok(TEXT)["input_ids"]


def test_a_packaged_name_loads_the_packaged_folder(minilm_dir: Path) -> None:
    assert resolve_tokenizer("all-minilm-l6-v2") == str(minilm_dir)
    assert resolve_tokenizer("sentence-transformers/all-MiniLM-L6-v2") == str(minilm_dir)
    tok = load_tokenizer("all-minilm-l6-v2")
    assert tok(TEXT)["input_ids"] == load_tokenizer(minilm_dir)(TEXT)["input_ids"]


def test_a_name_under_the_data_root(shared_data: Path) -> None:
    tok = load_tokenizer("xlm_roberta_tokenizer", root=shared_data)
    assert tok("Hello world")["input_ids"] == [0, 35378, 8999, 2]


def test_a_missing_folder_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(FileNotFoundError, match=re.escape(f"cannot load tokenizer '{missing}'")):
        load_tokenizer(missing, root=tmp_path / "data")


def test_a_broken_folder_is_an_oserror_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(OSError, match=re.escape(f"cannot load tokenizer '{broken}'")) as info:
        load_tokenizer(broken)
    assert not isinstance(info.value, FileNotFoundError)


def test_shared_loads_once_models_get_their_own(minilm_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "minilm"  # a location of its own: the shared cache starts empty for it
    copy.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, copy / name)
    assert load_tokenizer(copy, shared=True) is load_tokenizer(copy, shared=True)
    assert load_tokenizer(copy) is not load_tokenizer(copy)
    assert load_tokenizer(copy) is not load_tokenizer(copy, shared=True)


def test_a_model_spec_tokenizer_goes_through_the_loader(minilm_dir: Path) -> None:
    spec = ModelSpec(preset="tiny-dense", tokenizer="all-minilm-l6-v2", overrides={"vocab_size": 30522})
    model = build_embedder(spec)
    assert model.tokenizer(TEXT)["input_ids"] == load_tokenizer(minilm_dir)(TEXT)["input_ids"]
    with pytest.raises(FileNotFoundError, match="cannot load tokenizer 'no-such-tokenizer-here'"):
        build_embedder(ModelSpec(preset="tiny-dense", tokenizer="no-such-tokenizer-here"))
