"""Dataset resolution: data root, cache, download of known public datasets, and the offline error."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from lit_nomic.data import paths


def test_explicit_root_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "beir" / "toy").mkdir(parents=True)
    monkeypatch.setenv(paths.DATA_ENV, str(tmp_path))
    assert paths.resolve_dataset("beir/toy") == tmp_path / "beir" / "toy"
    assert paths.resolve_dataset("beir/toy", root=tmp_path) == tmp_path / "beir" / "toy"


def test_missing_dataset_names_it_and_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"'nowhere/x'.*LIT_NOMIC_DATA"):
        paths.resolve_dataset("nowhere/x", root=tmp_path)


def test_known_dataset_is_downloaded_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "toy.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("toy/corpus.jsonl", '{"_id": "d1", "title": "", "text": "hello"}\n')
        zf.writestr("toy/queries.jsonl", '{"_id": "q1", "text": "hi"}\n')
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(paths.PUBLIC_DATASETS, "beir/toy", (archive.as_uri(), "toy"))
    got = paths.resolve_dataset("beir/toy", root=tmp_path / "empty-root")
    assert got == tmp_path / "cache" / "datasets" / "beir" / "toy"
    assert (got / "corpus.jsonl").read_text().startswith('{"_id": "d1"')
    archive.unlink()  # a second resolution uses the cache, not the network
    assert paths.resolve_dataset("beir/toy", root=tmp_path / "empty-root") == got


def test_failed_download_says_offline_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    missing = (tmp_path / "absent.zip").as_uri()
    monkeypatch.setitem(paths.PUBLIC_DATASETS, "beir/toy", (missing, "toy"))
    with pytest.raises(FileNotFoundError, match=r"'beir/toy'.*downloading it.*LIT_NOMIC_DATA"):
        paths.resolve_dataset("beir/toy", root=tmp_path)
    assert not (tmp_path / "cache" / "datasets" / "beir" / "toy").exists()
