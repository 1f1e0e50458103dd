"""Hard-negative selection (``negatives: random | first``) and the miner's teacher scores in batches.

``first`` is contrastors' ``sample_negatives: false`` (issue 13): the first ``n`` negatives of each
mined list, best first, every epoch. The miner's ``pos_score`` / ``neg_scores`` travel with the texts
actually chosen into the batch's ``teacher_scores`` ``[B, 1 + n]`` (issue 15), which the distiller reads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lit_nomic.data.collate import TEACHER_SCORES_KEY, PairCollator
from lit_nomic.data.datamodule import ContrastiveDataModule
from lit_nomic.data.jsonl import ColumnExtractor, JsonlPairs
from lit_nomic.data.mixture import MixtureError, SourceSpec, load_mixture
from lit_nomic.data.records import DataFormatError, PairRecord, TrainingPair, choose
from lit_nomic.data.sampler import row_rng

ROWS = 8
POOL = 5  # negatives per mined list
N = 2  # negatives per batch row


def mined_line(i: int) -> dict[str, Any]:
    """A line as ``lit-nomic mine`` writes it: negatives best first, every score distinct."""
    return {
        "query": f"query {i}",
        "pos": [f"positive {i}"],
        "neg": [f"negative {i} {j}" for j in range(POOL)],
        "id": str(i),
        "pos_score": round(0.9 - i / 100, 6),
        "neg_scores": [round(0.8 - j / 10 - i / 1000, 6) for j in range(POOL)],
    }


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def triplets(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "triplets.jsonl", [mined_line(i) for i in range(ROWS)])


def datamodule(path: Path, minilm_dir: Path, **source: Any) -> ContrastiveDataModule:
    spec = SourceSpec(
        name="mined", path=str(path), query_prefix="", document_prefix="", num_negatives=N, **source
    )
    dm = ContrastiveDataModule([spec], tokenizer=str(minilm_dir), batch_size=4, seed=3)
    dm.build()
    return dm


def decoded_rows(dm: ContrastiveDataModule, batch: dict[str, Any]) -> list[tuple[int, list[str]]]:
    """(file row, negative texts) of each batch row, read back from the token ids."""
    tok = dm.dataset.collator.tokenizer  # type: ignore[union-attr]
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)
    queries = [decode(ids) for ids in batch["query_input_ids"]]
    negatives = [decode(ids) for ids in batch["neg_input_ids"]]
    return [(int(q.split()[-1]), negatives[i * N : (i + 1) * N]) for i, q in enumerate(queries)]


# ------------------------------------------------------------------------------------ selection
def test_first_takes_the_first_n_in_file_order_every_epoch(triplets: Path, minilm_dir: Path) -> None:
    dm = datamodule(triplets, minilm_dir, negatives="first")
    assert dm.dataset is not None
    seen = set()
    for epoch in range(3):
        for step in range(len(dm.dataset)):
            batch = dm.dataset.batch(epoch, step)
            for row, negatives in decoded_rows(dm, batch):
                seen.add(row)
                assert negatives == [f"negative {row} {j}" for j in range(N)]
    assert seen == set(range(ROWS))


def test_random_draws_differ_across_epochs(triplets: Path, minilm_dir: Path) -> None:
    dm = datamodule(triplets, minilm_dir)  # the default
    assert dm.specs[0].negatives == "random"
    picks: dict[int, set[tuple[str, ...]]] = {}
    for epoch in range(4):
        for step in range(len(dm.dataset)):  # type: ignore[arg-type]
            for row, negatives in decoded_rows(dm, dm.dataset.batch(epoch, step)):  # type: ignore[union-attr]
                assert len(set(negatives)) == N
                assert set(negatives) <= {f"negative {row} {j}" for j in range(POOL)}
                picks.setdefault(row, set()).add(tuple(negatives))
    assert any(len(p) > 1 for p in picks.values())


def _previous_choose(
    record: PairRecord, n: int, rng_for_row: Callable[[], np.random.Generator]
) -> TrainingPair:
    """``choose`` as it was before ``negatives: first`` existed (the random behaviour must not move)."""
    if len(record.queries) == 1 and len(record.positives) == 1 and len(record.negatives) == n:
        return TrainingPair(record.queries[0], record.positives[0], record.negatives[:n])
    rng = rng_for_row()
    query = record.queries[int(rng.integers(len(record.queries)))]
    positive = record.positives[int(rng.integers(len(record.positives)))]
    negatives: tuple[str, ...] = ()
    if n:
        picks = rng.choice(len(record.negatives), size=n, replace=False)
        negatives = tuple(record.negatives[int(i)] for i in picks)
    return TrainingPair(query, positive, negatives)


def test_random_selection_is_unchanged() -> None:
    records = [
        PairRecord(("qa", "qb"), ("p1", "p2", "p3"), tuple(f"n{i}" for i in range(6))),
        PairRecord(("q",), ("p",), tuple(f"n{i}" for i in range(4))),
        PairRecord(("q",), ("p1", "p2"), ("n0", "n1")),
        PairRecord(("q",), ("p",), ("n0", "n1")),
    ]
    for r, record in enumerate(records):
        for epoch in range(6):
            rng = lambda e=epoch, r=r: row_rng(11, e, 0, r)
            old = _previous_choose(record, 2, rng)
            assert choose(record, 2, rng) == old == choose(record, 2, rng, "random")


def test_first_keeps_drawing_alternatives_but_not_negatives() -> None:
    record = PairRecord(("qa", "qb"), ("p1", "p2"), tuple(f"n{i}" for i in range(6)))
    pairs = [choose(record, 3, lambda e=e: row_rng(0, e, 0, 0), "first") for e in range(10)]
    assert all(p.negatives == ("n0", "n1", "n2") for p in pairs)
    assert len({p.query for p in pairs}) == 2
    plain = PairRecord(("q",), ("p",), tuple(f"n{i}" for i in range(6)))
    assert choose(plain, 2, lambda: pytest.fail("first needs no RNG"), "first").negatives == ("n0", "n1")
    with pytest.raises(ValueError, match="negatives must be one of"):
        choose(plain, 2, lambda: row_rng(0, 0, 0, 0), "best")  # type: ignore[arg-type]


def test_first_still_needs_n_negatives(tmp_path: Path, minilm_dir: Path) -> None:
    short = write_jsonl(tmp_path / "short.jsonl", [{"query": "q", "pos": "p", "neg": ["only one"]}])
    with pytest.raises(DataFormatError, match="need at least 2"):
        datamodule(short, minilm_dir, negatives="first")


def test_bad_values_name_the_field() -> None:
    with pytest.raises(
        MixtureError, match=r"source 'm': field 'negatives': must be one of \('random', 'first'\)"
    ):
        load_mixture([{"name": "m", "path": "x.jsonl", "num_negatives": 2, "negatives": "best"}])
    with pytest.raises(MixtureError, match="source 'm': field 'teacher_scores'"):
        load_mixture([{"name": "m", "path": "x.jsonl", "teacher_scores": "yes"}])
    spec = load_mixture([{"name": "m", "path": "x.jsonl", "num_negatives": 2, "negatives": "first"}])[0]
    assert spec.negatives == "first" and spec.teacher_scores is True


def test_per_language_entries_keep_the_selection(tmp_path: Path) -> None:
    folder = tmp_path / "mined"
    folder.mkdir()
    for lang in ("de", "en"):
        write_jsonl(folder / f"{lang}.jsonl", [mined_line(0)])
    specs = load_mixture(
        [{"name": "m", "path": str(folder), "per_language": True, "num_negatives": 2, "negatives": "first"}]
    )
    assert [(s.name, s.negatives) for s in specs] == [("m/de", "first"), ("m/en", "first")]


# ------------------------------------------------------------------------------ teacher scores
def test_reader_keeps_scores_aligned_with_texts(triplets: Path) -> None:
    record = JsonlPairs("m", triplets, ColumnExtractor(query="query", num_negatives=N)).record(3)
    line = mined_line(3)
    assert record.positive_scores == (line["pos_score"],)
    assert record.negative_scores == tuple(line["neg_scores"])
    unscored = JsonlPairs("m", triplets, ColumnExtractor(num_negatives=N, teacher_scores=False)).record(3)
    assert unscored.positive_scores is None and unscored.negative_scores is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"neg_scores": [0.5, 0.4]}, "'neg_scores' has 2 score"),
        ({"neg_scores": [0.5, "x", 0.3, 0.2, 0.1]}, r"neg_scores\[1\] must be a finite number"),
        ({"pos_score": True}, r"pos_score\[0\] must be a finite number"),
        ({"neg_scores": None}, "'neg_scores' must be a list"),
        ({"pos_score": [0.9, 0.8]}, "'pos_score' has 2 score"),
    ],
)
def test_bad_scores_are_bad_lines(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [mined_line(0), {**mined_line(1), **change}])
    with pytest.raises(DataFormatError, match=message) as err:
        JsonlPairs("m", path, ColumnExtractor(num_negatives=N))
    assert "bad.jsonl:2" in str(err.value)
    assert len(JsonlPairs("m", path, ColumnExtractor(num_negatives=N), on_error="skip")) == 1


def test_one_score_field_without_the_other_is_a_bad_line(tmp_path: Path) -> None:
    line = mined_line(0)
    del line["neg_scores"]
    path = write_jsonl(tmp_path / "half.jsonl", [line])
    with pytest.raises(DataFormatError, match="missing field 'neg_scores'"):
        JsonlPairs("m", path, ColumnExtractor(num_negatives=N))
    # without negatives only pos_score is read
    assert JsonlPairs("m", path, ColumnExtractor()).record(0).positive_scores == (0.9,)


@pytest.mark.parametrize("selection", ["first", "random"])
def test_batch_teacher_scores_are_those_of_the_chosen_texts(
    triplets: Path, minilm_dir: Path, selection: str
) -> None:
    dm = datamodule(triplets, minilm_dir, negatives=selection)
    lines = [mined_line(i) for i in range(ROWS)]
    score_of = {
        text: score for line in lines for text, score in zip(line["neg"], line["neg_scores"], strict=True)
    }
    for epoch in range(2):
        for step in range(len(dm.dataset)):  # type: ignore[arg-type]
            batch = dm.dataset.batch(epoch, step)  # type: ignore[union-attr]
            scores = batch[TEACHER_SCORES_KEY]
            assert scores.dtype == torch.float32 and scores.shape == (4, 1 + N)
            expected = [
                [lines[row]["pos_score"], *(score_of[text] for text in negatives)]
                for row, negatives in decoded_rows(dm, batch)
            ]
            if selection == "first":  # the hand-picked values: the first N of each list
                rows = [row for row, _ in decoded_rows(dm, batch)]
                assert expected == [[lines[r]["pos_score"], *lines[r]["neg_scores"][:N]] for r in rows]
            assert torch.equal(scores, torch.tensor(expected, dtype=torch.float32))


def test_hand_picked_first_scores(tmp_path: Path, minilm_dir: Path) -> None:
    """Four rows, one batch, values written out by hand."""
    rows = [
        {
            "query": "alpha",
            "pos": "a doc",
            "neg": ["n1", "n2", "n3"],
            "pos_score": 0.5,
            "neg_scores": [0.4, 0.3, 0.2],
        },
        {
            "query": "beta",
            "pos": "b doc",
            "neg": ["m1", "m2", "m3"],
            "pos_score": 0.7,
            "neg_scores": [0.6, 0.1, 0.0],
        },
        {"query": "gamma", "pos": "c doc", "neg": ["k1", "k2"], "pos_score": 1, "neg_scores": [-0.5, -0.25]},
        {
            "query": "delta",
            "pos": "d doc",
            "neg": ["j1", "j2", "j3"],
            "pos_score": 0.25,
            "neg_scores": [0.125, 0.5, 0.75],
        },
    ]
    dm = datamodule(write_jsonl(tmp_path / "t.jsonl", rows), minilm_dir, negatives="first")
    batch = dm.dataset.batch(0, 0)  # type: ignore[union-attr]
    tok = dm.dataset.collator.tokenizer  # type: ignore[union-attr]
    order = [tok.decode(ids, skip_special_tokens=True) for ids in batch["query_input_ids"]]
    by_query = {
        "alpha": [0.5, 0.4, 0.3],
        "beta": [0.7, 0.6, 0.1],
        "gamma": [1.0, -0.5, -0.25],
        "delta": [0.25, 0.125, 0.5],
    }
    assert sorted(order) == sorted(by_query)
    assert torch.equal(batch[TEACHER_SCORES_KEY], torch.tensor([by_query[q] for q in order]))


def test_mixed_batches_omit_scores_and_warn_once(minilm_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    collator = PairCollator(str(minilm_dir))
    spec = SourceSpec("s", "x", num_negatives=1)
    pairs = [TrainingPair("q1", "d1", ("n1",), (0.9, 0.1)), TrainingPair("q2", "d2", ("n2",))]
    with caplog.at_level(logging.WARNING, logger="lit_nomic.data.collate"):
        assert TEACHER_SCORES_KEY not in collator(pairs, spec, 0)
        assert TEACHER_SCORES_KEY not in collator(pairs, spec, 0)
    assert sum("carry teacher scores" in r.getMessage() for r in caplog.records) == 1
    unscored = [TrainingPair("q1", "d1", ("n1",)), TrainingPair("q2", "d2", ("n2",))]
    assert TEACHER_SCORES_KEY not in collator(unscored, spec, 0)
    # no negatives: no teacher_scores (a KL over the positive alone is always zero)
    pairs = [TrainingPair("q1", "d1", (), (0.9,)), TrainingPair("q2", "d2", (), (0.8,))]
    assert TEACHER_SCORES_KEY not in collator(pairs, SourceSpec("s", "x"), 0)


def test_teacher_scores_false_ignores_them(triplets: Path, minilm_dir: Path) -> None:
    dm = datamodule(triplets, minilm_dir, negatives="first", teacher_scores=False)
    assert TEACHER_SCORES_KEY not in dm.dataset.batch(0, 0)  # type: ignore[union-attr]


def test_the_distiller_reads_the_same_key() -> None:
    from lit_nomic.training.distill import TEACHER_SCORES_KEY as DISTILL_KEY

    assert DISTILL_KEY == TEACHER_SCORES_KEY


def test_the_finetuning_recipe_takes_the_first_negatives_like_contrastors() -> None:
    import yaml

    from lit_nomic.data.mixture import validate_spec

    recipe = Path(__file__).resolve().parents[1] / "experiments" / "nomic-v2-finetune.yaml"
    sources = yaml.safe_load(recipe.read_text(encoding="utf-8"))["data"]["sources"]
    for entry in sources:
        spec = SourceSpec(**entry)
        validate_spec(spec)
        assert (spec.num_negatives, spec.negatives) == (10, "first"), spec.name
