"""The on-disk teacher-embedding cache of distillation (issue 15): repeated epochs skip the teacher.

Tiny seeded encoders on the packaged MiniLM tokenizer, one process (the sharded-teacher case, where
the skip is decided across ranks, runs in ``tests/dist_scripts/distill_fsdp2.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lit_nomic.data.collate import PairCollator
from lit_nomic.data.mixture import SourceSpec
from lit_nomic.data.records import TrainingPair
from lit_nomic.model.build import ModelSpec
from lit_nomic.training.distill import DistillConfig
from lit_nomic.training.module import ContrastiveModule, LossConfig
from lit_nomic.training.optim import OptimConfig
from lit_nomic.training.teacher_cache import MANIFEST, TeacherCache, TeacherCacheError, text_keys

TOKENIZER = "all-minilm-l6-v2"
TOPICS = ["protein folding enzyme", "ocean reef fish", "volcano lava ash", "piano rhythm song", "river flood"]


def spec(preset: str, **overrides: Any) -> ModelSpec:
    return ModelSpec(preset=preset, tokenizer=TOKENIZER, overrides={"vocab_size": 30522, **overrides})


def batch(topics: list[str]) -> dict[str, Any]:
    pairs = [TrainingPair(f"what about {t}", f"a study of {t}", (f"{t} noise",)) for t in topics]
    source = SourceSpec(name="toy", path="-", query_prefix="", document_prefix="", num_negatives=1)
    return PairCollator(TOKENIZER)(pairs, source, 0)


BATCHES = [TOPICS[:3], TOPICS[2:]]  # "volcano lava ash" is in both


def module(cache: Path | None, seed: int = 0, **teacher: Any) -> ContrastiveModule:
    """The same student and (MoE, wider: a learned projection) teacher for the same seed."""
    torch.manual_seed(seed)
    return ContrastiveModule(
        model=spec("tiny-dense"),
        loss=LossConfig(temperature=0.05),
        optim=OptimConfig(total_steps=1),
        distill=DistillConfig(
            teacher=spec("tiny-moe", hidden_size=96, **teacher),
            score_weight=0.5,
            teacher_cache=str(cache) if cache is not None else None,
        ),
    )


def count_forwards(m: ContrastiveModule) -> list[int]:
    calls = [0]
    m.distiller.teacher.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))  # type: ignore[union-attr]
    return calls


def one_pass(
    m: ContrastiveModule, batches: list[list[str]]
) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Loss and gradients of every batch (no optimiser step: every pass sees the same student)."""
    out = []
    for topics in batches:
        m.zero_grad(set_to_none=True)
        loss = m.compute_losses(batch(topics)).loss
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}
        out.append((loss.detach(), grads))
    return out


def assert_identical(a: list[tuple[torch.Tensor, dict]], b: list[tuple[torch.Tensor, dict]]) -> None:
    assert len(a) == len(b)
    for (loss_a, grads_a), (loss_b, grads_b) in zip(a, b, strict=True):
        assert torch.equal(loss_a, loss_b), (loss_a.item(), loss_b.item())
        assert grads_a.keys() == grads_b.keys()
        assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)


