"""Weight import (HF BERT, XLM-R, NomicBERT), sparse upcycling and the weight hash."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lit_nomic.config import preset
from lit_nomic.model import Embedder, Encoder
from lit_nomic.model.weights import (
    ConversionError,
    config_from_hf,
    convert_bert_state_dict,
    convert_nomic_state_dict,
    state_dict_hash,
    to_nomic_state_dict,
    upcycle,
    upcycle_encoder,
)


def _ids(lengths: list[int], vocab: int, low: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(lengths)
    ids = torch.randint(low, vocab, (len(lengths), width))
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return ids, mask


# ----------------------------------------------------------------------------- XLM-R / RoBERTa
def _tiny_xlmr(folder: Path, vocab_size: int) -> torch.nn.Module:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    hf_config = XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5,
    )  # fmt: skip
    model = XLMRobertaModel(hf_config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a wrong map cannot hide
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return model


def _hf_mean_pooled(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return F.normalize(pooled, dim=-1)


def test_xlmr_import_matches_transformers(tmp_path: Path) -> None:
    model = _tiny_xlmr(tmp_path, vocab_size=120)
    raw = json.loads((tmp_path / "config.json").read_text())
    embedder = Embedder.from_pretrained(tmp_path)
    assert embedder.config.max_position_embeddings == raw["max_position_embeddings"] - 2  # positions 2.. only
    assert embedder.config.type_vocab_size == 1 and embedder.config.pad_token_id == 1
    ids, mask = _ids([9, 38, 3], 120, low=3)  # real tokens never use the pad id 1
    ids = ids.masked_fill(~mask, 1)
    with torch.no_grad():
        ours = embedder.encoder(ids, mask).embeddings
    torch.testing.assert_close(ours, _hf_mean_pooled(model, ids, mask), rtol=0, atol=1e-5)


def test_xlmr_import_with_the_real_tokenizer_through_encode(tmp_path: Path, shared_data: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(shared_data / "xlm_roberta_tokenizer"))
    model = _tiny_xlmr(tmp_path, vocab_size=len(tokenizer))
    embedder = Embedder.from_pretrained(tmp_path, tokenizer=tokenizer)  # loading it twice costs seconds
    texts = ["Hello world", "Das ist ein längerer deutscher Satz über Einbettungen.", "短い文"]
    ours = embedder.encode(texts, batch_size=2, convert_to_tensor=True)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    ref = _hf_mean_pooled(model, batch["input_ids"], batch["attention_mask"].bool())
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- BERT key map
def test_bert_map_fuses_qkv_handles_prefix_and_gamma_beta() -> None:
    config = preset("tiny-dense")
    d = config.hidden_size
    q, k, v = (torch.randn(d, d) for _ in range(3))
    sd = {
        "bert.embeddings.word_embeddings.weight": torch.randn(config.vocab_size, d),
        "bert.embeddings.position_embeddings.weight": torch.randn(config.max_position_embeddings, d),
        "bert.embeddings.token_type_embeddings.weight": torch.randn(2, d),
        "bert.embeddings.LayerNorm.gamma": torch.ones(d),
        "bert.embeddings.LayerNorm.beta": torch.zeros(d),
        "bert.embeddings.position_ids": torch.arange(config.max_position_embeddings)[None],
        "bert.encoder.layer.0.attention.self.query.weight": q,
        "bert.encoder.layer.0.attention.self.key.weight": k,
        "bert.encoder.layer.0.attention.self.value.weight": v,
        "bert.pooler.dense.weight": torch.randn(d, d),
        "cls.predictions.bias": torch.randn(config.vocab_size),
    }
    out = convert_bert_state_dict(sd, config)
    assert torch.equal(out["blocks.0.attn.qkv.weight"], torch.cat([q, k, v]))
    assert torch.equal(out["embeddings.norm.weight"], torch.ones(d))
    assert not any("pooler" in key or "predictions" in key or "position_ids" in key for key in out)
    unprefixed = {key.removeprefix("bert."): value for key, value in sd.items() if key.startswith("bert.")}
    assert convert_bert_state_dict(unprefixed, config).keys() == out.keys()
    with pytest.raises(
        ConversionError, match="unexpected BERT checkpoint key 'bert.encoder.layer.0.foo.weight'"
    ):
        convert_bert_state_dict({**sd, "bert.encoder.layer.0.foo.weight": q}, config)
    del sd["bert.encoder.layer.0.attention.self.key.weight"]
    with pytest.raises(ConversionError, match=r"layer 0: attention.self.\['key'\].weight missing"):
        convert_bert_state_dict(sd, config)


def test_hf_config_conversion_errors_name_the_field() -> None:
    bert = {"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 32}  # fmt: skip
    assert config_from_hf(bert)[1] == "bert"
    with pytest.raises(ConversionError, match="position_embedding_type='relative_key'"):
        config_from_hf({**bert, "position_embedding_type": "relative_key"})
    with pytest.raises(ConversionError, match="hidden_act='quick_gelu'"):
        config_from_hf({**bert, "hidden_act": "quick_gelu"})
    with pytest.raises(ConversionError, match="missing field 'intermediate_size'"):
        config_from_hf({k: v for k, v in bert.items() if k != "intermediate_size"}, "my/config.json")
    with pytest.raises(ConversionError, match="model_type='t5'"):
        config_from_hf({"model_type": "t5"})
    nomic = {"model_type": "nomic_bert", "vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2,
             "activation_function": "gelu", "rotary_emb_fraction": 1.0}  # fmt: skip
    assert config_from_hf(nomic)[0].position_embedding == "rope"
    with pytest.raises(ConversionError, match="activation_function='swiglu'"):
        config_from_hf({**nomic, "activation_function": "swiglu"})
    with pytest.raises(ConversionError, match="rotary_emb_interleaved"):
        config_from_hf({**nomic, "rotary_emb_interleaved": True})


# ----------------------------------------------------------------------------- NomicBERT
NOMIC_CONFIG = {
    "model_type": "nomic_bert", "architectures": ["NomicBertModel"], "vocab_size": 100,
    "pad_vocab_size_multiple": 64, "n_embd": 32, "n_layer": 4, "n_head": 4, "n_inner": 48,
    "n_positions": 2048, "max_trained_positions": 2048, "type_vocab_size": 1, "pad_token_id": 1,
    "rotary_emb_fraction": 1.0, "rotary_emb_base": 10000, "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None, "rotary_scaling_factor": None, "prenorm": False,
    "activation_function": "gelu", "layer_norm_epsilon": 1e-5, "qkv_proj_bias": True,
    "mlp_fc1_bias": True, "mlp_fc2_bias": True, "resid_pdrop": 0.0, "attn_pdrop": 0.0,
    "embd_pdrop": 0.0, "moe_every_n_layers": 2, "num_experts": 4, "moe_top_k": 2,
    "moe_normalize_expert_weights": False, "num_shared_experts": 0, "expert_choice_router": False,
    "ffn_div": 1, "router_aux_loss_coef": 0.1,
}  # fmt: skip


def _nomic_state_dict(c: dict) -> dict[str, torch.Tensor]:
    """Released names and shapes (nomic-embed-text-v2-moe, megablocks dMoE layers), tiny dims."""
    d, f, e, vocab = c["n_embd"], c["n_inner"], c["num_experts"], 128  # 100 padded to a multiple of 64
    sd = {
        "embeddings.word_embeddings.weight": torch.randn(vocab, d) * 0.5,
        "embeddings.token_type_embeddings.weight": torch.randn(1, d) * 0.1,
        "emb_ln.weight": 1 + 0.1 * torch.randn(d),
        "emb_ln.bias": 0.1 * torch.randn(d),
    }
    for i in range(c["n_layer"]):
        p = f"encoder.layers.{i}."
        sd |= {
            p + "attn.Wqkv.weight": torch.randn(3 * d, d) / math.sqrt(d),
            p + "attn.Wqkv.bias": 0.1 * torch.randn(3 * d),
            p + "attn.out_proj.weight": torch.randn(d, d) / math.sqrt(d),
            p + "attn.out_proj.bias": 0.1 * torch.randn(d),
            p + "norm1.weight": 1 + 0.1 * torch.randn(d),
            p + "norm1.bias": 0.1 * torch.randn(d),
            p + "norm2.weight": 1 + 0.1 * torch.randn(d),
            p + "norm2.bias": 0.1 * torch.randn(d),
        }
        if i % c["moe_every_n_layers"] == 1:
            sd |= {
                p + "mlp.router.layer.weight": torch.randn(e, d),
                p + "mlp.experts.mlp.w1": torch.randn(e * f, d) / math.sqrt(d),
                p + "mlp.experts.mlp.w2": torch.randn(e * f, d) / math.sqrt(f),
                p + "mlp.experts.bias": 0.1 * torch.randn(d),
            }
        else:
            sd |= {
                p + "mlp.fc1.weight": torch.randn(f, d) / math.sqrt(d),
                p + "mlp.fc1.bias": 0.1 * torch.randn(f),
                p + "mlp.fc2.weight": torch.randn(d, f) / math.sqrt(f),
                p + "mlp.fc2.bias": 0.1 * torch.randn(d),
            }
    return sd


def _nomic_reference(
    sd: dict[str, torch.Tensor], c: dict, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """NomicBERT forward written from the released remote code's conventions, on padded inputs."""
    d, h, f, e, k = c["n_embd"], c["n_head"], c["n_inner"], c["num_experts"], c["moe_top_k"]
    hd, eps = d // h, c["layer_norm_epsilon"]
    b, s = ids.shape

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (d,), sd[name + ".weight"], sd[name + ".bias"], eps)

    def lin(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    x = ln(
        sd["embeddings.word_embeddings.weight"][ids] + sd["embeddings.token_type_embeddings.weight"][0],
        "emb_ln",
    )
    # rotary on positions 0..S-1 (right padding), pairs (i, i + hd/2) as complex numbers
    theta = torch.arange(s)[:, None].double() * 10000.0 ** (-torch.arange(0, hd, 2).double() / hd)
    rot = torch.polar(torch.ones_like(theta), theta)[None, :, None, :]

    def rope(t: torch.Tensor) -> torch.Tensor:
        z = torch.complex(t[..., : hd // 2].double(), t[..., hd // 2 :].double()) * rot
        return torch.cat([z.real, z.imag], dim=-1).float()

    bias = (~mask)[:, None, None, :].float() * -1e9
    for i in range(c["n_layer"]):
        p = f"encoder.layers.{i}."
        qkv = lin(x, p + "attn.Wqkv").view(b, s, 3, h, hd)
        q, kk, v = rope(qkv[:, :, 0]), rope(qkv[:, :, 1]), qkv[:, :, 2]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, kk) / math.sqrt(hd) + bias
        ctx = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, s, d)
        x = ln(x + lin(ctx, p + "attn.out_proj"), p + "norm1")
        if i % c["moe_every_n_layers"] == 1:
            flat = x.reshape(-1, d)
            weights = (flat @ sd[p + "mlp.router.layer.weight"].T).softmax(-1)
            top_w, top_e = weights.topk(k, dim=-1)  # no renormalisation (moe_normalize_expert_weights=False)
            w1 = sd[p + "mlp.experts.mlp.w1"].view(e, f, d)
            w2 = sd[p + "mlp.experts.mlp.w2"].view(e, f, d)
            y = torch.zeros_like(flat)
            for slot in range(k):
                for ex in range(e):
                    sel = top_e[:, slot] == ex
                    y[sel] += top_w[sel, slot, None] * (F.gelu(flat[sel] @ w1[ex].T) @ w2[ex])
            mlp = (y + sd[p + "mlp.experts.bias"]).view(b, s, d)
        else:
            mlp = lin(F.gelu(lin(x, p + "mlp.fc1")), p + "mlp.fc2")
        x = ln(x + mlp, p + "norm2")
    pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return F.normalize(pooled, dim=-1)


def test_nomic_synthetic_checkpoint_imports_and_matches_reference(tmp_path: Path) -> None:
    sd = _nomic_state_dict(NOMIC_CONFIG)
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(NOMIC_CONFIG))
    embedder = Embedder.from_pretrained(tmp_path)
    config = embedder.config
    assert config.moe_layer_indices == [1, 3] and config.padded_vocab_size == 128
    assert (config.num_experts, config.top_k, config.router_renormalize) == (4, 2, False)
    assert config.moe_output_bias and not config.expert_bias and config.position_embedding == "rope"
    assert (embedder.query_prefix, embedder.document_prefix) == ("search_query: ", "search_document: ")
    ids, mask = _ids([11, 6, 2], 100)
    with torch.no_grad():
        ours = embedder.encoder(ids, mask).embeddings
    torch.testing.assert_close(ours, _nomic_reference(sd, NOMIC_CONFIG, ids, mask), rtol=0, atol=1e-5)
    # Round trip back to the released names and layouts is exact.
    back = to_nomic_state_dict(embedder.encoder)
    assert back.keys() == sd.keys()
    for key, value in sd.items():
        assert torch.equal(back[key], value), key


