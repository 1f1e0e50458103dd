"""Per-language mixture entries: one folder of per-language shards -> one source per language."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lit_nomic.data.mixture import MixtureError, SourceSpec, load_mixture, open_source


def _xquad_pairs(xquad: Path, lang: str, n: int) -> list[str]:
    """Question -> context pairs from real XQuAD (SQuAD JSON) in one language."""
    data = json.loads((xquad / f"xquad.{lang}.json").read_text(encoding="utf-8"))
    rows = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                rows.append(
                    json.dumps({"query": qa["question"], "document": para["context"]}, ensure_ascii=False)
                )
                if len(rows) == n:
                    return rows
    return rows


@pytest.fixture(scope="module")
def multilingual(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    xquad = shared_data / "xquad"
    if not (xquad / "xquad.en.json").is_file():
        found = sorted(xquad.rglob("xquad.en.json"))
        assert found, f"no xquad.en.json under {xquad}"
        xquad = found[0].parent
    root = tmp_path_factory.mktemp("ml") / "xq"
    root.mkdir()
    (root / "en.jsonl").write_text("\n".join(_xquad_pairs(xquad, "en", 10)) + "\n", encoding="utf-8")
    with gzip.open(root / "de.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write("\n".join(_xquad_pairs(xquad, "de", 7)) + "\n")
    (root / "es").mkdir()  # a sub-folder of shards is one language too
    es = _xquad_pairs(xquad, "es", 9)
    (root / "es" / "part-0.jsonl").write_text("\n".join(es[:5]) + "\n", encoding="utf-8")
    (root / "es" / "part-1.jsonl").write_text("\n".join(es[5:]) + "\n", encoding="utf-8")
    (root / "README.txt").write_text("not a shard")
    return root


def test_one_source_per_language(multilingual: Path, tmp_path: Path) -> None:
    specs = load_mixture(
        [
            {
                "name": "xq",
                "path": str(multilingual),
                "per_language": True,
                "weight": 1.0,
                "language_weights": {"de": 3.0},
                "query_prefix": "q: ",
            }
        ]
    )
    assert [(s.name, s.language, s.weight, s.query_prefix) for s in specs] == [
        ("xq/de", "de", 3.0, "q: "),
        ("xq/en", "en", 1.0, "q: "),
        ("xq/es", "es", 1.0, "q: "),
    ]
    sizes = {s.name: len(open_source(s, cache_dir=str(tmp_path / "cache"))) for s in specs}
    assert sizes == {"xq/de": 7, "xq/en": 10, "xq/es": 9}
    only = load_mixture(
        [{"name": "xq", "path": str(multilingual), "per_language": True, "languages": ["es"]}]
    )
    assert [s.name for s in only] == ["xq/es"]


def test_batches_stay_monolingual(multilingual: Path, minilm_dir: Path, tmp_path: Path) -> None:
    from lit_nomic.data.datamodule import ContrastiveDataModule

    entry = {"name": "xq", "path": str(multilingual), "per_language": True, "format": "jsonl"}
    dm = ContrastiveDataModule(
        [entry], tokenizer=str(minilm_dir), batch_size=3, cache_dir=str(tmp_path / "c")
    )
    assert [s.name for s in dm.specs] == ["xq/de", "xq/en", "xq/es"]
    dm.build()
    sources = [open_source(s, cache_dir=str(tmp_path / "c")) for s in dm.specs]
    english = {sources[1].record(i).queries[0] for i in range(len(sources[1]))}
    seen = set()
    for step in range(dm.plan.steps_per_epoch):
        source, rows = dm.plan.global_batch(0, step)
        seen.add(int(source))
        queries = [sources[int(source)].record(int(r)).queries[0] for r in rows]
        assert len(queries) == 3
        # a batch is all English or has no English at all
        assert all(q in english for q in queries) == (int(source) == 1)
        assert any(q in english for q in queries) == (int(source) == 1)
    assert seen == {0, 1, 2}


def test_expansion_errors_name_the_source(multilingual: Path, tmp_path: Path) -> None:
    with pytest.raises(MixtureError, match=r"source 'xq': field 'languages': \['fr'\] not found"):
        load_mixture([{"name": "xq", "path": str(multilingual), "per_language": True, "languages": ["fr"]}])
    with pytest.raises(MixtureError, match="'language_weights': \\['fr'\\] are not among"):
        load_mixture(
            [{"name": "xq", "path": str(multilingual), "per_language": True, "language_weights": {"fr": 1}}]
        )
    with pytest.raises(MixtureError, match="need per_language: true"):
        load_mixture([{"name": "xq", "path": str(multilingual), "languages": ["en"]}])
    with pytest.raises(MixtureError, match="is not one"):
        load_mixture([{"name": "xq", "path": str(multilingual / "en.jsonl"), "per_language": True}])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MixtureError, match="holds no"):
        load_mixture([{"name": "xq", "path": str(tmp_path / "empty"), "per_language": True}])
    with pytest.raises(MixtureError, match="expand the entry first"):
        open_source(SourceSpec(name="xq", path=str(multilingual), per_language=True))
