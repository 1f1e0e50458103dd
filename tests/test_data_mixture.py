"""Mixture spec: file formats, defaults, validation messages, dataset resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_nomic.data.beir_pairs import BeirPairs
from lit_nomic.data.jsonl import JsonlPairs
from lit_nomic.data.mixture import MixtureError, SourceSpec, explicit_weights, load_mixture, open_source
from lit_nomic.data.scitldr import SciTldrPairs

YAML = """
sources:
  - name: scifact
    path: beir/scifact
    format: beir
  - name: medquad
    path: medquad/medquad_qa.jsonl
    query_column: question
    document_column: answer
    max_document_length: 256
    weight: 2.5
"""


def test_yaml_and_json_files_give_the_same_specs(tmp_path: Path) -> None:
    yaml_path = tmp_path / "mix.yaml"
    yaml_path.write_text(YAML)
    specs = load_mixture(str(yaml_path))
    assert [s.name for s in specs] == ["scifact", "medquad"]
    assert specs[1] == SourceSpec(
        name="medquad",
        path="medquad/medquad_qa.jsonl",
        query_column="question",
        document_column="answer",
        max_document_length=256,
        weight=2.5,
    )
    assert specs[0].query_prefix == "search_query: " and specs[0].document_prefix == "search_document: "
    json_path = tmp_path / "mix.json"
    json_path.write_text(json.dumps([vars(s) for s in specs]))  # a bare list is accepted too
    assert load_mixture(json_path) == specs


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a", "path": "x", "colour": 1}, r"source 'a': unknown field\(s\) \['colour'\]"),
        ({"name": "a"}, r"source 'a': field 'path' is required"),
        ({"name": "a", "path": "x", "weight": 0}, r"source 'a': field 'weight': must be a finite number > 0"),
        ({"name": "a", "path": "x", "max_query_length": 0}, r"source 'a': field 'max_query_length'"),
        ({"name": "a", "path": "x", "num_negatives": -1}, r"source 'a': field 'num_negatives'"),
        (
            {"name": "a", "path": "x", "format": "beir", "num_negatives": 1},
            r"field 'num_negatives': format 'beir'",
        ),
        ({"name": "a", "path": "x", "format": "parquet"}, r"source 'a': field 'format': must be one of"),
        (
            {"name": "a", "path": "x", "format": "scitldr", "query_column": "q"},
            r"field 'query_column': scitldr",
        ),
        (
            {"name": "a", "path": "x", "query_prefix": None},
            r"source 'a': field 'query_prefix': must be a string",
        ),
    ],
)
def test_validation_names_source_and_field(entry: dict, message: str) -> None:
    with pytest.raises(MixtureError, match=message):
        load_mixture([entry])


def test_duplicate_names_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(MixtureError, match="source 'a': field 'name': duplicate"):
        load_mixture([{"name": "a", "path": "x"}, {"name": "a", "path": "y"}])
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [\n")
    with pytest.raises(MixtureError, match="bad.yaml: cannot parse"):
        load_mixture(bad)
    extra = tmp_path / "extra.yaml"
    extra.write_text("sources: []\nweighting: uniform\n")
    with pytest.raises(MixtureError, match="only 'sources'"):
        load_mixture(extra)
    with pytest.raises(FileNotFoundError, match="mixture file"):
        load_mixture(str(tmp_path / "absent.yaml"))


def test_explicit_weighting_requires_every_weight() -> None:
    specs = load_mixture([{"name": "a", "path": "x", "weight": 1.0}, {"name": "b", "path": "y"}])
    with pytest.raises(
        MixtureError, match="source 'b': field 'weight': is required when weighting='explicit'"
    ):
        explicit_weights(specs, "explicit")
    assert explicit_weights(specs, "size") is None


def test_missing_dataset_names_source_dataset_and_env(tmp_path: Path) -> None:
    for spec in (
        SourceSpec("ghost", "nowhere/data.jsonl"),
        SourceSpec("ghost", "nowhere/beir", format="beir"),
        SourceSpec("ghost", "nowhere/scitldr", format="scitldr"),
    ):
        with pytest.raises(FileNotFoundError) as info:
            open_source(spec, root=tmp_path)
        text = str(info.value)
        assert "source 'ghost'" in text and "nowhere/" in text and "LIT_NOMIC_DATA" in text


def test_open_source_dispatches_on_format(shared_data: Path) -> None:
    specs = load_mixture(
        [
            {"name": "scifact", "path": "beir/scifact", "format": "beir"},
            {
                "name": "med",
                "path": "medquad/medquad_qa.jsonl",
                "query_column": "question",
                "document_column": "answer",
            },
            {"name": "tldr", "path": "scitldr", "format": "scitldr", "query_column": "title", "split": "dev"},
        ]
    )
    opened = [open_source(s, root=shared_data) for s in specs]
    assert [type(o) for o in opened] == [BeirPairs, JsonlPairs, SciTldrPairs]
    assert [len(o) for o in opened] == [919, 16407, 619]
