"""MoE → dense distillation (issue 15): the loss terms by hand, the frozen teacher, DDP, FSDP2, and a CPU fit.

Tiny seeded encoders on the packaged MiniLM tokenizer keep everything here to seconds, except the
end-to-end ``lit-nomic fit -c experiments/distill-minilm.yaml`` (real MiniLM student, an upcycled
MiniLM MoE teacher, 2 steps at batch 4).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from train_common_loader import load_train_common

from lit_nomic.data.collate import PairCollator
from lit_nomic.data.mixture import SourceSpec
from lit_nomic.data.records import TrainingPair
from lit_nomic.model.build import ModelSpec, build_embedder
from lit_nomic.objectives import EmbeddingMatchLoss, ScoreDistillationLoss, kl_rows
from lit_nomic.training.distill import DistillConfig
from lit_nomic.training.module import ContrastiveModule, LossConfig
from lit_nomic.training.optim import OptimConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = "all-minilm-l6-v2"
DIST_SCRIPTS = Path(__file__).parent / "dist_scripts"


# ---------------------------------------------------------------------------- the losses by hand
def test_cosine_embedding_loss_by_hand() -> None:
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    # row 0: cos 45° = 1/sqrt(2); row 1: same direction -> 0
    expected = ((1 - 1 / math.sqrt(2)) + 0.0) / 2
    loss = EmbeddingMatchLoss(2, 2, "cosine")(student, teacher)
    assert loss.item() == pytest.approx(expected, abs=1e-7)


def test_mse_embedding_loss_by_hand_and_projection() -> None:
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    # mean over elements: row 0 (1 + 0) / 2, row 1 (0 + 1) / 2
    assert EmbeddingMatchLoss(2, 2, "mse")(student, teacher).item() == pytest.approx(0.5)
    loss = EmbeddingMatchLoss(2, 3, "mse")
    assert loss.projection is not None and loss.projection.weight.shape == (3, 2)
    with torch.no_grad():
        loss.projection.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    # P s: [1, 0, 1] and [0, 2, 2]; against [0, 0, 0] and [0, 1, 0]: (1 + 0 + 1) / 3 and (0 + 1 + 4) / 3
    value = loss(student, torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert value.item() == pytest.approx((2 / 3 + 5 / 3) / 2)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q, strict=True) if a > 0)


def _softmax(x: list[float]) -> list[float]:
    z = [math.exp(v) for v in x]
    return [v / sum(z) for v in z]


def test_in_batch_score_kl_by_hand() -> None:
    s_q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s_d = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t_q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t_d = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    tau = 0.5
    # student cosines [[1, 0], [0, 1]], teacher cosines [[1, 1], [0, 0]], both divided by tau
    expected = (
        _kl(_softmax([1 / tau, 1 / tau]), _softmax([1 / tau, 0]))
        + _kl(_softmax([0, 0]), _softmax([0, 1 / tau]))
    ) / 2
    loss = ScoreDistillationLoss(temperature=tau)
    assert loss(s_q, s_d, t_q, t_d).item() == pytest.approx(expected, abs=1e-6)
    # with hard negatives: one per query, appended to the candidates of every query
    s_n = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    t_n = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    c = 1 / math.sqrt(2)
    s_rows = [[1, 0, c, -1], [0, 1, c, 0]]
    t_rows = [[1, 1, 0, -1], [0, 0, 1, 0]]
    expected = (
        sum(
            _kl(_softmax([v / tau for v in t]), _softmax([v / tau for v in s]))
            for s, t in zip(s_rows, t_rows, strict=True)
        )
        / 2
    )
    assert loss(s_q, s_d, t_q, t_d, s_n, t_n).item() == pytest.approx(expected, abs=1e-6)


def test_score_kl_masks_duplicate_positives_without_nan() -> None:
    s_q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    docs = torch.tensor([[1.0, 0.0], [0.3, 1.0]])
    teacher_docs = torch.tensor([[0.2, 1.0], [1.0, 0.0]])
    ids = torch.tensor([7, 7])  # the same document twice: each row keeps only its own column
    value = ScoreDistillationLoss(0.05)(s_q, docs, s_q, teacher_docs, doc_ids=ids)
    assert value.item() == 0.0
    rows = kl_rows(torch.tensor([[0.0, float("-inf")]]), torch.tensor([[1.0, float("-inf")]]))
    assert torch.equal(rows, torch.zeros(1))


def test_score_kl_from_mined_scores_by_hand() -> None:
    query = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # positive, then one hard negative
    teacher = torch.tensor([[0.8, 0.4]])  # the miner's pos_score, neg_scores
    tau = 0.1
    expected = _kl(_softmax([8.0, 4.0]), _softmax([10.0, 0.0]))
    value = ScoreDistillationLoss(tau).from_scores(query, candidates, teacher)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # a missing candidate (NaN) drops out of both distributions
    padded = ScoreDistillationLoss(tau).from_scores(
        query, torch.cat([candidates, candidates[:, :1]], 1), torch.tensor([[0.8, 0.4, float("nan")]])
    )
    assert padded.item() == pytest.approx(expected, rel=1e-6)


def test_distill_config_rejects_bad_weights() -> None:
    teacher = ModelSpec(preset="tiny-dense")
    with pytest.raises(ValueError, match="at least one"):
        DistillConfig(teacher=teacher, infonce_weight=0, embedding_weight=0, score_weight=0)
    with pytest.raises(ValueError, match=">= 0"):
        DistillConfig(teacher=teacher, score_weight=-1)


# ---------------------------------------------------------------------------- the module
def tiny_spec(preset: str = "tiny-dense", **overrides: Any) -> ModelSpec:
    return ModelSpec(preset=preset, tokenizer=TOKENIZER, overrides={"vocab_size": 30522, **overrides})


def toy_batch(negatives: int = 0) -> dict[str, Any]:
    topics = ["protein folding enzyme", "ocean reef fish", "volcano lava ash", "piano rhythm song"]
    pairs = [
        TrainingPair(
            f"what about {t.split()[0]}", f"a study of {t}", tuple(f"{t} noise {j}" for j in range(negatives))
        )
        for t in topics
    ]
    spec = SourceSpec(name="toy", path="-", query_prefix="", document_prefix="", num_negatives=negatives)
    return PairCollator(TOKENIZER)(pairs, spec, 0)


def make_module(teacher: ModelSpec, student: ModelSpec | None = None, **distill: Any) -> ContrastiveModule:
    return ContrastiveModule(
        model=student or tiny_spec(),
        loss=LossConfig(temperature=0.05),
        optim=OptimConfig(lr=1e-2, total_steps=10),
        distill=DistillConfig(teacher=teacher, **distill),
    )


def test_student_identical_to_teacher_has_zero_distillation_terms(tmp_path: Path) -> None:
    folder = build_embedder(tiny_spec()).save_pretrained(tmp_path / "same")
    spec = ModelSpec(init_from=str(folder))
    module = make_module(spec, student=spec)
    step = module.compute_losses(toy_batch(negatives=1))
    assert step.distill["embedding"].item() == pytest.approx(0.0, abs=1e-6)
    assert step.distill["score"].item() == pytest.approx(0.0, abs=1e-6)
    assert step.loss.item() == pytest.approx(step.infonce.item(), abs=1e-5)


def test_gradients_reach_only_the_student() -> None:
    teacher_spec = tiny_spec("tiny-moe", hidden_size=96)  # a wider teacher: a learned projection too
    module = make_module(teacher_spec, score_weight=0.5)
    teacher = module.distiller.teacher
    assert not any(name.startswith("distiller.teacher") or "_teacher" in name for name in module.state_dict())
    assert all(p is not q for p in module.parameters() for q in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = module.configure_optimizers()["optimizer"]
    opt_params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not opt_params & {id(p) for p in teacher.parameters()}
    assert id(module.distiller.embedding_loss.projection.weight) in opt_params
    student_before = module.embedder.encoder.blocks[0].ffn.fc1.weight.detach().clone()

    module.train()
    step = module.compute_losses(toy_batch(negatives=1))
    step.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training  # module.train() leaves the teacher in eval mode
    assert module.distiller.embedding_loss.projection.weight.grad is not None
    assert module.embedder.encoder.blocks[0].ffn.fc1.weight.grad is not None
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(student_before, module.embedder.encoder.blocks[0].ffn.fc1.weight)


def test_mined_scores_replace_the_teacher_for_the_kl_term() -> None:
    module = make_module(tiny_spec("tiny-moe"), embedding_weight=0.0, score_weight=1.0)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the teacher must not run when the batch carries its scores")

    module.distiller.teacher.forward = refuse  # type: ignore[method-assign]
    batch = toy_batch(negatives=1)
    batch["teacher_scores"] = torch.tensor([[0.9, 0.2], [0.8, 0.5], [0.7, 0.1], [0.6, 0.6]])
    module.eval()
    step = module.compute_losses(batch)
    q, d, n = step.passes[0].embeddings, step.passes[1].embeddings, step.passes[2].embeddings
    expected = ScoreDistillationLoss(0.05).from_scores(q, torch.stack([d, n], 1), batch["teacher_scores"])
    assert step.distill["score"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert step.loss.item() == pytest.approx(step.infonce.item() + expected.item(), rel=1e-5)


@pytest.mark.parametrize("selection", ["first", "random"])
def test_mined_triplets_reach_the_score_term_through_the_data_module(tmp_path: Path, selection: str) -> None:
    """``lit-nomic mine`` output -> ContrastiveDataModule -> ``teacher_scores`` -> the KL term, one step."""
    import json

    from lit_nomic.data.datamodule import ContrastiveDataModule

    topics = ["protein enzyme", "ocean reef", "volcano ash", "piano song"]
    lines = [
        {
            "query": f"about {t}",
            "pos": [f"a study of {t}"],
            "neg": [f"{t} note {j}" for j in range(3)],
            "pos_score": 0.9 - i / 10,
            "neg_scores": [0.6 - i / 10, 0.5 - i / 10, 0.4 - i / 10],
        }
        for i, t in enumerate(topics)
    ]
    data = tmp_path / "triplets.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    source = SourceSpec(
        name="mined",
        path=str(data),
        query_prefix="",
        document_prefix="",
        num_negatives=2,
        negatives=selection,
    )
    dm = ContrastiveDataModule(sources=[source], tokenizer=TOKENIZER, batch_size=4, seed=1)
    dm.build()
    batch = dm.dataset.batch(0, 0)  # type: ignore[union-attr]
    tok = dm.dataset.collator.tokenizer  # type: ignore[union-attr]
    queries = [tok.decode(ids, skip_special_tokens=True) for ids in batch["query_input_ids"]]
    negatives = [tok.decode(ids, skip_special_tokens=True) for ids in batch["neg_input_ids"]]
    by_query = {line["query"]: line for line in lines}
    score_of = {n: s for line in lines for n, s in zip(line["neg"], line["neg_scores"], strict=True)}
    expected = torch.tensor(
        [
            [by_query[q]["pos_score"], *(score_of[n] for n in negatives[2 * i : 2 * i + 2])]
            for i, q in enumerate(queries)
        ]
    )
    if selection == "first":  # the hand-picked values: the first 2 of each list
        first = [[by_query[q]["pos_score"], *by_query[q]["neg_scores"][:2]] for q in queries]
        assert torch.equal(expected, torch.tensor(first))
    assert torch.equal(batch["teacher_scores"], expected)

    module = make_module(tiny_spec("tiny-moe"), embedding_weight=0.0, score_weight=1.0)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the teacher must not run when the batch carries its scores")

    module.distiller.teacher.forward = refuse  # type: ignore[method-assign]
    module.train()
    optimizer = module.configure_optimizers()["optimizer"]
    step = module.compute_losses(batch)
    q, d, n = (p.embeddings for p in step.passes[:3])
    want = ScoreDistillationLoss(0.05).from_scores(q, torch.cat([d[:, None], n.view(4, 2, -1)], 1), expected)
    assert step.distill["score"].item() == pytest.approx(want.item(), rel=1e-6)
    assert step.distill["score"].item() > 0
    step.loss.backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_checkpoints_hold_no_teacher_and_resume_and_export(tmp_path: Path) -> None:
    """A distillation checkpoint: student + projection only; it resumes, and exports the student."""
    import json

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_nomic.data.datamodule import ContrastiveDataModule
    from lit_nomic.model.embedder import Embedder
    from lit_nomic.training.export import export_checkpoint

    data = tmp_path / "pairs.jsonl"
    topics = ["protein enzyme", "ocean reef", "volcano ash", "piano song"]
    data.write_text(
        "".join(
            json.dumps({"query": f"about {t} {i}", "document": f"a study of {t} {i}"}) + "\n"
            for i in range(8)
            for t in topics
        )
    )
    source = SourceSpec(name="toy", path=str(data), query_prefix="", document_prefix="")

    def fit(steps: int, ckpt: str | None = None) -> ContrastiveModule:
        module = make_module(tiny_spec("tiny-moe", hidden_size=96))
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=steps,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(tmp_path),
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)],
        )
        datamodule = ContrastiveDataModule(sources=[source], tokenizer=TOKENIZER, batch_size=4)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
        return module

    first = fit(1)
    ckpt = tmp_path / "ckpt" / "epoch=0-step=1.ckpt"
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert "distiller.embedding_loss.projection.weight" in state
    assert all(k.startswith(("embedder.", "distiller.embedding_loss.")) for k in state), sorted(state)
    resumed = fit(2, str(ckpt))
    assert resumed.global_step == 2
    exported = Embedder.from_pretrained(export_checkpoint(str(ckpt), str(tmp_path / "export")))
    ids, mask = exported.collate(exported.tokenize(["a study of volcano ash"]))
    first.eval()
    with torch.no_grad():
        want = first.embedder(ids, mask).embeddings
        assert (exported(ids, mask).embeddings - want).abs().max().item() < 1e-6


# ---------------------------------------------------------------------------- 2 processes
needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)


def run_dist_script(name: str, *args: str, timeout: int) -> tuple[str, str]:
    """Run ``dist_scripts/<name>``, which launches its own 2 processes: its stdout and a failure report."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for var in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, str(DIST_SCRIPTS / name), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)
    report = f"exit code {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    assert proc.returncode == 0, report
    return proc.stdout, report


