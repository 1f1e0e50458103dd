"""The nomic-v2 recipes carry the values verified against nomic-ai/contrastors (experiments/README.md).

Each test pins one row group of the recipe table: the optimiser and schedule (checked against values
computed by hand), the data mixture (prefixes, columns and per-language sources, built from a synthetic
data root in the real folder layout), and the documented contrastors-equivalent settings (checked on a
tiny AdamW problem: contrastors' world-size-scaled loss with its clip equals ours with the clip and the
aux coefficient divided by the world size).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from train_common_loader import load_train_common

from lit_nomic.data.mixture import load_mixture, open_source
from lit_nomic.model.build import ModelSpec, target_config
from lit_nomic.training.module import ContrastiveModule, LossConfig
from lit_nomic.training.optim import OptimConfig, lr_multiplier

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# contrastors configs/data/contrastive_pretrain_multilingual_full.yaml: the English datasets by prefix
CLUSTERING = {
    "reddit_title_body", "s2orc_citation_titles", "s2orc_title_abstract", "s2orc_abstract_citation",
    "s2orc_abstract_body", "codesearch", "stackexchange_duplicate_questions", "stackexchange_title_body",
    "stackexchange_body_body",
}  # fmt: skip
CLASSIFICATION = {
    "amazon_reviews", "wikianswers", "wikipedia", "agnews", "ccnews", "npr", "cnn", "sentence_compression",
    "wikihow", "altlex", "quora", "simplewiki",
}  # fmt: skip
SEARCH = {
    "paq",
    "gooaq",
    "yahoo_title_answer",
    "amazonqa",
    "yahoo_qa",
    "yahoo_title_question",
    "eli5",
    "squad",
}
# ... and their (query, document) columns where they are not query/document(pos)
COLUMNS = {"reddit_title_body": ("title", "body"), "wikipedia": ("title", "text")}
# configs/data/finetune_multilingual_bge_triplets.yaml
MIRACL = ["ar", "bn", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te", "th", "zh"]


def _recipe(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXPERIMENTS / name).read_text(encoding="utf-8"))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# ----------------------------------------------------------------------------- optimiser / schedule
def test_pretraining_schedule_is_contrastors_inverse_sqrt() -> None:
    recipe = _recipe("nomic-v2-pretrain.yaml")
    optim = recipe["model"]["optim"]
    assert (optim["lr"], optim["weight_decay"], optim["warmup_steps"]) == (8e-5, 0.01, 1000)
    assert (optim["schedule"], tuple(optim["betas"]), optim["eps"]) == ("inverse_sqrt", (0.9, 0.999), 1e-8)
    assert recipe["trainer"]["max_epochs"] == 2 and recipe["trainer"]["max_steps"] == -1
    assert recipe["trainer"]["gradient_clip_val"] == 1.0
    assert (
        recipe["data"]["batch_size"] * recipe["trainer"]["strategy"]["init_args"]["data_parallel_size"]
        == 16384
    )
    cfg = OptimConfig(**{**optim, "betas": tuple(optim["betas"])})
    # by hand: warmup (step + 1) / 1000, then sqrt(1000 / step); no total length is involved
    expected = {0: 0.001, 499: 0.5, 999: 1.0, 1000: 1.0, 4000: 0.5, 16000: 0.25, 250000: math.sqrt(0.004)}
    for total in (1, 10**6):
        assert {s: lr_multiplier(s, cfg, total) for s in expected} == pytest.approx(expected, rel=1e-12)


def test_finetuning_schedule_is_contrastors_linear() -> None:
    recipe = _recipe("nomic-v2-finetune.yaml")
    optim = recipe["model"]["optim"]
    assert (optim["lr"], optim["weight_decay"], optim["warmup_steps"], optim["schedule"]) == (
        2e-5, 0.01, 400, "linear",
    )  # fmt: skip
    assert recipe["trainer"]["max_epochs"] == 1 and recipe["trainer"]["max_steps"] == -1
    assert (
        recipe["data"]["batch_size"] * recipe["trainer"]["strategy"]["init_args"]["data_parallel_size"] == 256
    )
    cfg = OptimConfig(**{**optim, "betas": tuple(optim["betas"])})
    # by hand, over an epoch of 2,400 steps: peak at 399 / 400, then (2400 - step) / 2000
    expected = {0: 1 / 400, 399: 1.0, 400: 1.0, 1400: 0.5, 2200: 0.1, 2400: 0.0}
    assert {s: lr_multiplier(s, cfg, 2400) for s in expected} == pytest.approx(expected, abs=1e-12)


def test_loss_and_router_settings() -> None:
    pre, fine = _recipe("nomic-v2-pretrain.yaml"), _recipe("nomic-v2-finetune.yaml")
    for recipe in (pre, fine):
        loss = recipe["model"]["loss"]
        assert loss["temperature"] == 0.02 and loss.get("symmetric", False) is False  # logit_scale 50, q->d
    pre_spec = ModelSpec(**pre["model"]["model"])
    fine_spec = ModelSpec(**{**fine["model"]["model"], "init_from": None})
    with torch.device("meta"):
        pre_config, fine_config = target_config(pre_spec, None), target_config(fine_spec, None)
    assert pre_config.aux_loss_coef == 1.0  # router_aux_loss_coef 1 in pretraining
    assert fine_config.aux_loss_coef == 0.0  # router_aux_loss_coef 0 in fine-tuning
    for config in (pre_config, fine_config):
        # megablocks' defaults in contrastors: no jitter, no renormalised top-k weights
        assert config.router_jitter == 0.0 and config.router_renormalize is False
        assert (config.num_experts, config.top_k, config.moe_every_n_layers) == (8, 2, 2)
    assert fine["model"]["loss"]["matryoshka_dims"] == [768, 256]


# ----------------------------------------------------------------------------- data mixtures
def test_pretraining_mixture_builds_in_the_real_layout(tmp_path: Path) -> None:
    sources = _recipe("nomic-v2-pretrain.yaml")["data"]["sources"]
    english = [s for s in sources if not s.get("per_language")]
    assert {s["name"] for s in english} == CLUSTERING | CLASSIFICATION | SEARCH
    for s in english:
        q, d = COLUMNS.get(s["name"], ("query", None))
        _write_jsonl(
            tmp_path / s["path"] / "shard-00000.jsonl", [{q: f"q {s['name']}", d or "document": "d"}]
        )
    for lang in ("de", "sw"):
        _write_jsonl(tmp_path / "nomic-pretrain/mc4" / f"{lang}.jsonl", [{"title": f"t {lang}", "text": "x"}])
    for lang in ("en", "zh"):
        _write_jsonl(
            tmp_path / "nomic-pretrain/cc_news" / lang / "shard-00000.jsonl",
            [{"title": f"n {lang}", "maintext": "y"}],
        )
    specs = load_mixture(sources, root=tmp_path)
    assert [s.name for s in specs[-4:]] == ["mc4/de", "mc4/sw", "cc_news/en", "cc_news/zh"]
    assert [s.language for s in specs[-4:]] == ["de", "sw", "en", "zh"]
    for spec in specs:
        assert (spec.max_query_length, spec.max_document_length, spec.num_negatives) == (32, 256, 0)
        task = spec.name.split("/")[0]
        if task in CLUSTERING:
            assert spec.query_prefix == spec.document_prefix == "clustering: "
        elif task in CLASSIFICATION:
            assert spec.query_prefix == spec.document_prefix == "classification: "
        else:
            assert (spec.query_prefix, spec.document_prefix) == ("search_query: ", "search_document: ")
        record = open_source(spec, root=tmp_path, cache_dir=str(tmp_path / "cache")).record(0)
        expected = (
            f"q {task}" if spec.language is None else f"{'t' if task == 'mc4' else 'n'} {spec.language}"
        )
        assert record.queries[0] == expected


def test_finetuning_mixture_builds_in_the_real_layout(tmp_path: Path) -> None:
    sources = _recipe("nomic-v2-finetune.yaml")["data"]["sources"]
    row = {"query": "q", "pos": "p", "neg": [f"n{i}" for i in range(12)]}
    for s in sources:
        if s.get("per_language"):
            for lang in MIRACL:
                _write_jsonl(tmp_path / s["path"] / lang / "shard-00000.jsonl", [row])
        else:
            _write_jsonl(tmp_path / s["path"] / "shard-00000.jsonl", [row])
    specs = load_mixture(sources, root=tmp_path)
    assert [s.name for s in specs] == [f"miracl/{lang}" for lang in MIRACL] + [
        "fever", "hotpotqa", "msmarco", "nq", "stackexchange_title_body", "squad",
    ]  # fmt: skip
    for spec in specs:
        assert (spec.query_prefix, spec.document_prefix) == ("search_query: ", "search_document: ")
        assert (spec.max_query_length, spec.max_document_length, spec.num_negatives) == (32, 256, 10)
        record = open_source(spec, root=tmp_path, cache_dir=str(tmp_path / "cache")).record(0)
        assert (record.queries, record.positives, len(record.negatives)) == (("q",), ("p",), 12)


# ----------------------------------------------------------------------------- contrastors-equivalent
def _adamw_run(loss_scale: float, aux_coef: float, clip: float, steps: int = 5) -> list[torch.Tensor]:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    x = torch.randn(16, 4, dtype=torch.float64)
    target = torch.randint(0, 6, (16,))
    opt = torch.optim.AdamW([w], lr=1e-2, weight_decay=0.01, eps=0.0)
    for _ in range(steps):
        logits = 50.0 * torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(w, dim=-1).T
        infonce = torch.nn.functional.cross_entropy(logits, target)
        aux = (w.pow(2).sum(dim=1) - 1.0).pow(2).mean()  # any second term with its own gradient
        opt.zero_grad()
        (loss_scale * infonce + aux_coef * aux).backward()
        norm = torch.nn.utils.clip_grad_norm_([w], clip)
        assert norm > clip  # the clip binds, so the equivalence is tested through it
        opt.step()
    return [copy.deepcopy(w.detach())]


@pytest.mark.parametrize("world", [8, 32])
def test_contrastors_world_size_scaling_equivalent(world: int) -> None:
    """contrastors: W * InfoNCE + alpha * aux, clip 1.0  ==  ours: InfoNCE + alpha/W * aux, clip 1.0/W."""
    theirs = _adamw_run(loss_scale=world, aux_coef=1.0, clip=1.0)
    ours = _adamw_run(loss_scale=1.0, aux_coef=1.0 / world, clip=1.0 / world)
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-10)  # float64 rounding only
    naive = _adamw_run(loss_scale=1.0, aux_coef=1.0, clip=1.0 / world)  # same clip, unscaled alpha
    assert not torch.allclose(naive[0], theirs[0], rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- epoch-bounded runs
class _Seen(L.Callback):
    def __init__(self) -> None:
        self.positions: list[tuple[int, int]] = []
        self.lrs: list[float] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        self.positions.append((int(batch["epoch"]), int(batch["step"])))
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_an_epoch_bounded_run_covers_each_epoch_once_and_decays_to_zero(tmp_path: Path) -> None:
    """max_epochs with max_steps -1, as the recipes: the linear decay spans exactly the epochs run."""
    common = load_train_common()
    pairs = common.write_toy_pairs(tmp_path / "pairs.jsonl", count=32)
    module = ContrastiveModule(
        model=common.tiny_moe_spec(),
        loss=LossConfig(temperature=0.05),
        optim=OptimConfig(lr=1e-3, warmup_steps=2, schedule="linear"),
    )
    seen = _Seen()
    trainer = L.Trainer(max_epochs=2, max_steps=-1, callbacks=[seen], **common.quiet_trainer_kwargs(tmp_path))
    trainer.fit(module, datamodule=common.make_datamodule(pairs, batch_size=8))
    assert seen.positions == [(e, s) for e in range(2) for s in range(4)]  # 32 pairs / 8 = 4 steps
    assert trainer.global_step == 8
    # by hand: warmup 1/2, 2/2, then (8 - step) / 6; the last update runs at 1/6, the schedule ends at 0
    assert seen.lrs == pytest.approx([1e-3 * m for m in (0.5, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6)])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)
