"""EncoderConfig: presets, derived fields, and errors that name the offending field."""

from __future__ import annotations

import json

import pytest

from lit_nomic.config import RUNTIME_FIELDS, ConfigError, EncoderConfig, preset, preset_names


def test_nomic_v2_preset_layout() -> None:
    c = preset("nomic-embed-text-v2-moe")
    assert c.padded_vocab_size == 250048
    assert c.moe_layer_indices == [1, 3, 5, 7, 9, 11]
    assert (c.num_experts, c.top_k, c.expert_ffn) == (8, 2, 3072)
    assert c.router == "softmax" and not c.router_renormalize and not c.router_bias
    assert c.position_embedding == "rope" and c.head_dim == 64 and c.layer_norm_eps == 1e-5
    assert c.matryoshka_dims == [768, 256]
    assert c.query_prefix == "search_query: " and c.document_prefix == "search_document: "


def test_dense_backbone_and_minilm() -> None:
    assert not preset("nomic-xlm-2048").is_moe
    m = preset("all-minilm-l6-v2")
    assert (m.hidden_size, m.num_layers, m.num_heads, m.ffn_size, m.vocab_size) == (384, 6, 12, 1536, 30522)
    assert m.position_embedding == "absolute" and m.layer_norm_eps == 1e-12 and m.type_vocab_size == 2


def test_every_preset_builds_and_round_trips(tmp_path) -> None:
    for name in preset_names():
        c = preset(name)
        c.save(tmp_path / f"{name}.json")
        assert EncoderConfig.load(tmp_path / f"{name}.json") == c


def test_fine_grained_experts() -> None:
    c = preset("tiny-moe", num_experts=16, top_k=4, ffn_div=4)
    assert c.expert_ffn == 32
    assert preset("tiny-moe", expert_ffn_size=48).expert_ffn == 48


def test_explicit_moe_layers_win() -> None:
    assert preset("tiny-moe", moe_layers=[0, 2]).moe_layer_indices == [0, 2]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"top_k": 5, "num_experts": 4}, "top_k"),
        ({"num_heads": 5}, "num_heads"),
        ({"router": "hash"}, "router"),
        ({"pooling": "max"}, "pooling"),
        ({"position_embedding": "alibi"}, "position_embedding"),
        ({"ffn_div": 3}, "ffn_div"),
        ({"moe_layers": [0, 9]}, "moe_layers"),
        ({"matryoshka_dims": [128]}, "matryoshka_dims"),
        ({"hidden_dropout": 1.5}, "hidden_dropout"),
        ({"router": "expert_choice", "loss_free_balancing": True}, "loss_free_balancing"),
    ],
)
def test_invalid_configs_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        preset("tiny-moe", **overrides)


def test_unknown_router_lists_allowed_values() -> None:
    with pytest.raises(ConfigError, match="softmax, sigmoid, expert_choice"):
        EncoderConfig(router="hash")  # type: ignore[arg-type]


def test_unknown_preset_and_field() -> None:
    with pytest.raises(ConfigError, match="choose one of: .*nomic-embed-text-v2-moe"):
        preset("nomic-embed-v3")
    with pytest.raises(ConfigError, match="hidden_dim"):
        preset("tiny-moe", hidden_dim=12)
    with pytest.raises(ConfigError, match="hidden_dim"):
        EncoderConfig.from_dict({"hidden_dim": 12})


# ----------------------------------------------------------------------------- saved configs (issue 9)
def test_saved_config_must_spell_out_every_field_that_changes_the_model(tmp_path) -> None:
    saved = preset("tiny-moe", pooling="cls", router="sigmoid", top_k=1).to_dict()
    for name in ("pooling", "router", "top_k"):
        partial = {k: v for k, v in saved.items() if k != name}
        path = tmp_path / f"no-{name}.json"
        path.write_text(json.dumps(partial))
        with pytest.raises(ConfigError, match=rf"{path}: .*missing field\(s\) \['{name}'\]"):
            EncoderConfig.load(path)
        with pytest.raises(ConfigError, match=name):
            EncoderConfig.from_dict(partial)


def test_saved_config_may_omit_training_only_fields(tmp_path) -> None:
    saved = preset("tiny-moe").to_dict()
    for name in RUNTIME_FIELDS:
        saved.pop(name)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    assert EncoderConfig.load(path) == preset(
        "tiny-moe", **{n: getattr(EncoderConfig(), n) for n in RUNTIME_FIELDS}
    )


def test_presets_and_overrides_still_default_what_they_do_not_name() -> None:
    assert preset("tiny-moe", num_experts=8).pooling == "mean"
    assert EncoderConfig(hidden_size=32, num_heads=4).router == "softmax"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_experts": "4"}, "num_experts must be an int, got '4'"),
        ({"num_experts": "eight"}, "num_experts must be an int, got 'eight'"),
        ({"top_k": True}, "top_k must be an int, got True"),
        ({"router_renormalize": "yes"}, "router_renormalize must be a bool"),
        ({"hidden_dropout": "0.1"}, "hidden_dropout must be a float"),
        ({"moe_layers": "1"}, "moe_layers must be a list of ints or null"),
        ({"matryoshka_dims": [64, "32"]}, "matryoshka_dims must be a list of ints"),
        ({"router": 3}, "router must be one of softmax, sigmoid, expert_choice"),
    ],
)
def test_wrong_types_name_the_field_and_the_expected_type(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        preset("tiny-moe", **overrides)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_wrong_type_in_a_saved_config_names_the_file(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**preset("tiny-moe").to_dict(), "num_experts": "4"}))
    with pytest.raises(ConfigError, match=rf"^{path}: num_experts must be an int, got '4'$"):
        EncoderConfig.load(path)


def test_ints_are_accepted_where_floats_are_expected() -> None:
    assert preset("tiny-moe", rope_base=10000, router_jitter=0).rope_base == 10000


def test_every_preset_resolves_to_its_pinned_config() -> None:
    """Every field of every preset, as resolved before the presets shared their common fields
    (tests/presets_resolved.json). A new EncoderConfig field or a changed default shows up here
    by name; regenerate the file only for a change that is meant to alter the presets."""
    import dataclasses
    from pathlib import Path

    pinned = json.loads((Path(__file__).parent / "presets_resolved.json").read_text(encoding="utf-8"))
    assert sorted(pinned) == preset_names()
    for name in preset_names():
        got = json.loads(json.dumps(dataclasses.asdict(preset(name))))
        diff = {k: (pinned[name].get(k), got.get(k)) for k in pinned[name].keys() | got.keys()
                if pinned[name].get(k, ...) != got.get(k, ...)}  # fmt: skip
        assert not diff, f"preset {name!r}: field: (pinned, now): {diff}"
