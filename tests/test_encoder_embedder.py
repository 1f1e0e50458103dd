"""Embedder: parity with sentence-transformers on real MiniLM, upcycling, encode, save/load, model hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_nomic.config import preset
from lit_nomic.model import Embedder, Encoder
from lit_nomic.model.embedder import FORMAT_KEY
from lit_nomic.model.weights import ConversionError


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> Embedder:
    return Embedder.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def scifact_texts(scifact_dir: Path) -> list[str]:
    """32 real SciFact documents: 8 full (most beyond MiniLM's 256-token limit), 24 cut short."""
    docs = []
    with (scifact_dir / "corpus.jsonl").open() as f:
        for line in f:
            doc = json.loads(line)
            docs.append(f"{doc['title']} {doc['text']}".strip())
            if len(docs) == 32:
                break
    return docs[:8] + [d[: 12 + 12 * i] for i, d in enumerate(docs[8:])]


def test_minilm_matches_sentence_transformers(
    minilm: Embedder, minilm_dir: Path, scifact_texts: list[str]
) -> None:
    from sentence_transformers import SentenceTransformer

    assert minilm.max_seq_length == 256  # from sentence_bert_config.json, not the tokenizer's 512
    assert minilm.config.pooling == "mean" and minilm.config.normalize
    lengths = [len(x) for x in minilm.tokenize(scifact_texts)]
    assert max(lengths) == 256 and min(lengths) < 16  # truncation and short texts both exercised
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    expected = st.encode(scifact_texts, batch_size=16, convert_to_tensor=True).float()
    ours = minilm.encode(scifact_texts, batch_size=16, convert_to_tensor=True)
    assert ours.dtype == torch.float32 and ours.shape == (32, 384)
    assert (ours - expected).abs().max().item() <= 1e-5


def test_upcycled_minilm_equals_dense(minilm: Embedder, scifact_texts: list[str]) -> None:
    texts = [t[:200] for t in scifact_texts[::4]]
    moe = minilm.upcycled(preset("all-minilm-l6-v2-moe"))
    assert moe.config.is_moe and moe.config.router_renormalize and moe.tokenizer is minilm.tokenizer
    assert moe.name == f"{minilm.name}-moe"
    torch.testing.assert_close(moe.encode(texts), minilm.encode(texts), rtol=0, atol=1e-5)


def test_encode_restores_order_and_is_batch_size_invariant(minilm: Embedder) -> None:
    texts = [
        "a short one",
        "a considerably longer sentence about protein folding " * 3,
        "mid length text here",
        "x",
    ]
    full = minilm.encode(texts, batch_size=64, convert_to_tensor=True)
    tiny = minilm.encode(texts, batch_size=1, convert_to_tensor=True)
    torch.testing.assert_close(tiny, full, rtol=0, atol=1e-5)
    reversed_ = minilm.encode(texts[::-1], batch_size=3, convert_to_tensor=True)
    torch.testing.assert_close(reversed_, full.flip(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(full.norm(dim=-1), torch.ones(4))
    with_prefix = minilm.encode(["x"], prefix="query: ")
    assert not torch.allclose(with_prefix[0], full[3])
    assert minilm.encode([]).shape == (0, 384)
    short = minilm.encode(texts, matryoshka_dim=128)
    torch.testing.assert_close(short, torch.nn.functional.normalize(full[:, :128], dim=-1), rtol=0, atol=1e-5)
    capped = minilm.encode(texts, max_length=4)  # [CLS] + 2 word pieces + [SEP]
    assert not torch.allclose(capped[1], full[1])


def test_encode_errors_and_training_mode_is_restored(minilm: Embedder) -> None:
    with pytest.raises(TypeError, match="list of texts"):
        minilm.encode("one string")
    with pytest.raises(ValueError, match="batch_size"):
        minilm.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="matryoshka_dim 999"):
        minilm.encode(["a"], matryoshka_dim=999)
    minilm.train()
    minilm.encode(["a"])
    assert minilm.training
    minilm.eval()
    assert Embedder(Encoder(preset("tiny-dense"))).tokenizer is None
    with pytest.raises(RuntimeError, match="has no tokenizer"):
        Embedder(Encoder(preset("tiny-dense"))).encode(["a"])


@pytest.mark.parametrize("name", ["tiny-dense", "tiny-moe"])
def test_save_pretrained_round_trip(name: str, minilm: Embedder, tmp_path: Path) -> None:
    config = preset(name, vocab_size=minilm.tokenizer.vocab_size, query_prefix="q: ")
    original = Embedder(Encoder(config), minilm.tokenizer, name=f"my-{name}", max_seq_length=64)
    folder = original.save_pretrained(tmp_path / name)
    saved = json.loads((folder / "config.json").read_text())
    assert saved[FORMAT_KEY]["format_version"] == 1 and saved["hidden_size"] == config.hidden_size
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()
    assert not list(folder.glob("*.tmp"))
    loaded = Embedder.from_pretrained(folder)
    assert loaded.config == config and loaded.name == f"my-{name}" and loaded.max_seq_length == 64
    assert loaded.query_prefix == "q: " and loaded.model_hash == original.model_hash
    texts = ["first text to embed", "second, somewhat longer, text to embed for the round trip"]
    assert torch.equal(
        loaded.encode(texts, convert_to_tensor=True), original.encode(texts, convert_to_tensor=True)
    )


def test_from_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Embedder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ConversionError, match="model_type='gpt2'"):
        Embedder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": \n "bert",,}')
    with pytest.raises(ConversionError, match="invalid JSON at line 2"):
        Embedder.from_pretrained(tmp_path)
    ours = Embedder(Encoder(preset("tiny-dense"))).save_pretrained(tmp_path / "ours")
    config = json.loads((ours / "config.json").read_text())
    config[FORMAT_KEY]["format_version"] = 99
    (ours / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="format_version=99"):
        Embedder.from_pretrained(ours)


def test_model_hash_tracks_weights(minilm: Embedder) -> None:
    h = minilm.model_hash
    assert h == minilm.model_hash and len(h) == 12
    moe = minilm.upcycled(preset("all-minilm-l6-v2-moe"))
    assert moe.model_hash != h