def test_second_pass_runs_no_teacher_and_is_bit_identical(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    uncached = one_pass(module(None), BATCHES)

    m = module(folder)
    calls = count_forwards(m)
    first = one_pass(m, BATCHES)
    assert calls[0] == 6  # queries, documents, negatives of each batch
    assert_identical(first, uncached)  # a cache never changes the epoch that fills it
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["teacher"] == m.distiller.cache.fingerprint and manifest["dtype"] == "float32"  # type: ignore[union-attr]
    files = sorted(folder.glob("emb-r0000-*.safetensors"))
    assert len(files) == 2  # one file per step that computed something
    assert len(m.distiller.cache) == 15  # type: ignore[arg-type]  # 5 topics x (query, document, negative)

    second = one_pass(m, BATCHES)  # the same process: the entries in memory
    assert calls[0] == 6
    assert_identical(second, first)

    fresh = module(folder)  # another run: the entries from disk
    fresh_calls = count_forwards(fresh)
    assert_identical(one_pass(fresh, list(reversed(BATCHES))), list(reversed(first)))
    assert fresh_calls[0] == 0
    assert sorted(folder.glob("emb-*.safetensors")) == files  # nothing new to write


def test_a_group_with_any_new_text_runs_the_teacher_on_the_whole_group(tmp_path: Path) -> None:
    m = module(tmp_path / "cache")
    calls = count_forwards(m)
    one_pass(m, [TOPICS[:2]])
    mixed = batch(TOPICS[:3])  # two cached rows, one new in every group
    m.compute_losses(mixed)
    assert calls[0] == 6
    keys = text_keys(mixed["doc_input_ids"], mixed["doc_attention_mask"])
    assert m.distiller.cache.lookup(keys) is not None  # type: ignore[union-attr]


def test_a_cache_of_another_teacher_is_refused_naming_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    one_pass(module(folder), BATCHES[:1])
    with pytest.raises(ValueError, match=f"{folder}.*another teacher"):
        module(folder, seed=1)  # other weights
    with pytest.raises(TeacherCacheError, match=f"{folder}.*another teacher"):
        module(folder, num_experts=2)  # another architecture


def test_a_corrupt_or_foreign_file_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    one_pass(module(folder), BATCHES[:1])
    bad = folder / "emb-r0001-0123456789abcdef.safetensors"
    bad.write_bytes(b"not a safetensors file")
    m = module(folder)
    with pytest.raises(TeacherCacheError, match=f"{bad}.*unreadable"):
        m.compute_losses(batch(BATCHES[0]))
    bad.unlink()

    from safetensors.torch import save_file

    foreign = folder / "emb-r0001-fedcba9876543210.safetensors"
    save_file({"keys": torch.zeros(1, 32, dtype=torch.uint8), "embeddings": torch.zeros(1, 96)}, str(foreign),
              metadata={"teacher": "someone-else"})  # fmt: skip
    with pytest.raises(TeacherCacheError, match=f"{foreign}.*another teacher"):
        module(folder).compute_losses(batch(BATCHES[0]))
    foreign.unlink()

    wrong = folder / "emb-r0001-0000000000000000.safetensors"
    fingerprint = m.distiller.cache.fingerprint  # type: ignore[union-attr]
    save_file({"keys": torch.zeros(2, 32, dtype=torch.uint8), "embeddings": torch.zeros(2, 7)}, str(wrong),
              metadata={"teacher": fingerprint})  # fmt: skip
    with pytest.raises(TeacherCacheError, match=f"{wrong}.*expected"):
        module(folder).compute_losses(batch(BATCHES[0]))


def test_files_without_a_manifest_and_another_precision_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "emb-r0000-0123456789abcdef.safetensors").write_bytes(b"")
    with pytest.raises(TeacherCacheError, match=f"{folder}.*no {MANIFEST}"):
        TeacherCache(folder, "abc", 8)

    other = TeacherCache(tmp_path / "other", "abc", 8)
    other.add([bytes(32)], torch.zeros(1, 8))
    with pytest.raises(TeacherCacheError, match="another precision"):
        TeacherCache(tmp_path / "other", "abc", 8).add(
            [bytes(range(32))], torch.zeros(1, 8, dtype=torch.bfloat16)
        )


def test_keys_ignore_padding_and_tell_texts_apart() -> None:
    ids = torch.tensor([[101, 7, 8, 102, 0, 0], [101, 7, 8, 102, 0, 0], [101, 7, 9, 102, 0, 0]])
    mask = (ids != 0).long()
    wider = torch.cat([ids, torch.zeros(3, 4, dtype=torch.long)], 1)
    keys = text_keys(ids, mask)
    assert keys[0] == keys[1] != keys[2]
    assert text_keys(wider, (wider != 0).long()) == keys  # another batch's padding: the same key
    assert all(len(k) == 32 for k in keys)


def test_teacher_sharding_is_validated() -> None:
    with pytest.raises(ValueError, match="teacher_sharding"):
        DistillConfig(teacher=spec("tiny-dense"), teacher_sharding="shard")  # type: ignore[arg-type]