def assert_cases_ok(stdout: str, report: str, cases: int) -> None:
    """The ``OK`` line of an equivalence script: every case within 1e-5 of one process."""
    match = re.search(r"^OK cases=(\d+) max_loss_diff=(\S+) max_grad_diff=(\S+)$", stdout, re.MULTILINE)
    assert match, report
    assert int(match.group(1)) == cases
    assert float(match.group(2)) < 1e-5 and float(match.group(3)) < 1e-5, report


@needs_gloo
def test_two_process_distillation_matches_single_process() -> None:
    assert_cases_ok(*run_dist_script("distill_equivalence.py", timeout=300), cases=2)


@needs_gloo
def test_fsdp2_sharded_teacher_matches_single_process() -> None:
    """FSDP2 on 2 gloo processes: the teacher sharded like the student (each rank holds half of its
    weights), the global-batch loss and gradients of one process, and the cache decided across ranks."""
    stdout, report = run_dist_script("distill_fsdp2.py", timeout=600)
    assert_cases_ok(stdout, report, cases=3)
    shards = re.search(r"^SHARDS teacher_params=(\d+) local=(\d+) full=(\d+)$", stdout, re.MULTILINE)
    assert shards, report
    local, full = int(shards.group(2)), int(shards.group(3))
    assert 0 < local < full and abs(2 * local - full) < full // 100, report  # rank 0 holds about half
    assert re.search(r"^CACHE forwards=3,0,2$", stdout, re.MULTILINE), report


