"""Encoder: RoPE, padding invariance, MoE plumbing, checkpointing, pooling, and input errors."""

from __future__ import annotations

import pytest
import torch

from lit_nomic.config import preset
from lit_nomic.model import Encoder, EncoderOutput
from lit_nomic.model.encoder import PackedBatch, normalize_and_truncate
from lit_nomic.model.rope import apply_rotary, rotary_tables


def _batch(lengths: list[int], vocab: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    width = width or max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), width))
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    return ids.masked_fill(~mask, 0), mask


# ----------------------------------------------------------------------------- RoPE
def test_rope_matches_complex_rotation_and_preserves_norm() -> None:
    head_dim, base = 16, 10000.0
    x = torch.randn(5, 3, head_dim, dtype=torch.float64)
    pos = torch.tensor([0, 1, 7, 100, 2047])
    cos, sin = rotary_tables(pos, head_dim, base, dtype=torch.float64)
    y = apply_rotary(x, cos, sin)
    # Non-interleaved layout: (x[i], x[i + d/2]) is the complex number rotated by pos * base^(-2i/d).
    half = head_dim // 2
    z = torch.complex(x[..., :half], x[..., half:])
    theta = pos[:, None].double() * base ** (-torch.arange(0, head_dim, 2).double() / head_dim)
    rz = z * torch.polar(torch.ones_like(theta), theta)[:, None, :]
    expected = torch.cat([rz.real, rz.imag], dim=-1)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=0, atol=1e-12)
    assert torch.equal(y[0], x[0])  # position 0 is the identity


def test_rope_dot_product_depends_only_on_offset() -> None:
    head_dim = 32
    q, k = torch.randn(1, 1, head_dim, dtype=torch.float64), torch.randn(1, 1, head_dim, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        cq, sq = rotary_tables(torch.tensor([m]), head_dim, 10000.0, torch.float64)
        ck, sk = rotary_tables(torch.tensor([n]), head_dim, 10000.0, torch.float64)
        return float((apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum())

    for m, n in [(3, 10), (0, 5), (40, 2)]:
        for shift in (1, 17, 500):
            assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-9)
    assert score(3, 10) != pytest.approx(score(3, 11), abs=1e-6)


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("name", ["tiny-dense", "tiny-moe"])
def test_forward_backward_shapes_and_moe_stats(name: str) -> None:
    config = preset(name)
    encoder = Encoder(config).train()
    ids, mask = _batch([7, 12, 3], config.vocab_size)
    out = encoder(ids, mask, token_type_ids=torch.zeros_like(ids))
    assert isinstance(out, EncoderOutput)
    assert out.embeddings.shape == (3, config.hidden_size)
    torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(3))
    assert out.aux_loss.shape == () and out.z_loss.shape == ()
    n_moe = len(config.moe_layer_indices)
    assert len(out.tokens_per_expert) == len(out.router_entropy) == n_moe
    for counts in out.tokens_per_expert:
        assert counts.shape == (config.num_experts,) and not counts.requires_grad
        assert int(counts.sum()) == 22 * config.top_k  # 22 real tokens, never the 14 pads
    loss = out.embeddings.sum() + out.aux_loss + out.z_loss
    loss.backward()
    grads = {n: p.grad for n, p in encoder.named_parameters()}
    assert grads["blocks.0.attn.qkv.weight"].abs().sum() > 0
    if n_moe:
        assert out.aux_loss > 0
        assert grads["blocks.1.ffn.router.weight"].abs().sum() > 0
    else:
        assert out.aux_loss == 0 and out.z_loss == 0


def test_moe_layers_see_only_real_tokens() -> None:
    encoder = Encoder(preset("tiny-moe")).eval()
    seen: list[int] = []
    for layer in encoder.moe_layers:
        layer.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    ids, mask = _batch([4, 9, 1], 1000, width=16)
    encoder(ids, mask)
    assert seen == [14] * len(encoder.moe_layers)


