"""A diverged run stops (or skips the step) instead of training on NaN, and nothing non-finite is
exported or encoded (issue 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from train_common_loader import load_train_common

from lit_nomic.cli import main
from lit_nomic.config import preset
from lit_nomic.model.embedder import Embedder
from lit_nomic.model.encoder import Encoder
from lit_nomic.training.callbacks import ExportModel
from lit_nomic.training.export import export_checkpoint
from lit_nomic.training.module import ContrastiveModule, NonFiniteError

common = load_train_common()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return common.write_toy_pairs(tmp_path_factory.mktemp("nonfinite") / "pairs.jsonl", count=48)


def _fit(
    module: ContrastiveModule, pairs: Path, root: Path, steps: int, callbacks: list | None = None
) -> L.Trainer:
    trainer = L.Trainer(max_steps=steps, callbacks=callbacks or [], **common.quiet_trainer_kwargs(root))
    trainer.fit(module, datamodule=common.make_datamodule(pairs, batch_size=8))
    return trainer


def _nan_infonce_at(module: ContrastiveModule, step: int) -> None:
    """Make the InfoNCE term NaN at optimiser step ``step`` (still attached to the graph)."""
    compute = module.compute_losses

    def poisoned(batch: dict[str, Any]) -> Any:
        out = compute(batch)
        if module.global_step != step:
            return out
        nan = out.infonce * float("nan")
        return out._replace(infonce=nan, loss=out.loss + nan)

    module.compute_losses = poisoned  # type: ignore[method-assign]


def test_absurd_learning_rate_stops_the_run_and_exports_nothing(pairs: Path, tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    module = common.make_module(common.tiny_moe_spec(), lr=1e6)
    export = tmp_path / "export"
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite (InfoNCE|aux loss|z-loss|loss|gradient norm) \((nan|inf)\) at step 1\b",
    ) as exc:
        _fit(module, pairs, tmp_path, steps=6, callbacks=[ExportModel(str(export))])
    assert "\n" not in str(exc.value) and "nonfinite=skip" in str(exc.value)
    assert not export.exists()
    assert not list(tmp_path.glob(".export.*"))


def test_a_non_finite_loss_term_is_named_with_its_step(pairs: Path, tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    module = common.make_module(common.tiny_moe_spec())
    _nan_infonce_at(module, step=2)
    with pytest.raises(NonFiniteError, match=r"non-finite InfoNCE \(nan\) at step 2 \(epoch 0, batch 2\)"):
        _fit(module, pairs, tmp_path, steps=4)
    assert module.global_step == 2


def test_a_non_finite_gradient_is_caught_where_gradients_are_clipped(pairs: Path, tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    module = common.make_module(common.tiny_moe_spec())
    weight = module.encoder.embeddings.norm.weight
    weight.register_hook(lambda g: g * float("nan") if module.global_step == 2 else g)
    with pytest.raises(NonFiniteError, match=r"non-finite gradient norm \(nan\) at step 2:"):
        _fit(module, pairs, tmp_path, steps=4)


class Snapshots(L.Callback):
    """Parameters, AdamW moments and router biases before and after every training batch."""

    def __init__(self) -> None:
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _state(trainer: L.Trainer, module: ContrastiveModule) -> dict[str, torch.Tensor]:
        state = {f"param:{k}": v.detach().clone() for k, v in module.named_parameters()}
        state.update(
            {f"buffer:{k}": v.clone() for k, v in module.encoder.named_buffers() if "selection_bias" in k}
        )
        for i, s in enumerate(trainer.optimizers[0].state.values()):
            if "exp_avg" in s:
                state[f"exp_avg:{i}"] = s["exp_avg"].clone()
        return state

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        self.before[batch_idx] = self._state(trainer, module)

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.after[batch_idx] = self._state(trainer, module)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_skip_mode_drops_the_step_counts_it_and_goes_on(pairs: Path, tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    module = common.make_module(common.tiny_moe_spec(), nonfinite="skip")
    _nan_infonce_at(module, step=2)
    snapshots = Snapshots()
    trainer = _fit(module, pairs, tmp_path, steps=4, callbacks=[snapshots])
    assert trainer.global_step == 4 and module.skipped_steps == 1
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 1.0
    assert _same(snapshots.before[2], snapshots.after[2])  # params, moments, router biases untouched
    for step in (1, 3):
        assert not _same(snapshots.before[step], snapshots.after[step])
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())


def test_save_pretrained_refuses_non_finite_weights(minilm_dir: Path, tmp_path: Path) -> None:
    encoder = Encoder(preset("tiny-dense", vocab_size=30522))
    with torch.no_grad():
        encoder.blocks[1].attn.qkv.weight[0, 0] = float("nan")
    with pytest.raises(
        ValueError, match=r"refusing to export: non-finite weights .* blocks\.1\.attn\.qkv\.weight"
    ):
        Embedder(encoder).save_pretrained(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_export_checkpoint_refuses_non_finite_weights(tmp_path: Path) -> None:
    config = preset("tiny-dense", vocab_size=30522)
    state = {f"embedder.encoder.{k}": v for k, v in Encoder(config).state_dict().items()}
    state["embedder.encoder.embeddings.word_embeddings.weight"][3, 3] = float("inf")
    meta = {"encoder_config": config.to_dict(), "tokenizer": common.TOKENIZER, "name": "diverged"}
    torch.save({"state_dict": state, "lit_nomic": meta}, tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match="non-finite weights"):
        export_checkpoint(str(tmp_path / "last.ckpt"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_encode_refuses_nan_embeddings(minilm_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    tokenizer = Embedder.from_pretrained(minilm_dir).tokenizer
    Embedder(Encoder(preset("tiny-dense", vocab_size=30522)), tokenizer).save_pretrained(folder)
    tensors = load_file(str(folder / "model.safetensors"))  # a NaN model written by something else
    tensors["embeddings.norm.weight"] = torch.full_like(tensors["embeddings.norm.weight"], float("nan"))
    save_file(tensors, str(folder / "model.safetensors"))
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    out = tmp_path / "emb.npy"
    with pytest.raises(SystemExit) as exc:
        main(["encode", "--model", str(folder), "--input", str(tmp_path / "in.txt"), "--output", str(out)])
    assert "2 of 2 embeddings are NaN/inf (first: row 0)" in str(exc.value) and "\n" not in str(exc.value)
    assert not out.exists()