@needs_gloo
def test_lightning_ddp_distillation_matches_single_process(tmp_path: Path) -> None:
    """Lightning's own DDP strategy (2 gloo processes): the logged global-batch losses of 3 steps."""
    data = load_train_common().write_toy_pairs(tmp_path / "pairs.jsonl")
    stdout, report = run_dist_script(
        "distill_lightning_ddp.py", "--out", str(tmp_path), "--data", str(data), "--steps", "3", timeout=420
    )
    match = re.search(r"^OK steps=3 max_loss_diff=(\S+)$", stdout, re.MULTILINE)
    assert match and float(match.group(1)) < 1e-5, report


@needs_gloo
def test_lightning_fsdp2_sharded_teacher_and_cache_match_single_process(tmp_path: Path) -> None:
    """Lightning's ModelParallelStrategy (2 gloo processes): the teacher sharded, two epochs of 2 steps,
    the second served from the teacher cache; the logged losses are the uncached single-process ones."""
    data = load_train_common().write_toy_pairs(tmp_path / "pairs.jsonl", count=16)  # 2 global batches of 8
    args = ["--out", str(tmp_path), "--data", str(data), "--steps", "4", "--strategy", "fsdp2"]
    stdout, report = run_dist_script("distill_lightning_ddp.py", *args, timeout=600)
    match = re.search(r"^OK steps=4 max_loss_diff=(\S+)$", stdout, re.MULTILINE)
    assert match and float(match.group(1)) < 1e-5, report
    teachers = re.findall(r"^TEACHER rank=(\d) sharded=(\w+) forwards=(\d+) cached=(\d+)$", stdout, re.M)
    assert sorted(r for r, *_ in teachers) == ["0", "1"], report
    # Epoch 1: queries and documents of 2 steps; epoch 2: none (every text cached by one rank or the other).
    assert all(sharded == "True" and forwards == "4" for _, sharded, forwards, _ in teachers), report


