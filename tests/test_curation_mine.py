"""lit-nomic mine: hard negatives on a real SciFact slice (train qrels vs part of the corpus) with MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_nomic.curation.common import CurationError, EncodeSettings, encoder_identity
from lit_nomic.curation.mine import MineSettings, beir_mine_input, mine_negatives, pairs_mine_input
from lit_nomic.data.datamodule import ContrastiveDataModule
from lit_nomic.data.mixture import SourceSpec, open_source
from lit_nomic.evaluation.encoders import EmbeddingCache


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path):
    from lit_nomic.model.embedder import Embedder

    model = Embedder.from_pretrained(str(minilm_dir))
    enc = EncodeSettings(
        model, "", "", batch_size=16, show_progress=False, cache=EmbeddingCache(), model_hash=model.model_hash
    )
    return enc, encoder_identity(model, "", "")


@pytest.fixture(scope="module")
def scifact_slice(scifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 15 SciFact train queries, their positives and 50 other documents.

    A test qrels file judges one extra document relevant to train query 0: a positive the miner
    must never return although it is absent from the train split.
    """
    folder = tmp_path_factory.mktemp("sf") / "scifact15"
    (folder / "qrels").mkdir(parents=True)
    rows = [r.split("\t") for r in (scifact_dir / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    qids = list(dict.fromkeys(r[0] for r in rows))[:15]
    keep = [r for r in rows if r[0] in qids]
    positives = {r[1] for r in keep}
    corpus = [json.loads(x) for x in (scifact_dir / "corpus.jsonl").read_text().splitlines()]
    others = [d for d in corpus if d["_id"] not in positives][:50]
    chosen = [d for d in corpus if d["_id"] in positives] + others
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in chosen))
    queries = [json.loads(x) for x in (scifact_dir / "queries.jsonl").read_text().splitlines()]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries if q["_id"] in qids))
    header = "query-id\tcorpus-id\tscore\n"
    (folder / "qrels" / "train.tsv").write_text(header + "".join("\t".join(r) + "\n" for r in keep))
    (folder / "qrels" / "test.tsv").write_text(header + f"{qids[0]}\t{others[0]['_id']}\t1\n")
    return folder


def _mine(minilm, folder: Path, out: Path, **kw):
    enc, ident = minilm
    settings = MineSettings(**{"num_negatives": 3, "candidates": 20, "search": "torch", **kw})
    return mine_negatives(beir_mine_input(folder, "train"), enc, out, settings, model_identity=ident)


def _triplets(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "triplets.jsonl").read_text().splitlines()]


def _qrels(folder: Path) -> dict[str, set[str]]:
    pos: dict[str, set[str]] = {}
    for f in (folder / "qrels").glob("*.tsv"):
        for line in f.read_text().splitlines()[1:]:
            q, d, s = line.split("\t")
            if int(s) > 0:
                pos.setdefault(q, set()).add(d)
    return pos


def test_no_qrels_positive_is_ever_a_negative(minilm, scifact_slice: Path, tmp_path: Path) -> None:
    result = _mine(minilm, scifact_slice, tmp_path / "o", relative_margin=None)
    positives = _qrels(scifact_slice)
    lines = _triplets(tmp_path / "o")
    assert (
        len(lines)
        == result.report["total"]["pairs"]
        == sum(1 for x in (scifact_slice / "qrels" / "train.tsv").read_text().splitlines()[1:])
    )
    for t in lines:
        assert not set(t["neg_ids"]) & positives[t["query_id"]]
        assert len(t["neg"]) == 3 and t["neg_scores"] == sorted(t["neg_scores"], reverse=True)
    # the test-split positive of query 0 is retrieved by the teacher and dropped as a positive
    q0 = next(t for t in lines if t["query_id"] == lines[0]["query_id"])
    assert result.report["total"]["dropped_as_positive"] > len(lines)
    assert not set(q0["neg_ids"]) & positives[q0["query_id"]]


def test_margin_drops_exactly_the_candidates_above_it(minilm, scifact_slice: Path, tmp_path: Path) -> None:
    enc, _ = minilm
    free = _triplets(
        _mine(minilm, scifact_slice, tmp_path / "free", relative_margin=None, num_negatives=15).output
    )
    for ratio in (0.95, 0.8):
        cut = _triplets(
            _mine(minilm, scifact_slice, tmp_path / f"m{ratio}", relative_margin=ratio, num_negatives=15,
                  min_negatives=1).output
        )  # fmt: skip
        by_id = {t["id"]: t for t in cut}
        for t in free:
            expected = [
                (i, s)
                for i, s in zip(t["neg_ids"], t["neg_scores"], strict=True)
                if s <= ratio * t["pos_score"]
            ]
            got = by_id.get(t["id"])
            got_pairs = list(zip(got["neg_ids"], got["neg_scores"], strict=True)) if got else []
            # the free run lists the top 15; the cut run the top 15 at or below the threshold
            assert got_pairs[: len(expected)] == expected
            if got:
                assert all(s <= ratio * got["pos_score"] for s in got["neg_scores"])
    absolute = _triplets(_mine(minilm, scifact_slice, tmp_path / "abs", relative_margin=None, absolute_margin=0.1,
                               num_negatives=15, min_negatives=1).output)  # fmt: skip
    for t in absolute:
        assert all(s <= t["pos_score"] - 0.1 for s in t["neg_scores"])
    # too few left -> the pair is dropped and counted
    strict = _mine(minilm, scifact_slice, tmp_path / "strict", relative_margin=0.5, num_negatives=3)
    total = strict.report["total"]
    assert total.get("written", 0) + total.get("dropped_too_few_negatives", 0) == total["pairs"]
    assert total.get("dropped_too_few_negatives", 0) > 0
    for t in _triplets(tmp_path / "strict"):
        assert len(t["neg"]) == 3 and all(s <= 0.5 * t["pos_score"] for s in t["neg_scores"])