def test_aux_and_z_loss_are_the_mean_over_moe_layers() -> None:
    encoder = Encoder(preset("tiny-moe")).eval()
    values: list[tuple[float, float]] = []
    for layer in encoder.moe_layers:
        layer.register_forward_hook(
            lambda _m, _a, out: values.append((float(out.aux_loss.detach()), float(out.z_loss.detach())))
        )
    ids, mask = _batch([6, 3], 1000)
    with torch.no_grad():
        out = encoder(ids, mask)
    assert len(values) == 2
    assert float(out.aux_loss) == pytest.approx(sum(v[0] for v in values) / 2, rel=1e-6)
    assert float(out.z_loss) == pytest.approx(sum(v[1] for v in values) / 2, rel=1e-6)


@pytest.mark.parametrize("name", ["tiny-dense", "tiny-moe"])
def test_padding_invariance(name: str) -> None:
    config = preset(name)
    encoder = Encoder(config).eval()
    ids, mask = _batch([6], config.vocab_size)
    alone = encoder(ids, mask).embeddings
    # The same text right-padded, left-padded, and padded to a much wider batch.
    wide = torch.zeros(1, 40, dtype=torch.long)
    wide[0, :6] = ids[0]
    left = torch.zeros(1, 40, dtype=torch.long)
    left[0, -6:] = ids[0]
    batch = torch.cat([wide, left])
    batch_mask = torch.stack([torch.arange(40) < 6, torch.arange(40) >= 34])
    padded = encoder(batch, batch_mask).embeddings
    torch.testing.assert_close(padded, alone.expand(2, -1), rtol=0, atol=1e-5)