# ---------------------------------------------------------------------------- lit-nomic fit
def test_fit_distill_minilm_end_to_end(tmp_path: Path, shared_data: Path, minilm_dir: Path) -> None:
    """The experiment YAML as shipped, with a small upcycled teacher folder and 2 steps at batch 4."""
    from lit_nomic.cli import main
    from lit_nomic.model.embedder import Embedder

    teacher_dir = tmp_path / "teacher"
    minilm = Embedder.from_pretrained("all-minilm-l6-v2")
    moe_config = type(minilm.config).from_dict(
        {
            **minilm.config.to_dict(),
            "moe_every_n_layers": 2,
            "num_experts": 4,
            "top_k": 2,
            "router_renormalize": True,
            "expert_bias": True,
            "moe_output_bias": False,
        }
    )
    minilm.upcycled(moe_config, name="teacher").save_pretrained(teacher_dir)
    run = tmp_path / "run"
    main(
        [
            "fit",
            "-c",
            str(REPO_ROOT / "experiments" / "distill-minilm.yaml"),
            "--trainer.max_steps",
            "2",
            "--data.batch_size",
            "4",
            "--model.distill.teacher.init_from",
            str(teacher_dir),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(run),
        ]
    )
    student = Embedder.from_pretrained(run / "model")
    assert not student.config.is_moe
    assert (run / "config.yaml").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb")).Reload()
    tags = events.Tags()["scalars"]
    assert {"train/distill/embedding", "train/distill/score", "train/infonce"} <= set(tags)
    assert all(math.isfinite(e.value) for e in events.Scalars("train/loss"))
