"""RetrievalEval (probe subsets, logged metrics, result files), ExportModel and export_checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from train_common_loader import load_train_common

from lit_nomic.evaluation.beir import load_beir
from lit_nomic.evaluation.results import load_results
from lit_nomic.evaluation.retrieval import evaluate_retrieval
from lit_nomic.evaluation.retrieval_data import Document, RetrievalDataset
from lit_nomic.model.embedder import Embedder
from lit_nomic.training.callbacks import ExportModel, RetrievalEval, probe_subset
from lit_nomic.training.export import export_checkpoint, load_checkpoint_embedder

TEXTS = ["what about protein and enzyme", "a study of ocean reef fish", "volcano lava", "piano"]


common = load_train_common()


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))

    def values(self, key: str) -> list[tuple[int | None, float]]:
        return [(step, m[key]) for step, m in self.records if key in m]


# ----------------------------------------------------------------------------- probe subsets
def _dataset() -> RetrievalDataset:
    corpus = {f"d{i}": Document(f"d{i}", "", f"text {i}") for i in range(10)}
    queries = {f"q{i}": f"query {i}" for i in range(4)}
    qrels = {"q0": {"d7": 1, "d2": 0}, "q1": {"d5": 2, "d7": 1}, "q2": {"d9": 1}, "q3": {"d0": 1}}
    return RetrievalDataset("toy", "test", corpus, queries, qrels)


def test_probe_keeps_relevant_documents_then_first_distractors() -> None:
    probe = probe_subset(_dataset(), max_queries=2, max_corpus=5)
    assert probe.name == "toy-probe"
    assert list(probe.queries) == ["q0", "q1"]
    assert list(probe.corpus) == ["d7", "d5", "d0", "d1", "d2"]  # relevant first, then file order
    assert probe.qrels == {"q0": {"d7": 1, "d2": 0}, "q1": {"d5": 2, "d7": 1}}
    assert probe_subset(_dataset(), max_queries=1).corpus.keys() == _dataset().corpus.keys()
    assert probe_subset(_dataset()) is not None and probe_subset(_dataset()).name == "toy"


def test_probe_rejects_a_corpus_smaller_than_the_relevant_set() -> None:
    with pytest.raises(
        ValueError, match="toy/test: the first 3 queries have 3 relevant documents, more than max_corpus=2"
    ):
        probe_subset(_dataset(), max_queries=3, max_corpus=2)
    with pytest.raises(ValueError, match="max_queries must be >= 1"):
        probe_subset(_dataset(), max_queries=0)


# ----------------------------------------------------------------------------- a trained run
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("callbacks")
    pairs = common.write_toy_pairs(root / "pairs.jsonl")
    probe_data = common.write_toy_beir(root / "toybeir", pairs)
    full_data = common.write_toy_beir(root / "toybeir_full", pairs)
    L.seed_everything(0, verbose=False)
    module = common.make_module(common.tiny_moe_spec())
    probe = RetrievalEval(
        data=str(probe_data), every_n_steps=2, max_queries=8, max_corpus=20, batch_size=16,
        output_dir=str(root / "eval_probe"), data_root=str(root),
    )  # fmt: skip
    final = RetrievalEval(data=str(full_data), output_dir=str(root / "eval_full"))
    logger = RecordingLogger()
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=4, save_top_k=-1)
    trainer = L.Trainer(
        max_steps=4,
        callbacks=[probe, final, checkpoint, ExportModel(str(root / "export"))],
        **{**common.quiet_trainer_kwargs(root), "logger": logger, "log_every_n_steps": 1},
    )
    trainer.fit(module, datamodule=common.make_datamodule(pairs, batch_size=8))
    return {"root": root, "module": module, "probe": probe, "final": final, "logger": logger}


def test_probe_metrics_are_logged_during_and_after_training(trained: dict[str, Any]) -> None:
    logger: RecordingLogger = trained["logger"]
    probe_ndcg = logger.values("eval/toybeir/ndcg@10")
    assert [step for step, _ in probe_ndcg] == [2, 4, 4]  # every 2 steps, then at fit end
    assert all(0.0 <= value <= 1.0 for _, value in probe_ndcg)
    assert probe_ndcg[-1][1] == pytest.approx(probe_ndcg[-2][1])  # same weights, same subset
    assert [step for step, _ in logger.values("eval/toybeir_full/ndcg@10")] == [4]
    assert logger.values("eval/toybeir/recall@100")


def test_probe_result_equals_a_direct_evaluation(trained: dict[str, Any]) -> None:
    root, module, probe = trained["root"], trained["module"], trained["probe"]
    (result,) = load_results(root / "eval_probe")
    assert result["dataset"] == "toybeir-probe" and result["split"] == "test"
    assert result["counts"]["num_queries"] == 8 and result["counts"]["num_documents"] == 20
    assert result["extra"]["source"] == "<data_root>/toybeir"  # no machine path in a shared result file
    subset = probe_subset(load_beir(root / "toybeir", "test"), 8, 20)
    direct = evaluate_retrieval(module.embedder, subset, batch_size=16).metrics
    assert result["metrics"]["ndcg@10"] == pytest.approx(direct["ndcg@10"], abs=1e-9)
    assert probe.last_metrics["eval/toybeir/ndcg@10"] == pytest.approx(direct["ndcg@10"], abs=1e-9)
    table = (root / "eval_probe" / "toybeir-test.md").read_text()
    assert "after 4 training steps" in table and "| toybeir-probe |" in table
    assert f"{100 * direct['ndcg@10']:.2f}" in table


def test_fit_end_evaluation_of_the_full_set(trained: dict[str, Any]) -> None:
    root, module = trained["root"], trained["module"]
    (result,) = load_results(root / "eval_full")
    assert result["dataset"] == "toybeir_full" and result["counts"]["num_documents"] == 40
    direct = evaluate_retrieval(module.embedder, load_beir(root / "toybeir_full", "test")).metrics
    assert result["metrics"]["ndcg@10"] == pytest.approx(direct["ndcg@10"], abs=1e-9)
    assert (root / "eval_full" / "toybeir_full-test.md").is_file()


def test_export_callback_and_checkpoint_export_reproduce_the_model(trained: dict[str, Any]) -> None:
    root, module = trained["root"], trained["module"]
    live = module.embedder.encode(TEXTS)
    exported = Embedder.from_pretrained(root / "export")
    torch.testing.assert_close(exported.encode(TEXTS), live, atol=0, rtol=0)
    (ckpt,) = sorted((root / "ckpt").glob("*.ckpt"))
    in_memory = load_checkpoint_embedder(str(ckpt))  # what `lit-nomic eval X.ckpt` uses
    assert not in_memory.training
    torch.testing.assert_close(in_memory.encode(TEXTS), live, atol=0, rtol=0)
    folder = export_checkpoint(str(ckpt), str(root / "from_ckpt"))
    from_ckpt = Embedder.from_pretrained(folder)
    torch.testing.assert_close(from_ckpt.encode(TEXTS), live, atol=0, rtol=0)
    assert from_ckpt.config == module.encoder.config
    assert from_ckpt.tokenizer(TEXTS)["input_ids"] == module.embedder.tokenizer(TEXTS)["input_ids"]
    # The router biases are part of the exported model.
    for name, buf in module.encoder.named_buffers():
        if name.endswith("selection_bias"):
            assert torch.equal(from_ckpt.encoder.get_buffer(name), buf)


def test_export_falls_back_to_a_training_config(trained: dict[str, Any], tmp_path: Path) -> None:
    root, module = trained["root"], trained["module"]
    (ckpt,) = sorted((root / "ckpt").glob("*.ckpt"))
    bare = torch.load(ckpt, map_location="cpu", weights_only=False)
    del bare["lit_nomic"], bare["hyper_parameters"]
    stripped = tmp_path / "bare.ckpt"
    torch.save(bare, stripped)
    with pytest.raises(ValueError, match="pass config=<the training YAML>"):
        export_checkpoint(str(stripped), str(tmp_path / "out"))
    spec = module.model_spec
    config = tmp_path / "train.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {
                    "model": {"preset": spec.preset, "tokenizer": spec.tokenizer, "overrides": spec.overrides}
                }
            }
        )
    )
    folder = export_checkpoint(str(stripped), str(tmp_path / "out"), config=str(config))
    torch.testing.assert_close(Embedder.from_pretrained(folder).encode(TEXTS), module.embedder.encode(TEXTS))


def test_export_errors_name_the_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_checkpoint(str(tmp_path / "missing.ckpt"), str(tmp_path / "out"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="not a sharded Lightning checkpoint"):
        export_checkpoint(str(tmp_path / "folder"), str(tmp_path / "out"))
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match="expected a Lightning checkpoint"):
        export_checkpoint(str(tmp_path / "list.ckpt"), str(tmp_path / "out"))


def test_retrieval_eval_fails_fast_on_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every_n_steps must be >= 0"):
        RetrievalEval(every_n_steps=-1)
    callback = RetrievalEval(data=str(tmp_path / "nope"), max_queries=5)
    with pytest.raises(FileNotFoundError, match="nope"):
        callback.dataset()


# ----------------------------------------------------------------------------- real data
@pytest.mark.data
def test_probe_of_scifact_with_minilm(shared_data: Path, scifact_dir: Path, minilm_dir: Path) -> None:
    """all-MiniLM-L6-v2 scores nDCG@10 0.645 on full SciFact; a 40-document probe is far easier."""
    embedder = Embedder.from_pretrained(minilm_dir)
    callback = RetrievalEval(data="beir/scifact", max_queries=8, max_corpus=40, data_root=str(shared_data))
    probe = callback.dataset()
    assert callback.name == "scifact" and probe.name == "scifact-probe"
    assert len(probe.queries) == 8 and len(probe.corpus) == 40
    full = load_beir(scifact_dir, "test")
    assert list(probe.queries) == list(full.queries)[:8]
    relevant = {d for q in probe.queries for d, r in full.qrels[q].items() if r > 0}
    assert relevant <= set(probe.corpus)
    ndcg = evaluate_retrieval(embedder, probe, batch_size=32).metrics["ndcg@10"]
    assert 0.8 < ndcg <= 1.0  # 0.95 observed (8 queries, 40 documents)


# ----------------------------------------------------------------------------- unset paths: the run folder
def test_unset_output_folders_land_under_the_trainer_root(tmp_path: Path) -> None:
    pairs = common.write_toy_pairs(tmp_path / "pairs.jsonl", count=32)
    beir = common.write_toy_beir(tmp_path / "toybeir", pairs, docs=20, queries=8)
    quiet = RetrievalEval(data=str(beir), max_corpus=20, save_results=False)
    run = tmp_path / "run"
    trainer = L.Trainer(
        max_steps=1,
        callbacks=[ExportModel(), RetrievalEval(data=str(beir), max_corpus=20), quiet],
        **common.quiet_trainer_kwargs(run),
    )
    trainer.fit(
        common.make_module(common.tiny_moe_spec()), datamodule=common.make_datamodule(pairs, batch_size=8)
    )
    assert (run / "model" / "config.json").is_file()
    assert len(load_results(run / "eval")) == 1  # the quiet one logged its metrics but wrote nothing
    assert quiet.last_metrics and sorted(p.name for p in run.iterdir()) == ["checkpoints", "eval", "model"]


def test_progress_bar_description_has_no_negative_epoch_count() -> None:
    from types import SimpleNamespace

    from lit_nomic.training.callbacks import StepRichProgressBar, _train_description, step_progress_bar

    assert _train_description(SimpleNamespace(max_epochs=-1), 0) == "Epoch 0"  # type: ignore[arg-type]
    assert _train_description(SimpleNamespace(max_epochs=3), 1) == "Epoch 1/2"  # type: ignore[arg-type]
    assert isinstance(step_progress_bar(), StepRichProgressBar)
