"""Expert merging (issue 15): MoE layers collapsed into dense FFNs by routing frequency or uniformly.

The exactness check: all-MiniLM-L6-v2 upcycled into identical experts (the quickstart layout) merges
back to all-MiniLM-L6-v2's embeddings within 1e-6, whatever the weights. The rest runs on tiny
seeded models: the weighted average by hand, shared experts and zero-padded fine-grained experts
(exact for identical experts), the measured frequencies, and ``lit-nomic merge-experts``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_nomic.model.build import ModelSpec, build_embedder
from lit_nomic.model.embedder import Embedder
from lit_nomic.model.merge import merge_experts, merged_state_dict, routing_frequencies

TOKENIZER = "all-minilm-l6-v2"
TEXTS = [
    "what is the role of enzymes in protein folding",
    "coral reefs are home to many species of fish",
    "a volcano erupted and covered the town in ash",
    "the pianist kept a steady rhythm through the song",
    "river floods damaged the old stone bridge",
    "vaccines train the immune system against a virus",
]
QUICKSTART_MOE = {
    "moe_every_n_layers": 2,
    "num_experts": 8,
    "top_k": 2,
    "router": "softmax",
    "router_renormalize": True,
    "expert_bias": True,
    "moe_output_bias": False,
}


def _embed(model: Embedder) -> torch.Tensor:
    return model.encode(TEXTS, convert_to_tensor=True, batch_size=3)


def test_upcycled_minilm_merges_back_to_minilm(minilm_dir: Path) -> None:
    dense = Embedder.from_pretrained("all-minilm-l6-v2")
    moe = build_embedder(ModelSpec(init_from="all-minilm-l6-v2", overrides=QUICKSTART_MOE)).eval()
    assert moe.config.moe_layer_indices == [1, 3, 5]
    reference = _embed(dense)
    for weighting in ("frequency", "uniform"):
        merged, weights = merge_experts(moe, weighting, TEXTS)
        assert not merged.config.is_moe
        assert set(weights) == {1, 3, 5} and all(abs(sum(w) - 1) < 1e-5 for w in weights.values())
        assert (_embed(merged) - reference).abs().max().item() < 1e-6, weighting
        for layer in (1, 3, 5):
            got, want = merged.encoder.blocks[layer].ffn, dense.encoder.blocks[layer].ffn
            torch.testing.assert_close(got.fc1.weight, want.fc1.weight, atol=1e-6, rtol=0)
            torch.testing.assert_close(got.fc2.bias, want.fc2.bias, atol=1e-6, rtol=0)


def tiny_moe(**overrides: object) -> Embedder:
    values = {"vocab_size": 30522, "router_renormalize": True, "moe_output_bias": True, **overrides}
    return build_embedder(ModelSpec(preset="tiny-moe", tokenizer=TOKENIZER, overrides=values)).eval()


def test_merge_is_the_weighted_average_by_hand() -> None:
    torch.manual_seed(0)
    moe = tiny_moe(expert_bias=True)
    with torch.no_grad():
        for p in moe.encoder.parameters():  # distinct experts and non-zero biases everywhere
            p.add_(0.05 * torch.randn_like(p))
    weights = {1: torch.tensor([0.1, 0.2, 0.3, 0.4]), 3: torch.tensor([2.0, 0.0, 1.0, 1.0])}
    state, config = merged_state_dict(moe, weights)
    assert not config.is_moe and config.ffn_size == moe.config.ffn_size
    for layer, w in weights.items():
        p = (w / w.sum()).double()
        ffn = moe.encoder.blocks[layer].ffn
        w1, w2 = ffn.experts.w1.double(), ffn.experts.w2.double()
        want_fc1 = sum(p[e] * w1[e] for e in range(4)).T
        want_fc2 = sum(p[e] * w2[e] for e in range(4)).T
        want_b1 = sum(p[e] * ffn.experts.b1.double()[e] for e in range(4))
        want_b2 = sum(p[e] * ffn.experts.b2.double()[e] for e in range(4)) + ffn.output_bias.double()
        prefix = f"blocks.{layer}.ffn."
        for key, want in (("fc1.weight", want_fc1), ("fc2.weight", want_fc2), ("fc1.bias", want_b1), ("fc2.bias", want_b2)):  # fmt: skip
            torch.testing.assert_close(state[prefix + key].double(), want.float().double(), atol=1e-6, rtol=0)
    # everything outside the MoE layers is copied unchanged
    source = moe.encoder.state_dict()
    for key in ("embeddings.word_embeddings.weight", "blocks.0.ffn.fc1.weight", "blocks.3.attn.qkv.weight"):
        assert torch.equal(state[key], source[key])


@pytest.mark.parametrize("ffn_div,shared", [(2, 1), (4, 1), (4, 0)])
def test_identical_experts_with_shared_expert_and_padding_are_exact(ffn_div: int, shared: int) -> None:
    """Fine-grained experts (zero-padded to ffn_size) plus a shared expert (concatenated) merge exactly."""
    torch.manual_seed(1)
    moe = tiny_moe(ffn_div=ffn_div, num_shared_experts=shared, expert_bias=True)
    with torch.no_grad():
        for layer in moe.encoder.moe_layers:
            for w in (layer.experts.w1, layer.experts.w2, layer.experts.b1, layer.experts.b2):
                w.copy_((w[:1] + 0.1 * torch.randn_like(w[:1])).expand_as(w))  # identical copies
            layer.output_bias.normal_(std=0.1)
            if layer.shared_expert is not None:
                layer.shared_expert.fc1.bias.normal_(std=0.1)
    merged, _ = merge_experts(moe, "frequency", TEXTS)
    assert (_embed(merged) - _embed(moe)).abs().max().item() < 1e-6


def test_routing_frequencies_count_the_assignments() -> None:
    moe = tiny_moe()
    freq = routing_frequencies(moe, TEXTS, batch_size=4)
    assert set(freq) == {1, 3}
    ids, mask = moe.collate(moe.tokenize(TEXTS))
    with torch.no_grad():
        out = moe(ids, mask)
    for layer, tokens in zip((1, 3), out.tokens_per_expert, strict=True):
        assert freq[layer].sum().item() == pytest.approx(1.0)
        torch.testing.assert_close(freq[layer], tokens.double() / tokens.sum(), atol=1e-12, rtol=0)


def test_merge_refuses_what_it_cannot_do() -> None:
    dense = build_embedder(
        ModelSpec(preset="tiny-dense", tokenizer=TOKENIZER, overrides={"vocab_size": 30522})
    )
    with pytest.raises(ValueError, match="no MoE layer"):
        merge_experts(dense, "uniform")
    with pytest.raises(ValueError, match="give some"):
        merge_experts(tiny_moe(), "frequency", None)


def test_merge_experts_command_writes_a_folder_the_suite_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lit_nomic.cli import main

    moe = tiny_moe()
    moe.save_pretrained(tmp_path / "moe")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "dense"
    main(["merge-experts", "--model", str(tmp_path / "moe"), "--output", str(out), "--texts", str(tmp_path / "texts.txt")])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["weighting"] == "frequency" and report["num_texts"] == len(TEXTS)
    assert set(report["weights"]) == {"1", "3"}
    loaded = Embedder.from_pretrained(out)
    assert not loaded.config.is_moe and loaded.name == "tiny-moe-merged"
    student = build_embedder(ModelSpec(init_from=str(out)))  # as a run's init_from
    expected, _ = merge_experts(moe, "frequency", TEXTS)
    assert (_embed(student.eval()) - _embed(expected)).abs().max().item() < 1e-6
