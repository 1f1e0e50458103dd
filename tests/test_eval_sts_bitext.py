"""STS correlations and Tatoeba bitext metrics: parity with scipy/sklearn and the real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lexical_encoder import HashingEncoder

from lit_nomic.evaluation.pairs import (
    STSPairs,
    bitext_scores,
    evaluate_bitext,
    evaluate_sts,
    load_stsb_multi_mt,
    load_tatoeba,
    nearest_neighbours,
    pearson,
    spearman,
    sts_scores,
    stsb_languages,
    tatoeba_languages,
)


def test_spearman_averages_ties() -> None:
    # average ranks of x are [1.5, 3, 1.5, 4]: exactly y, so the rank correlation is exactly 1
    assert spearman(np.array([10.0, 20.0, 10.0, 30.0]), np.array([1.5, 3.0, 1.5, 4.0])) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_match_scipy(seed: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 6, 300).astype(float)  # many ties, like STS gold scores
    pred = gold + rng.normal(scale=2.0, size=300)
    assert spearman(pred, gold) == pytest.approx(stats.spearmanr(pred, gold).statistic, abs=1e-12)
    assert pearson(pred, gold) == pytest.approx(stats.pearsonr(pred, gold).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="one of the inputs is constant"):
        pearson(np.ones(5), np.arange(5.0))


def test_sts_scores_use_cosine() -> None:
    e1 = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), dim=1)
    e2 = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=1)
    out = sts_scores(e1, e2, np.array([5.0, 2.5, 0.0]))
    assert out["spearman"] == pytest.approx(1.0)
    # cosines x = 1, 0.7071, 0 vs gold y = 5, 2.5, 0: deviations x' = .4310, .1381, -.5690,
    # y' = 2.5, 0, -2.5 -> r = 2.5 / sqrt(0.52860 * 12.5) = 0.97258
    assert out["pearson"] == pytest.approx(0.97258, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bitext_scores_match_sklearn(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    gold = np.arange(200)
    pred = np.where(rng.random(200) < 0.6, gold, rng.integers(0, 200, 200))
    ours = bitext_scores(pred, gold)
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(gold, pred))
    for name, fn in (
        ("precision", metrics.precision_score),
        ("recall", metrics.recall_score),
        ("f1", metrics.f1_score),
    ):
        assert ours[name] == pytest.approx(fn(gold, pred, average="weighted", zero_division=0), abs=1e-12), (
            name
        )


def test_bitext_hand_checked() -> None:
    # gold 0,1,2,3; predictions 0,0,2,2: labels 0 and 2 are predicted twice (precision 1/2),
    # labels 1 and 3 never (precision 0, zero_division=0); recall 1,0,1,0
    out = bitext_scores(np.array([0, 0, 2, 2]), np.arange(4))
    assert out["accuracy"] == 0.5
    assert out["precision"] == pytest.approx(0.25)
    assert out["recall"] == pytest.approx(0.5)
    assert out["f1"] == pytest.approx((2 / 3 + 2 / 3) / 4)  # f1 of labels 0, 2 = 2*(.5*1)/(1.5)


def test_nearest_neighbours_chunked() -> None:
    g = torch.Generator().manual_seed(0)
    src = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    tgt = torch.nn.functional.normalize(torch.randn(70, 8, generator=g), dim=1)
    assert np.array_equal(
        nearest_neighbours(src, tgt, chunk_size=7), torch.argmax(src @ tgt.T, dim=1).numpy()
    )


def test_stsb_real_files(shared_data: Path) -> None:
    root = shared_data / "stsb_multi_mt"
    assert stsb_languages(root) == ["de", "en", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "zh"]
    en = load_stsb_multi_mt(root, "en", "test")
    assert len(en.scores) == 1379 and en.scores.min() == 0.0 and en.scores.max() == 5.0
    assert (en.sentences1[0], en.sentences2[0], en.scores[0]) == (
        "A girl is styling her hair.",
        "A girl is brushing her hair.",
        2.5,
    )


def test_stsb_errors(tmp_path: Path) -> None:
    (tmp_path / "stsb-xx-test.csv").write_text("a,b,2.0\nc,d,high\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"stsb-xx-test\.csv:2: score 'high' is not a number"):
        load_stsb_multi_mt(tmp_path, "xx")
    (tmp_path / "stsb-xx-test.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"stsb-xx-test\.csv:1: expected 'sentence1,sentence2,score'"):
        load_stsb_multi_mt(tmp_path, "xx")


def test_sts_lexical_encoder_orders_pairs() -> None:
    pairs = STSPairs(
        "toy",
        "en",
        "test",
        ["a man plays a guitar", "a man plays a guitar", "a woman slices onions", "the cat sleeps"],
        ["a man plays the guitar", "a man plays piano", "a woman cuts an onion", "stocks fell sharply"],
        np.array([5.0, 3.0, 3.8, 0.0]),
    )
    metrics, counts, _ = evaluate_sts(HashingEncoder(dim=512), pairs)
    assert counts == {"num_pairs": 4, "num_unique_sentences": 7, "embedding_dim": 512}
    assert metrics["spearman"] > 0.5


def test_tatoeba_real_files_and_lexical_mining(shared_data: Path) -> None:
    root = shared_data / "tatoeba_laser"
    langs = tatoeba_languages(root)
    assert len(langs) == 112 and "deu" in langs
    deu = load_tatoeba(root, "deu")
    assert len(deu.source) == len(deu.target) == 1000
    assert deu.target[0] == "Mary said she didn't know where Tom was."
    # Interlingua shares words with English, Mandarin none: a word-hashing encoder mines the
    # former far above chance (1/1000) and the latter barely
    ina = load_tatoeba(root, "ina")
    metrics, counts, _ = evaluate_bitext(HashingEncoder(dim=4096), ina)
    assert counts["num_pairs"] == len(ina.source) == 1000
    assert metrics["accuracy"] > 0.05 and metrics["f1"] <= metrics["accuracy"] + 1e-9
    cmn, _, _ = evaluate_bitext(HashingEncoder(dim=4096), load_tatoeba(root, "cmn"))
    assert cmn["accuracy"] < 0.02


def test_tatoeba_line_mismatch(tmp_path: Path) -> None:
    (tmp_path / "tatoeba.abc-eng.abc").write_text("x\ny\n", encoding="utf-8")
    (tmp_path / "tatoeba.abc-eng.eng").write_text("x\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"tatoeba\.abc-eng\.abc has 2 lines but .*tatoeba\.abc-eng\.eng has 1"
    ):
        load_tatoeba(tmp_path, "abc")
