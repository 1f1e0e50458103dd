"""Retrieval metrics: hand-checked values, and parity with pytrec_eval and mteb's MRR."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from lit_nomic.evaluation.beir import load_beir
from lit_nomic.evaluation.metrics import (
    DEFAULT_METRICS,
    evaluate_run,
    metric_keys,
    parse_metric,
    per_query_metrics,
    pytrec_eval_per_query,
    rank_documents,
    to_mteb_key,
)

L2_3 = math.log2(3)  # discount at rank 2
L2_5 = math.log2(5)  # rank 4
L2_6 = math.log2(6)  # rank 5

# q1: graded judgments; d3 judged non-relevant (0); d5 unjudged. Relevant (rel >= 1): d1, d2, d4.
# Run order, trec_eval style (score desc, then doc id desc):
#   rank1 d3 (0.9)  rank2 d2 (0.9)  rank3 d5 (0.7)  rank4 d4 (0.5)  rank5 d1 (0.5)
#   rel:   0             1                0              1              2
QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0, "d4": 1},
    "q2": {"d9": 0},  # judged, but nothing relevant: evaluated and scores 0 (mteb/BEIR keep it)
    "q3": {"d1": 1},  # not in the run: not evaluated (pytrec_eval semantics)
}
RUN = {
    "q1": {"d1": 0.5, "d2": 0.9, "d3": 0.9, "d5": 0.7, "d4": 0.5},
    "q2": {"d9": 1.0},
    "q4": {"d1": 1.0},  # no judgments: ignored
}
# Ideal DCG for q1: gains sorted 2, 1, 1 -> 2/1 + 1/log2(3) + 1/log2(4) = 2 + 0.63093 + 0.5
IDCG3 = 2 + 1 / L2_3 + 1 / 2
HAND_Q1 = {
    "ndcg@1": 0.0,  # d3 is non-relevant
    "ndcg@3": (1 / L2_3) / IDCG3,  # only d2 at rank 2: 0.63093 / 3.13093 = 0.20152
    "ndcg@5": (1 / L2_3 + 1 / L2_5 + 2 / L2_6) / IDCG3,  # (0.63093 + 0.43068 + 0.77371) / 3.13093 = 0.58619
    "recall@3": 1 / 3,  # d2 of {d1, d2, d4}
    "recall@5": 1.0,
    "precision@1": 0.0,
    "precision@5": 3 / 5,
    "precision@10": 3 / 10,  # trec_eval divides by k even if fewer docs were retrieved
    "map@3": (1 / 2) / 3,  # precision at rank 2 = 1/2, divided by all 3 relevant
    "map@5": (1 / 2 + 2 / 4 + 3 / 5) / 3,  # = 0.53333
    "mrr@1": 0.0,
    "mrr@10": 1 / 2,
    "hit_rate@1": 0.0,
    "hit_rate@3": 1.0,
}
KEYS = list(HAND_Q1)


def test_rank_documents_breaks_ties_by_id_descending() -> None:
    assert rank_documents(RUN["q1"]) == ["d3", "d2", "d5", "d4", "d1"]


def test_hand_checked_values() -> None:
    per_query = per_query_metrics(QRELS, RUN, KEYS)
    assert set(per_query) == {"q1", "q2"}
    for key, expected in HAND_Q1.items():
        assert per_query["q1"][key] == pytest.approx(expected, abs=1e-12), key
        assert per_query["q2"][key] == 0.0
    result = evaluate_run(QRELS, RUN, KEYS)
    assert result.num_queries == 2
    assert result.mean["ndcg@5"] == pytest.approx(HAND_Q1["ndcg@5"] / 2, abs=1e-12)
    assert result.mean["map@5"] == pytest.approx(0.5333333333333333 / 2, abs=1e-12)


def test_hand_checked_values_match_pytrec_eval() -> None:
    pytest.importorskip("pytrec_eval")
    ours = per_query_metrics(QRELS, RUN, KEYS)
    theirs = pytrec_eval_per_query(QRELS, RUN, KEYS)
    assert ours.keys() == theirs.keys()
    for q in ours:
        for key in KEYS:
            assert ours[q][key] == pytest.approx(theirs[q][key], abs=1e-12), (q, key)


def test_ignore_identical_ids_removes_self_hits() -> None:
    qrels = {"a": {"b": 1}}
    run = {"a": {"a": 0.99, "b": 0.5}}
    assert evaluate_run(qrels, run, ["mrr@10"]).mean["mrr@10"] == 0.5
    assert evaluate_run(qrels, run, ["mrr@10"], ignore_identical_ids=True).mean["mrr@10"] == 1.0


def test_negative_relevance_is_non_relevant_and_has_zero_gain() -> None:
    qrels = {"q": {"bad": -1, "good": 1}}
    run = {"q": {"bad": 0.9, "good": 0.1}}
    values = per_query_metrics(qrels, run, ["ndcg@2", "recall@1", "mrr@10"])["q"]
    assert values["ndcg@2"] == pytest.approx(1 / L2_3)  # good at rank 2, ideal = 1
    assert values["recall@1"] == 0.0
    assert values["mrr@10"] == 0.5


def _random_case(seed: int) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(60)] + ["doc-é", "Z9", "a", "d10b"]
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for qi in range(40):
        q = f"q{qi}"
        if qi % 9 != 8:  # some run-only queries
            judged = rng.sample(docs, rng.randint(1, 12))
            qrels[q] = {d: rng.choice([-1, 0, 0, 1, 1, 2, 3]) for d in judged}
        if qi % 11 != 10:  # some judged queries absent from the run
            retrieved = rng.sample(docs, rng.randint(0, len(docs)))
            # one decimal: many exact ties, exercising the doc-id tie-break
            run[q] = {d: round(rng.uniform(-1, 1), 1) for d in retrieved}
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_random_parity_with_pytrec_eval(seed: int) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels, run = _random_case(seed)
    ks = [1, 2, 3, 5, 10, 20, 100]
    keys = metric_keys(["ndcg", "recall", "map", "precision", "hit_rate"], ks)
    ours = per_query_metrics(qrels, run, keys)
    # raw trec_eval numbers, independent of our backend wrapper
    measures = {f"{m}.{','.join(map(str, ks))}" for m in ("ndcg_cut", "recall", "map_cut", "P", "success")}
    raw = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    assert ours.keys() == raw.keys()
    trec_name = {
        "ndcg": "ndcg_cut",
        "recall": "recall",
        "map": "map_cut",
        "precision": "P",
        "hit_rate": "success",
    }
    for q in ours:
        for key in keys:
            name, k = parse_metric(key)
            assert ours[q][key] == pytest.approx(raw[q][f"{trec_name[name]}_{k}"], abs=1e-6), (seed, q, key)
    ours_mean = evaluate_run(qrels, run, keys).mean
    backend_mean = evaluate_run(qrels, run, keys, backend="pytrec_eval").mean
    for key in keys:
        assert ours_mean[key] == pytest.approx(backend_mean[key], abs=1e-6)


@pytest.mark.data
def test_scifact_sized_run_equals_pytrec_eval(scifact_dir: Path) -> None:
    """Our numpy engine is the default because it is faster than pytrec_eval (see metrics.py); this
    pins it to pytrec_eval on a real-sized task: SciFact test's qrels (300 queries) against a
    1,000-deep ranking per query over the real 5,183 document ids, relevant documents ranked higher
    but not always retrieved, and scores rounded so that the doc-id tie-break matters."""
    pytest.importorskip("pytrec_eval")
    ds = load_beir(scifact_dir, "test")
    rng = random.Random(0)
    run: dict[str, dict[str, float]] = {}
    for q in ds.query_ids:
        relevant = {d for d, rel in ds.qrels[q].items() if rel > 0 and rng.random() < 0.8}
        retrieved = relevant | set(rng.sample(ds.doc_ids, 1000 - len(relevant)))
        run[q] = {d: round(rng.uniform(0, 1) + (0.3 if d in relevant else 0.0), 2) for d in retrieved}
    ours = evaluate_run(ds.qrels, run, DEFAULT_METRICS)
    theirs = evaluate_run(ds.qrels, run, DEFAULT_METRICS, backend="pytrec_eval")
    assert ours.num_queries == theirs.num_queries == 300
    for q, row in theirs.per_query.items():
        for key, value in row.items():
            assert ours.per_query[q][key] == pytest.approx(value, abs=1e-12), (q, key)
    assert ours.mean == pytest.approx(theirs.mean, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_mrr_parity_with_mteb(seed: int) -> None:
    retrieval_metrics = pytest.importorskip("mteb._evaluators.retrieval_metrics")
    qrels, run = _random_case(seed)
    run = {q: docs for q, docs in run.items() if q in qrels and qrels[q]}  # mteb looks up every run query
    ks = [1, 3, 10, 100]
    theirs = retrieval_metrics.mrr(qrels, run, ks)
    ours = evaluate_run(qrels, run, [f"mrr@{k}" for k in ks])
    for k in ks:
        expected = sum(theirs[f"MRR@{k}"]) / len(theirs[f"MRR@{k}"])
        assert ours.mean[f"mrr@{k}"] == pytest.approx(expected, abs=1e-9)


def test_mteb_key_names() -> None:
    assert to_mteb_key("ndcg@10") == "ndcg_at_10"
    assert to_mteb_key("precision@1") == "precision_at_1"
    with pytest.raises(ValueError, match="unknown metric 'ndcg10'"):
        parse_metric("ndcg10")
    with pytest.raises(ValueError, match="unknown metric 'foo@3'"):
        metric_keys(["foo"], [3])


def test_bad_inputs_are_named() -> None:
    with pytest.raises(TypeError, match=r"qrels\['q'\]\['d'\] must be an int"):
        per_query_metrics({"q": {"d": 1.5}}, {"q": {"d": 1.0}}, ["ndcg@1"])  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"run\['q'\]\['d'\] must be a finite number"):
        per_query_metrics({"q": {"d": 1}}, {"q": {"d": float("nan")}}, ["ndcg@1"])
    with pytest.raises(ValueError, match="none of the 1 queries in the run has judgments"):
        evaluate_run({"q": {"d": 1}}, {"other": {"d": 1.0}}, ["ndcg@1"])