def test_nomic_config_without_pad_id_takes_the_tokenizers(tmp_path: Path) -> None:
    from types import SimpleNamespace

    config = {k: v for k, v in NOMIC_CONFIG.items() if k != "pad_token_id"}
    save_file(_nomic_state_dict(NOMIC_CONFIG), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert Embedder.from_pretrained(tmp_path).config.pad_token_id == 0  # GPT2Config semantics, no tokenizer
    xlmr_like = SimpleNamespace(pad_token_id=1, model_max_length=512)
    embedder = Embedder.from_pretrained(tmp_path, tokenizer=xlmr_like)
    assert embedder.config.pad_token_id == 1 and embedder.max_seq_length == 512


def test_nomic_map_rejects_wrong_shapes_and_gated_mlps() -> None:
    config, _ = config_from_hf(NOMIC_CONFIG)
    sd = _nomic_state_dict(NOMIC_CONFIG)
    bad = {**sd, "encoder.layers.1.mlp.experts.mlp.w2": torch.randn(32, 4 * 48)}
    with pytest.raises(ConversionError, match=r"mlp.experts.mlp.w2: shape \(32, 192\) != \(E\*F, D\)"):
        convert_nomic_state_dict(bad, config)
    gated = {**sd, "encoder.layers.0.mlp.fc11.weight": torch.randn(48, 32)}
    with pytest.raises(ConversionError, match="gated MLP"):
        convert_nomic_state_dict(gated, config)
    prefixed = {"bert." + key: value for key, value in sd.items()}
    assert convert_nomic_state_dict(prefixed, config).keys() == convert_nomic_state_dict(sd, config).keys()


# ----------------------------------------------------------------------------- upcycling
def _dense_with_biases() -> Encoder:
    dense = Encoder(preset("tiny-dense", vocab_size=1000)).eval()
    with torch.no_grad():
        for name, p in dense.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return dense


@pytest.mark.parametrize(
    "changes",
    [
        dict(expert_bias=True, moe_output_bias=False),  # fc2 bias into every expert's b2
        dict(expert_bias=True, moe_output_bias=True),  # fc2 bias into the output bias
    ],
)
def test_upcycled_identical_experts_reproduce_the_dense_model(changes: dict) -> None:
    dense = _dense_with_biases()
    moe_config = preset(
        "tiny-dense", moe_every_n_layers=1, num_experts=4, top_k=2, router_renormalize=True, **changes
    )
    moe = upcycle_encoder(dense, moe_config).eval()
    ids, mask = _ids([8, 3, 12], 1000)
    with torch.no_grad():
        torch.testing.assert_close(moe(ids, mask).embeddings, dense(ids, mask).embeddings, rtol=0, atol=1e-5)
    expert_w1 = moe.blocks[0].ffn.experts.w1
    assert torch.equal(expert_w1[3], dense.blocks[0].ffn.fc1.weight.T)
    router = moe.blocks[0].ffn.router.weight
    assert abs(router.std().item() - moe_config.router_init_std) < 0.01


def test_upcycle_noise_fine_grained_and_bias_errors() -> None:
    dense = _dense_with_biases()
    sd, cfg = dense.state_dict(), dense.config
    noisy = upcycle(
        sd, cfg, preset("tiny-dense", moe_every_n_layers=2, num_experts=4, expert_bias=True), noise_std=0.1
    )
    w1 = noisy["blocks.1.ffn.experts.w1"]
    assert not torch.equal(w1[0], w1[1])
    # .item(): pytest >= 9.2 no longer accepts 0-d tensors in approx.
    assert (w1[0] - sd["blocks.1.ffn.fc1.weight"].T).std().item() == pytest.approx(
        0.1 * sd["blocks.1.ffn.fc1.weight"].std().item(), rel=0.2
    )
    fine = upcycle(
        sd, cfg, preset("tiny-dense", moe_every_n_layers=2, num_experts=4, ffn_div=2, expert_bias=True)
    )
    assert fine["blocks.1.ffn.experts.w1"].shape == (4, 64, 64)
    assert torch.equal(fine["blocks.1.ffn.experts.w1"][1], sd["blocks.1.ffn.fc1.weight"][64:].T)
    assert torch.equal(fine["blocks.1.ffn.experts.b1"][2], sd["blocks.1.ffn.fc1.bias"][:64])
    no_bias = preset("tiny-dense", moe_every_n_layers=2, num_experts=4, expert_bias=False)
    with pytest.raises(
        ConversionError, match="layer 1 has an fc1 bias but the MoE config has expert_bias=False"
    ):
        upcycle(sd, cfg, no_bias)
    assert "blocks.1.ffn.output_bias" in upcycle(sd, cfg, no_bias, strict_biases=False)
    with pytest.raises(ConversionError, match="hidden_size differs"):
        upcycle(sd, cfg, preset("tiny-dense", hidden_size=32, moe_every_n_layers=2))


# ----------------------------------------------------------------------------- hash
def test_state_dict_hash_is_stable_and_sensitive() -> None:
    encoder = Encoder(preset("tiny-dense"))
    sd = encoder.state_dict()
    h = state_dict_hash(sd, encoder.config)
    assert len(h) == 12 and h == state_dict_hash(dict(reversed(list(sd.items()))), encoder.config)
    changed = {k: v.clone() for k, v in sd.items()}
    changed["blocks.0.norm1.bias"][0] += 1e-3
    assert state_dict_hash(changed, encoder.config) != h
    assert state_dict_hash(sd, encoder.config.replace(query_prefix="q: ")) != h
