"""The Python API a sentence-transformers user expects: ``from lit_nomic import Embedder``, ``encode``
with prompts returning numpy, ``similarity``; the evaluation protocol keeps returning tensors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TEXTS = ["what is a mixture of experts?", "Sparse experts route each token to k of E FFNs.", "x"]


def test_import_lit_nomic_is_light_and_exports_the_api() -> None:
    code = (
        "import sys, lit_nomic\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, sorted(sys.modules)\n"
        "from lit_nomic import Embedder, EncoderConfig, ContrastiveModule, ContrastiveDataModule\n"
        "assert Embedder.__module__ == 'lit_nomic.model.embedder'\n"
        "assert ContrastiveModule.__name__ == 'ContrastiveModule' and EncoderConfig().hidden_size == 384\n"
        "assert ContrastiveDataModule.__name__ == 'ContrastiveDataModule'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    import lit_nomic

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        lit_nomic.Nope  # noqa: B018


def test_sentence_transformers_style_encode(minilm_dir: Path) -> None:
    from dataclasses import replace

    from sentence_transformers import SentenceTransformer

    from lit_nomic import Embedder

    model = Embedder.from_pretrained("all-minilm-l6-v2")  # the packaged name, offline
    emb = model.encode(TEXTS)
    assert isinstance(emb, np.ndarray) and emb.dtype == np.float32 and emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-6)
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    assert np.abs(emb - st.encode(TEXTS)).max() <= 1e-5

    model.encoder.config = replace(model.config, query_prefix="query: ", document_prefix="passage: ")
    queries = model.encode(TEXTS, prompt_name="query", batch_size=2, show_progress_bar=False)
    np.testing.assert_allclose(queries, model.encode(TEXTS, prompt="query: "), atol=1e-6, rtol=0)
    np.testing.assert_allclose(queries, st.encode(TEXTS, prompt="query: "), atol=1e-5, rtol=0)
    assert not np.allclose(queries, emb, atol=1e-3)
    np.testing.assert_allclose(model.encode_document(TEXTS), model.encode(TEXTS, prompt_name="passage"))
    as_tensor = model.encode(TEXTS, prompt_name="query", convert_to_tensor=True)
    assert isinstance(as_tensor, torch.Tensor)
    torch.testing.assert_close(as_tensor, torch.from_numpy(queries), atol=1e-6, rtol=0)
    assert isinstance(model.encode(TEXTS, convert_to_numpy=False), torch.Tensor)
    short = model.encode(TEXTS, truncate_dim=128)
    np.testing.assert_allclose(
        short, emb[:, :128] / np.linalg.norm(emb[:, :128], axis=-1, keepdims=True), atol=1e-5
    )

    sim = model.similarity(queries, model.encode(TEXTS, prompt_name="document"))
    assert isinstance(sim, torch.Tensor) and sim.shape == (3, 3)
    docs = model.encode(TEXTS, prompt_name="document")
    torch.testing.assert_close(sim, torch.from_numpy(queries @ docs.T), atol=1e-6, rtol=0)
    assert model.prompts == {"query": "query: ", "document": "passage: "}
    assert model.get_sentence_embedding_dimension() == 384

    # the evaluation protocol (prefix= / show_progress= / max_length= ...) still returns tensors
    legacy = model.encode(TEXTS, prefix="query: ", batch_size=2, show_progress=False)
    assert isinstance(legacy, torch.Tensor)
    torch.testing.assert_close(legacy, torch.from_numpy(queries), atol=0, rtol=0)
    assert isinstance(model.encode_queries(TEXTS), torch.Tensor)
    with pytest.raises(ValueError, match="unknown prompt_name 'code'"):
        model.encode(TEXTS, prompt_name="code")
    with pytest.raises(ValueError, match="one of prefix, prompt, prompt_name"):
        model.encode(TEXTS, prompt="a", prompt_name="query")