def test_text_alone_equals_text_in_batch_with_longer_texts() -> None:
    config = preset("tiny-dense")
    encoder = Encoder(config).eval()
    ids, mask = _batch([5, 30, 17], config.vocab_size)
    together = encoder(ids, mask).embeddings
    for row, n in enumerate([5, 30, 17]):
        alone = encoder(ids[row : row + 1, :n], mask[row : row + 1, :n]).embeddings
        torch.testing.assert_close(together[row], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-dense", "tiny-moe"])
def test_gradient_checkpointing_gives_identical_gradients(name: str) -> None:
    config = preset(name, hidden_dropout=0.1, attention_dropout=0.1)
    ids, mask = _batch([9, 4], config.vocab_size)

    def run(flag: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        encoder = Encoder(config).train()
        encoder.gradient_checkpointing = flag
        torch.manual_seed(2)
        out = encoder(ids, mask)
        (out.embeddings.pow(2).sum() + out.aux_loss).backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    plain, ckpt = run(False), run(True)
    assert plain.keys() == ckpt.keys()
    for key in plain:
        torch.testing.assert_close(ckpt[key], plain[key], rtol=1e-5, atol=1e-7, msg=key)


def test_cls_pooling_takes_the_first_real_token_and_token_embeddings_are_zero_at_pads() -> None:
    config = preset("tiny-dense", pooling="cls", normalize=False)
    encoder = Encoder(config).eval()
    ids, mask = _batch([3, 5], config.vocab_size)
    out = encoder(ids, mask, output_token_embeddings=True)
    assert out.token_embeddings is not None and out.token_embeddings.shape == (2, 5, config.hidden_size)
    torch.testing.assert_close(out.embeddings, out.token_embeddings[:, 0])
    assert out.token_embeddings[0, 3:].abs().sum() == 0


def test_mean_pooling_and_matryoshka() -> None:
    config = preset("tiny-moe", normalize=False)
    encoder = Encoder(config).eval()
    ids, mask = _batch([3, 5], config.vocab_size)
    out = encoder(ids, mask, output_token_embeddings=True)
    expected = out.token_embeddings.sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(out.embeddings, expected, rtol=1e-5, atol=1e-6)
    short = encoder(ids, mask, matryoshka_dim=32).embeddings  # normalize=False: truncation only
    torch.testing.assert_close(short, expected[:, :32], rtol=1e-5, atol=1e-6)
    renorm = normalize_and_truncate(expected, 32)
    torch.testing.assert_close(renorm.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(normalize_and_truncate(normalize_and_truncate(expected), 32), renorm)


def test_pre_norm_has_a_final_norm_and_trains() -> None:
    config = preset("tiny-dense", norm_position="pre")
    encoder = Encoder(config)
    assert encoder.final_norm is not None and Encoder(preset("tiny-dense")).final_norm is None
    ids, mask = _batch([4, 6], config.vocab_size)
    encoder(ids, mask).embeddings.sum().backward()
    assert encoder.final_norm.weight.grad is not None


def test_bert_init_and_module_layout() -> None:
    config = preset("tiny-dense", initializer_range=0.05)
    encoder = Encoder(config)
    assert isinstance(encoder.blocks, torch.nn.ModuleList) and len(encoder.blocks) == config.num_layers
    assert encoder.blocks[0].attn.qkv.weight.shape == (3 * config.hidden_size, config.hidden_size)
    word = encoder.embeddings.word_embeddings.weight
    assert word[config.pad_token_id].abs().sum() == 0
    assert word.std().item() == pytest.approx(0.05, rel=0.05)
    assert encoder.blocks[0].attn.qkv.bias.abs().sum() == 0
    assert torch.equal(encoder.blocks[1].norm2.weight, torch.ones(config.hidden_size))


def test_update_loss_free_biases_reaches_every_moe_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = Encoder(preset("tiny-moe", loss_free_balancing=True))
    calls: list[int] = []
    for i, layer in enumerate(encoder.moe_layers):
        monkeypatch.setattr(layer, "update_loss_free_bias", lambda i=i: calls.append(i))
    encoder.update_loss_free_biases()
    assert calls == [0, 1]


def test_packed_batch_bookkeeping() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    batch = PackedBatch.from_mask(mask)
    assert batch.indices_T.tolist() == [0, 1, 5, 6, 7]
    assert batch.positions_T.tolist() == [0, 1, 0, 1, 2]
    assert batch.row_T.tolist() == [0, 0, 1, 1, 1]
    assert batch.cu_seqlens.tolist() == [0, 2, 5] and batch.max_seqlen == 3
    x = torch.arange(5.0).unsqueeze(1)
    assert torch.equal(batch.unpad(batch.pad(x)), x)


def test_input_errors_name_the_problem() -> None:
    config = preset("tiny-dense")
    encoder = Encoder(config)
    ids, mask = _batch([3, 2], config.vocab_size)
    mask[1] = False
    with pytest.raises(ValueError, match=r"rows \[1\] of attention_mask have no real token"):
        encoder(ids, mask)
    with pytest.raises(ValueError, match="attention_mask shape"):
        encoder(ids, mask[:, :2])
    with pytest.raises(ValueError, match="input_ids must be"):
        encoder(ids[0])
    too_long = torch.ones(1, config.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        encoder(too_long)
    with pytest.raises(ValueError, match="matryoshka dim 999"):
        encoder(ids[:1], matryoshka_dim=999)


def test_flash_attn_backend_refuses_cpu_fp32_clearly() -> None:
    encoder = Encoder(preset("tiny-dense", attention_backend="flash_attn"))
    ids, mask = _batch([3], 1000)
    with pytest.raises((RuntimeError, ImportError), match="flash"):
        encoder(ids, mask)


def test_bf16_autocast_keeps_rotary_in_the_compute_dtype() -> None:
    config = preset("tiny-moe", moe_every_n_layers=0)  # rope, dense FFNs
    encoder = Encoder(config).eval()
    ids, mask = _batch([8, 5], config.vocab_size)
    dtypes: list[torch.dtype] = []
    encoder.blocks[0].attn.out.register_forward_hook(lambda _m, args, _o: dtypes.append(args[0].dtype))
    with torch.no_grad():
        ref = encoder(ids, mask).embeddings
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = encoder(ids, mask).embeddings
    assert dtypes == [torch.float32, torch.bfloat16]
    torch.testing.assert_close(low.float(), ref, rtol=0, atol=2e-2)