def test_faiss_and_torch_give_the_same_negatives(minilm, scifact_slice: Path, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    _mine(minilm, scifact_slice, tmp_path / "t", search="torch")
    _mine(minilm, scifact_slice, tmp_path / "f", search="faiss", corpus_shard_size=25)  # 3 shards, merged
    assert (tmp_path / "t" / "triplets.jsonl").read_bytes() == (
        tmp_path / "f" / "triplets.jsonl"
    ).read_bytes()


def test_window_sampling_is_seeded(minilm, scifact_slice: Path, tmp_path: Path) -> None:
    a = _triplets(_mine(minilm, scifact_slice, tmp_path / "a", window=(3, 10), seed=1).output)
    b = _triplets(_mine(minilm, scifact_slice, tmp_path / "b", window=(3, 10), seed=1).output)
    top = {
        t["id"]: t for t in _triplets(_mine(minilm, scifact_slice, tmp_path / "top", num_negatives=10).output)
    }
    assert a == b
    for t in a:
        ranked = top[t["id"]]["neg_ids"]
        assert set(t["neg_ids"]) <= set(ranked[2:10]) and len(t["neg_ids"]) == 3
    with pytest.raises(CurationError, match="fewer than num_negatives"):
        MineSettings(num_negatives=5, window=(1, 3)).check()


def test_triplets_load_through_the_training_data_module(minilm, scifact_slice: Path, tmp_path: Path) -> None:
    result = _mine(minilm, scifact_slice, tmp_path / "o")
    spec = SourceSpec(name="mined", path=str(tmp_path / "o" / "triplets.jsonl"), num_negatives=3)
    source = open_source(spec)
    first = _triplets(tmp_path / "o")[0]
    assert len(source) == result.report["total"]["written"]
    assert source.record(0).negatives == tuple(first["neg"])
    dm = ContrastiveDataModule(
        str(tmp_path / "o" / "mixture.yaml"), tokenizer="all-minilm-l6-v2", batch_size=4
    )
    dataset = dm.build()
    batch = dataset.batch(0, 0)
    assert batch["neg_input_ids"].shape[0] == 4 * 3


def test_pair_shards_and_bad_input(minilm, shared_data: Path, tmp_path: Path) -> None:
    lines = (shared_data / "medquad" / "medquad_qa.jsonl").read_text().splitlines()[:30]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    from lit_nomic.curation.inputs import open_pair_sources, pair_specs

    specs = pair_specs(str(pairs), query_column="question", document_column="answer")
    data = pairs_mine_input(specs, open_pair_sources(specs))
    enc, ident = minilm
    result = mine_negatives(data, enc, tmp_path / "o", MineSettings(num_negatives=2, search="torch"),
                            model_identity=ident)  # fmt: skip
    by_query: dict[str, set[str]] = {}
    for x in lines:
        o = json.loads(x)
        by_query.setdefault(o["question"], set()).add(o["answer"])
    for t in _triplets(tmp_path / "o"):
        assert not set(t["neg"]) & by_query[t["query"]]  # no positive of the same question
    assert result.report["per_source"]["pairs"]["pairs"] == 30
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(CurationError, match=f"{empty}: empty corpus"):
        pairs_mine_input(specs, open_pair_sources(specs), corpus=str(empty))
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"_id": "a", "text": "fine"}\n{"_id": "b", "title": "", "text": " "}\n')
    with pytest.raises(CurationError, match=f"{bad}:2: document 'b' has empty"):
        pairs_mine_input(specs, open_pair_sources(specs), corpus=str(bad))
    qrels = tmp_path / "sf"
    (qrels / "qrels").mkdir(parents=True)
    (qrels / "corpus.jsonl").write_text('{"_id": "d1", "text": "a document"}\n')
    (qrels / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (qrels / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tnope\t1\n")
    with pytest.raises(ValueError, match=r"train.tsv:2: corpus id 'nope'"):
        beir_mine_input(qrels, "train")
