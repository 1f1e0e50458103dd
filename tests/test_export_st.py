"""lit-nomic export --format sentence-transformers: SentenceTransformer(DIR) loads it offline and embeds
as we do, for dense MiniLM (a plain BertModel folder) and an upcycled MoE (lit_nomic's input module);
mteb's own sentence-transformers runner evaluates the folder."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from beir_writer import write_beir

from lit_nomic.config import preset
from lit_nomic.export.sentence_transformers import MODULE_TYPE, export_sentence_transformers
from lit_nomic.model.embedder import Embedder

pytest.importorskip("sentence_transformers")

TEXTS = [
    "Sparse mixture-of-experts layers route each token to two of eight experts.",
    "short",
    "What causes the common cold?",
    "Rhinoviruses are the most frequent cause of the common cold in adults and children alike.",
]


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> Embedder:
    model = Embedder.from_pretrained(minilm_dir)
    # prompts of our own, so that prompt_name is exercised end to end
    model.encoder.config = replace(model.config, query_prefix="query: ", document_prefix="passage: ")
    return model


@pytest.fixture(scope="module")
def moe(minilm: Embedder) -> Embedder:
    # upcycled, then the expert copies perturbed so that routing changes the embeddings
    model = minilm.upcycled(preset("all-minilm-l6-v2-moe", num_experts=4), noise_std=0.05, seed=1).eval()
    model.encoder.config = replace(model.config, query_prefix="query: ", document_prefix="passage: ")
    return model


def _max_cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float((1.0 - cos).max())


def _modes(folder: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_dense_minilm_is_a_plain_bert_folder_sentence_transformers_loads(
    minilm: Embedder, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    out = export_sentence_transformers(minilm, tmp_path / "st", card="# card\n")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"] for m in modules] == [
        "sentence_transformers.models.Transformer",
        "sentence_transformers.models.Pooling",
        "sentence_transformers.models.Normalize",
    ]
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    assert _modes(out) == {0o644}

    st = SentenceTransformer(str(out), device="cpu", local_files_only=True)
    assert st.max_seq_length == 256
    assert st.prompts["query"] == "query: " and st.prompts["document"] == "passage: "
    for kind in ("query", "document"):
        theirs = st.encode(TEXTS, prompt_name=kind)
        ours = minilm.encode(TEXTS, prompt_name=kind)
        assert _max_cosine_distance(theirs, ours) <= 1e-5
    # and the folder reads back into lit_nomic unchanged
    back = Embedder.from_pretrained(out)
    assert back.config.query_prefix == "query: " and back.max_seq_length == 256
    np.testing.assert_allclose(back.encode(TEXTS), minilm.encode(TEXTS), atol=1e-6, rtol=0)


def test_upcycled_moe_loads_through_lit_nomic_module(moe: Embedder, minilm: Embedder, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    dense = minilm.encode(TEXTS)
    ours = moe.encode(TEXTS)
    assert _max_cosine_distance(ours, dense) > 1e-5  # the experts differ: a real MoE, not the dense copy

    out = export_sentence_transformers(moe, tmp_path / "st_moe")
    modules = json.loads((out / "modules.json").read_text())
    assert modules[0]["type"] == MODULE_TYPE
    assert _modes(out) == {0o644}
    # sentence-transformers >= 6 asks before importing a class outside its namespace
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(out), device="cpu", local_files_only=True)
    st = SentenceTransformer(str(out), device="cpu", local_files_only=True, trust_remote_code=True)
    assert st.max_seq_length == 256 and st.encode(["x"]).shape == (1, 384)
    for kind in ("query", "document"):
        assert (
            _max_cosine_distance(st.encode(TEXTS, prompt_name=kind), moe.encode(TEXTS, prompt_name=kind))
            <= 1e-5
        )
    # sentence-transformers can save it again, and the copy loads the same
    st.save(str(tmp_path / "resaved"))
    again = SentenceTransformer(str(tmp_path / "resaved"), device="cpu", trust_remote_code=True)
    assert _max_cosine_distance(again.encode(TEXTS), ours) <= 1e-5


def test_mteb_evaluates_the_exported_folder_through_sentence_transformers(
    moe: Embedder, tmp_path: Path, shared_data: Path
) -> None:
    import mteb
    from mteb.cache import ResultCache
    from mteb.models import SentenceTransformerEncoderWrapper

    from lit_nomic.evaluation import mteb_adapter as ma
    from lit_nomic.evaluation.beir import load_beir
    from lit_nomic.evaluation.retrieval import evaluate_retrieval
    from lit_nomic.evaluation.retrieval_data import subsample

    scifact = subsample(load_beir(shared_data / "beir" / "scifact"), 40, max_queries=8, seed=3)
    folder = write_beir(scifact, tmp_path / "scifact_tiny")
    out = export_sentence_transformers(moe, tmp_path / "st_moe")

    wrapper = SentenceTransformerEncoderWrapper(str(out), device="cpu", trust_remote_code=True)
    result = mteb.evaluate(
        wrapper,
        [ma.offline_retrieval_task(folder)],
        cache=ResultCache(cache_path=tmp_path / "mteb"),
        overwrite_strategy="always",
        encode_kwargs={"batch_size": 8},
        show_progress_bar=False,
    )
    score = ma.main_scores(result)["SciFact"]["default"]
    ours = evaluate_retrieval(moe, load_beir(folder)).metrics["ndcg@10"]
    assert 0.0 < score <= 1.0
    assert score == pytest.approx(ours, abs=1e-4)  # mteb rounds to 5 decimals
