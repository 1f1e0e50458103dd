"""lit-nomic export on a run folder: its model/ is exported, config.yaml and eval/ fill the model card;
a format the model cannot be written in is one line and writes nothing."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from lit_nomic.cli import main
from lit_nomic.config import preset
from lit_nomic.model.embedder import Embedder
from lit_nomic.model.encoder import Encoder
from lit_nomic.model.params import count_parameters

CONFIG_YAML = """\
seed_everything: 3
trainer:
  max_steps: 40
model:
  model:
    init_from: all-minilm-l6-v2
    name: tiny-run
    overrides: {num_experts: 4, top_k: 2}
  loss: {temperature: 0.05}
  optim: {lr: 3.0e-05}
data:
  batch_size: 32
  weighting: uniform
  sources:
    - {name: scifact, path: beir/scifact, format: beir, split: train}
    - {name: medquad, path: medquad, format: jsonl}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    tokenizer = Embedder.from_pretrained(minilm_dir).tokenizer
    run = tmp_path_factory.mktemp("runs") / "sweeps" / "moe_vs_dense" / "moe_s0_abc123"
    model = Embedder(Encoder(preset("tiny-moe", vocab_size=tokenizer.vocab_size)), tokenizer, "tiny-run", 64)
    model.save_pretrained(run / "model")
    (run / "config.yaml").write_text(CONFIG_YAML)
    (run / "eval" / "scifact").mkdir(parents=True)
    result = {
        "schema_version": 1,
        "dataset": "scifact",
        "split": "test",
        "language": None,
        "task_type": "retrieval",
        "main_metric": "ndcg@10",
        "main_score": 0.61234,
        "counts": {"num_queries": 300, "num_documents": 1000},
    }
    (run / "eval" / "scifact" / "test.json").write_text(json.dumps(result))
    return run


def test_export_run_folder_as_sentence_transformers_with_model_card(run_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "st"
    main(["export", "--model", str(run_dir), "--format", "sentence-transformers", "--output", str(out)])
    card = (out / "README.md").read_text()
    counts = count_parameters(preset("tiny-moe", vocab_size=30522))
    assert f"| total parameters | {counts['total']:,} |" in card
    assert f"| active parameters per token | {counts['active']:,} |" in card
    assert "training data: scifact (beir/scifact, train); medquad (medquad, train)" in card
    assert "| scifact | test |  | ndcg@10 | 0.6123 | 300 | 1000 |" in card
    assert "initialised from `all-minilm-l6-v2`" in card and "trust_remote_code=True" in card
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()} == {0o644}
    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    texts = ["routing tokens", "experts"]
    ours = Embedder.from_pretrained(run_dir / "model").encode(texts)
    assert np.abs(st.encode(texts) - ours).max() <= 1e-6


def test_export_refusals_are_one_line(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ec = tmp_path / "ec"
    model = Embedder.from_pretrained(run_dir / "model")
    Embedder(
        Encoder(preset("tiny-moe", vocab_size=30522, router="expert_choice")), model.tokenizer
    ).save_pretrained(ec)
    with pytest.raises(SystemExit) as info:
        main(["export", "--model", str(ec), "--format", "onnx", "--output", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lit-nomic export: error:") and "expert_choice" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    # an existing folder with other files is never replaced
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="refusing to replace"):
        main(["export", "--model", str(run_dir), "--format", "nomic", "--output", str(keep)])
    assert (keep / "notes.txt").read_text() == "mine"


def test_export_a_checkpoint_of_a_run(run_dir: Path, minilm_dir: Path, tmp_path: Path) -> None:
    """A .ckpt under <run>/checkpoints/ is read as data; the run's config.yaml still feeds the card."""
    import torch

    from lit_nomic.training.export import ENCODER_PREFIX
    from lit_nomic.training.module import CHECKPOINT_KEY

    model = Embedder.from_pretrained(run_dir / "model")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(exist_ok=True)
    checkpoint = {
        "state_dict": {ENCODER_PREFIX + k: v for k, v in model.encoder.state_dict().items()},
        CHECKPOINT_KEY: {
            "encoder_config": model.config.to_dict(),
            "max_seq_length": 64,
            "tokenizer": str(minilm_dir),
            "name": "tiny-run",
        },
    }
    torch.save(checkpoint, ckpt)
    out = tmp_path / "nomic"
    main(["export", "--model", str(ckpt), "--format", "nomic", "--output", str(out)])
    assert "training data: scifact" in (out / "README.md").read_text()
    texts = ["routing tokens", "experts"]
    np.testing.assert_array_equal(Embedder.from_pretrained(out).encode(texts), model.encode(texts))
