"""The LightningModule: a bi-encoder trained with InfoNCE (+ Matryoshka) and MoE regularisation.

It owns the embedder and the loss, and knows nothing of how it is parallelised beyond one hook:
``configure_model`` hands the encoder's blocks to ``parallel.apply_fsdp2`` when Lightning's
``ModelParallelStrategy`` gives us a device mesh (FSDP2), and otherwise leaves the model alone
(single process or DDP). Every forward goes through ``self.embedder(...)`` (never ``encoder``
directly) because the FSDP2 root is the embedder and only its ``forward`` unshards the root parameters.

Loss of one step (every term is logged under ``train/``)::

    loss = infonce + aux_loss_coef * aux_loss + z_loss_coef * z_loss

``infonce`` is the (Matryoshka-weighted) contrastive loss over the global batch; ``aux_loss`` and
``z_loss`` are the unweighted router regularisers, summed over the query/document/negative passes and
averaged over MoE layers (:func:`lit_nomic.objectives.moe_regularisation`), computed per rank on local tokens.
With a ``distill`` block, ``infonce`` is weighted and a frozen teacher's terms are added
(:mod:`lit_nomic.training.distill`, logged under ``train/distill/``).

Exact resume: the data position and the loss-free router biases (a persistent buffer) travel in the
checkpoint; random draws inside a step are reseeded per micro-batch (:mod:`.seeding`), so a resumed
run repeats the uninterrupted run's dropout masks and router jitter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from torch import Tensor, nn

from lit_nomic.data.mixture import SourceSpec
from lit_nomic.model.build import ModelSpec, build_embedder
from lit_nomic.model.encoder import Encoder, EncoderOutput
from lit_nomic.objectives.infonce import InfoNCELoss
from lit_nomic.objectives.matryoshka import MatryoshkaLoss
from lit_nomic.objectives.moe_balance import moe_regularisation
from lit_nomic.training.distill import DistillConfig, Distiller
from lit_nomic.training.expert_stats import expert_load_metrics
from lit_nomic.training.optim import OptimConfig, build_optimizer
from lit_nomic.training.parallel import all_reduce_gradients, clip_grad_norm, clip_grads_with_norm, grad_norm
from lit_nomic.training.seeding import global_seed, seed_step
from lit_nomic.training.throughput import ThroughputClock, batch_token_count

log = logging.getLogger(__name__)

# Key of our own metadata in Lightning checkpoints (architecture, tokenizer, seed): enough to export
# a model without the weights or the Hub checkpoint the run started from.
CHECKPOINT_KEY = "lit_nomic"


@dataclass
class LossConfig:
    """Contrastive objective (the YAML ``model.loss`` block).

    ``temperature`` 0.02 (logit scale 50) is Nomic Embed v2's fixed value. ``matryoshka_dims`` empty
    means a single loss on the full embedding.

    ``nonfinite``: what a NaN/inf loss term (InfoNCE, aux loss, z-loss) or gradient norm does.
    ``raise`` stops the run at the first one with :class:`NonFiniteError` naming the step and the
    term (a diverged run would otherwise train on NaN, exit 0 and export NaN weights); ``skip``
    drops that optimiser step (no parameter, optimiser-state or router-bias update), counts it in
    ``train/skipped_steps`` and goes on.
    """

    temperature: float = 0.02
    learn_temperature: bool = False
    symmetric: bool = False
    gather_across_ranks: bool = True
    mask_false_negatives: bool = True
    matryoshka_dims: list[int] = field(default_factory=list)
    matryoshka_weights: list[float] | None = None
    nonfinite: Literal["raise", "skip"] = "raise"


class NonFiniteError(FloatingPointError):
    """A loss term or the gradient norm became NaN/inf: the run diverged (see ``LossConfig.nonfinite``)."""


@dataclass
class ParallelConfig:
    """How ``configure_model`` shards the model under ``ModelParallelStrategy`` (FSDP2)."""

    param_dtype: Literal["float32", "bfloat16"] = "float32"
    reduce_dtype: Literal["float32", "bfloat16"] = "float32"
    reshard_after_forward: bool = True


class StepOutput(NamedTuple):
    """Everything one contrastive step computes; ``loss`` is what is backpropagated."""

    loss: Tensor
    infonce: Tensor
    aux_loss: Tensor  # unweighted, detached
    z_loss: Tensor  # unweighted, detached
    accuracy: Tensor
    logit_scale: Tensor
    per_dim_loss: dict[int, Tensor]  # Matryoshka prefix -> unweighted loss (empty without Matryoshka)
    passes: list[EncoderOutput]
    distill: dict[str, Tensor] = {}  # unweighted, detached distillation terms (empty without a teacher)


# Checkpoints pickle these configs in ``hyper_parameters``; Lightning loads checkpoints with torch's
# ``weights_only=True`` unpickler, which refuses any class not allow-listed (resume would fail).
# ``lit-nomic export``/``eval``/``encode`` load checkpoints with the same unpickler and this same
# list (``torch.serialization.safe_globals``), so a checkpoint is data, never code.
CHECKPOINT_SAFE_GLOBALS: list[Any] = [
    ModelSpec,
    LossConfig,
    OptimConfig,
    ParallelConfig,
    SourceSpec,
    DistillConfig,
]
torch.serialization.add_safe_globals(CHECKPOINT_SAFE_GLOBALS)


class ContrastiveModule(L.LightningModule):
    """Bi-encoder contrastive training of a dense or MoE embedding model.

    Args:
        model: which architecture and which initial weights (preset, import, upcycling).
        loss: the InfoNCE / Matryoshka objective.
        optim: AdamW and the learning-rate schedule.
        activation_checkpointing: recompute each block in backward (memory for compute).
        parallel: FSDP2 settings, used only under ``ModelParallelStrategy``.
        distill: a frozen teacher and the distillation terms added to the loss
            (:mod:`lit_nomic.training.distill`); None trains without a teacher.
    """

    def __init__(
        self,
        model: ModelSpec | None = None,
        loss: LossConfig | None = None,
        optim: OptimConfig | None = None,
        activation_checkpointing: bool = False,
        parallel: ParallelConfig | None = None,
        distill: DistillConfig | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            raise ValueError("ContrastiveModule needs model=ModelSpec(preset=... and/or init_from=...)")
        self.model_spec = model
        self.loss_config = loss or LossConfig()
        self.optim_config = optim or OptimConfig()
        self.parallel_config = parallel or ParallelConfig()
        self.activation_checkpointing = activation_checkpointing
        self.save_hyperparameters()

        self.embedder = build_embedder(self.model_spec)
        self.encoder.gradient_checkpointing = activation_checkpointing
        cfg = self.loss_config
        infonce = InfoNCELoss(
            temperature=cfg.temperature,
            learn_temperature=cfg.learn_temperature,
            symmetric=cfg.symmetric,
            gather_across_ranks=cfg.gather_across_ranks,
        )
        self.loss_fn: nn.Module = (
            MatryoshkaLoss(infonce, cfg.matryoshka_dims, cfg.matryoshka_weights)
            if cfg.matryoshka_dims
            else infonce
        )
        self._infonce = infonce
        self.distiller = Distiller(distill, self.embedder) if distill is not None else None
        self.throughput_clock = ThroughputClock()
        self._seed: int | None = None
        self._replicated_params: list[nn.Parameter] = []  # unsharded params under FSDP2 (all-reduced by hand)
        self._fsdp_applied = False
        if self.loss_config.nonfinite not in ("raise", "skip"):
            raise ValueError(f"loss.nonfinite must be 'raise' or 'skip', got {self.loss_config.nonfinite!r}")
        self.skipped_steps = 0  # optimiser steps dropped for a non-finite value (nonfinite="skip")
        self._skip_reason: str | None = None  # why the optimiser step in progress is dropped

    @property
    def encoder(self) -> Encoder:
        # A property, not a second registration: the weights live once, under ``embedder.encoder``.
        return self.embedder.encoder

    # ------------------------------------------------------------------ parallelism
    def configure_model(self) -> None:
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or self._fsdp_applied:
            return
        from lit_nomic.training.parallel import apply_fsdp2

        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
            raise NotImplementedError(
                "tensor parallelism is not implemented for the encoder; use "
                "ModelParallelStrategy(data_parallel_size=<world size>, tensor_parallel_size=1)"
            )
        dp_mesh = mesh["data_parallel"] if "data_parallel" in names else mesh
        self._infonce.group = dp_mesh.get_group()
        if self.distiller is not None:
            self.distiller.group = self._infonce.group
        pc = self.parallel_config
        apply_fsdp2(
            self.embedder,
            self.encoder.blocks,
            dp_mesh,
            param_dtype=getattr(torch, pc.param_dtype),
            reduce_dtype=getattr(torch, pc.reduce_dtype),
            reshard_after_forward=pc.reshard_after_forward,
        )
        if self.distiller is not None:  # the frozen teacher on the same mesh (distill.teacher_sharding)
            self.distiller.shard_teacher(dp_mesh, param_dtype=getattr(torch, pc.param_dtype))
        # The learned temperature is a 0-d parameter, which FSDP2 cannot shard: keep it replicated.
        # So is the distillation projection, which lives outside the sharded embedder.
        extra = list(self.distiller.parameters()) if self.distiller is not None else []
        self._replicated_params = [p for p in [*self.loss_fn.parameters(), *extra] if p.requires_grad]
        self._fsdp_applied = True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._replicated_params:
            all_reduce_gradients(self._replicated_params, self._infonce.group)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Check the gradient norm, then clip; drop the whole step's gradients when it is skipped.

        Lightning calls this once per optimiser step, after backward (and the DDP/FSDP2 gradient
        reduction) and before ``optimizer.step``, whether or not clipping is configured: the one
        place where the global gradient norm is known identically on every rank. Skipping sets every
        gradient to None, so AdamW leaves parameters and moments alone for this step.
        """
        if self._fsdp_applied and gradient_clip_val and gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(
                f"gradient_clip_algorithm={gradient_clip_algorithm!r} is not supported under FSDP2; use 'norm'"
            )
        norm = None
        if self._skip_reason is None and self._checks_gradients():
            norm = self._gradient_norm()
            if not bool(torch.isfinite(norm)):  # the one host sync of the check, once per step
                self._nonfinite(f"non-finite gradient norm ({float(norm)}) at step {self.global_step}")
        if self._skip_reason is not None:
            optimizer.zero_grad(set_to_none=True)
            return
        # Under FSDP2 one global norm over sharded (DTensor) and replicated (temperature) gradients;
        # torch's clip_grad_norm_ cannot mix the two.
        if self._fsdp_applied and gradient_clip_val:
            if norm is None:
                clip_grad_norm(self.parameters(), gradient_clip_val)
            else:  # the norm just measured: no second all-reduce
                clip_grads_with_norm(self.parameters(), gradient_clip_val, norm)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _checks_gradients(self) -> bool:
        # fp16 AMP: inf gradients are routine; the GradScaler skips those steps and lowers its scale.
        if self._trainer is None:
            return True
        return getattr(self.trainer.precision_plugin, "scaler", None) is None

    def _gradient_norm(self) -> Tensor:
        """Global L2 norm of all gradients before clipping (over sharded and replicated ones under FSDP2)."""
        if self._fsdp_applied:
            return grad_norm(self.parameters())  # one all-reduce, on the device
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(())
        return torch.nn.utils.get_total_norm(grads)

    def _check_losses(self, step: StepOutput, batch_idx: int) -> None:
        """Stop (or mark the step skipped) at the first NaN/inf loss term, on every rank at once.

        One small all-reduce (max) of four flags keeps ranks in agreement, so no rank raises or
        skips while another goes on into a collective and hangs; one host sync per step, no extra
        backward (a skipped step's backward still runs, its gradients are then dropped).
        """
        terms = {"InfoNCE": step.infonce, "aux loss": step.aux_loss, "z-loss": step.z_loss, "loss": step.loss}
        values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
        flags = (~torch.isfinite(values)).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        bad = [name for name, flag in zip(terms, flags.tolist(), strict=True) if flag]
        if not bad:
            return
        value = values[list(terms).index(bad[0])].item()
        self._nonfinite(
            f"non-finite {bad[0]} ({value}) at step {self.global_step} "
            f"(epoch {self.current_epoch}, batch {batch_idx})"
        )

    def _nonfinite(self, what: str) -> None:
        if self.loss_config.nonfinite == "raise":
            raise NonFiniteError(
                f"{what}: the run diverged; lower optim.lr (or raise warmup), or set "
                "model.loss.nonfinite=skip to skip such steps"
            )
        if self._skip_reason is None:
            log.warning("%s: skipping this optimiser step (model.loss.nonfinite=skip)", what)
            self._skip_reason = what

    # ------------------------------------------------------------------ the step
    def compute_losses(self, batch: dict[str, Any]) -> StepOutput:
        """Encode queries, documents (and hard negatives), then the contrastive loss plus MoE regularisers."""
        q = self.embedder(batch["query_input_ids"], batch["query_attention_mask"])
        d = self.embedder(batch["doc_input_ids"], batch["doc_attention_mask"])
        passes = [q, d]
        negatives = None
        if "neg_input_ids" in batch:
            n = self.embedder(batch["neg_input_ids"], batch["neg_attention_mask"])
            passes.append(n)
            negatives = n.embeddings
        doc_ids = batch.get("doc_ids") if self.loss_config.mask_false_negatives else None
        out = self.loss_fn(q.embeddings, d.embeddings, negatives, doc_ids)
        config = self.encoder.config
        reg = moe_regularisation(
            [[p.aux_loss] for p in passes],
            [[p.z_loss] for p in passes],
            aux_coef=config.aux_loss_coef,
            z_coef=config.z_loss_coef,
        )
        per_dim = getattr(out, "per_dim_loss", None) or {}
        loss, distill = out.loss, {}
        if self.distiller is not None:
            extra = self.distiller(batch, q.embeddings, d.embeddings, negatives, doc_ids)
            loss, distill = self.distiller.config.infonce_weight * out.loss + extra.total, extra.terms
        return StepOutput(
            loss=loss + reg.total,
            infonce=out.loss,
            aux_loss=reg.aux,
            z_loss=reg.z,
            accuracy=out.accuracy,
            logit_scale=out.logit_scale,
            per_dim_loss=dict(per_dim),
            passes=passes,
            distill=distill,
        )

    def _log_step(self, step: StepOutput, batch: dict[str, Any], stage: str) -> None:
        bs = int(batch["query_input_ids"].shape[0])
        opts: dict[str, Any] = dict(batch_size=bs, sync_dist=stage != "train")
        source = str(batch.get("source", "all"))
        self.log(f"{stage}/loss", step.loss.detach(), prog_bar=True, **opts)
        self.log(f"{stage}/infonce", step.infonce.detach(), **opts)
        self.log(f"{stage}/accuracy", step.accuracy, **opts)
        if stage == "train":
            self._log_source(source, step)
        else:
            self.log(f"{stage}/accuracy/{source}", step.accuracy, **opts)
        for dim, value in step.per_dim_loss.items():
            self.log(f"{stage}/infonce_dim{dim}", value, **opts)
        for name, value in step.distill.items():
            self.log(f"{stage}/distill/{name}", value, **opts)
        config = self.encoder.config
        if config.is_moe:
            self.log(f"{stage}/aux_loss", step.aux_loss, **opts)
            self.log(f"{stage}/z_loss", step.z_loss, **opts)
        if stage != "train":
            return
        self.log("train/logit_scale", step.logit_scale, batch_size=bs)
        self.log("train/temperature", 1.0 / step.logit_scale, batch_size=bs)
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", float(self.trainer.optimizers[0].param_groups[0]["lr"]), batch_size=bs)
        if config.is_moe and self._is_logging_step():
            metrics = expert_load_metrics(step.passes, config.moe_layer_indices)
            cvs = [v for k, v in metrics.items() if k.endswith("/load_cv")]
            metrics["load_cv_max"] = max(cvs)
            for name, value in metrics.items():
                self.log(f"moe/{name}", value, batch_size=bs)

    def _log_source(self, source: str, step: StepOutput) -> None:
        """Per-source InfoNCE and accuracy, written only at the steps that drew that source.

        Sources differ in difficulty, so the pooled loss jumps with the source of each batch; the
        per-source curves show whether training makes progress. ``self.log`` would write every
        source's last value again at each step, so these go to the loggers directly.
        """
        if self._trainer is None:
            return
        values = {
            f"train/infonce/{source}": float(step.infonce.detach()),
            f"train/accuracy/{source}": float(step.accuracy),
        }
        for logger in self.loggers:
            logger.log_metrics(values, step=self.global_step)

    def _is_logging_step(self) -> bool:
        # Dozens of per-expert scalars per step: only build them when the logger will write them.
        if self._trainer is None:
            return True
        every = max(int(self.trainer.log_every_n_steps), 1)
        return self.global_step % every == 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        step = self.compute_losses(batch)
        self._check_losses(step, batch_idx)
        self._log_step(step, batch, "train")
        # Extra keys reach callbacks (on_train_batch_end ``outputs``) detached.
        return {
            "loss": step.loss,
            "infonce": step.infonce.detach(),
            "aux_loss": step.aux_loss,
            "z_loss": step.z_loss,
        }

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        step = self.compute_losses(batch)
        self._log_step(step, batch, "val")
        return step.loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        step = self.compute_losses(batch)
        self._log_step(step, batch, "test")
        return step.loss

    # ------------------------------------------------------------------ seeding and throughput
    def setup(self, stage: str) -> None:
        if self._seed is None:
            self._seed = global_seed()

    def on_train_start(self) -> None:
        self.throughput_clock.reset()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed = self._seed if self._seed is not None else global_seed()
        seed_step(seed, self.current_epoch, batch_idx, self.global_rank)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        tokens = batch_token_count(batch)
        samples = int(batch["query_input_ids"].shape[0])
        rates = self.throughput_clock.tick(tokens, samples)
        if rates is not None:
            # Summed over ranks: the job's throughput, not one rank's.
            sync = self.trainer.world_size > 1
            self.log("train/tokens_per_s", rates.tokens_per_s, prog_bar=True, sync_dist=sync, reduce_fx="sum")
            self.log("train/samples_per_s", rates.samples_per_s, sync_dist=sync, reduce_fx="sum")
        if self.loss_config.nonfinite == "skip":
            self.log("train/skipped_steps", float(self.skipped_steps), batch_size=samples)

    def on_validation_start(self) -> None:
        self.throughput_clock.pause()

    def on_validation_end(self) -> None:
        self.throughput_clock.resume()

    # ------------------------------------------------------------------ optimisation
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self._skip_reason is not None:
            # A skipped step (nonfinite="skip") moves nothing: the router biases keep their values
            # and the loads of its (non-finite) forward passes are forgotten. Every rank agrees.
            self.skipped_steps += 1
            self._skip_reason = None
            for layer in self.encoder.moe_layers:
                layer.load_accumulator.zero_()
            return
        # Loss-free balancing moves its selection biases once per optimiser step, from the loads
        # accumulated over all micro-batches since the last step (all-reduced across ranks).
        self.encoder.update_loss_free_biases()

    def configure_optimizers(self) -> dict[str, Any]:
        total = self.optim_config.total_steps or _total_steps(self.trainer)
        opt, sched = build_optimizer(list(self.named_parameters()), self.optim_config, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def export_metadata(self) -> dict[str, Any]:
        """Architecture, tokenizer and naming of the embedder: what ``export_checkpoint`` rebuilds from."""
        tokenizer = self.embedder.tokenizer
        return {
            "encoder_config": self.encoder.config.to_dict(),
            "name": self.embedder.name,
            "max_seq_length": self.embedder.max_seq_length,
            "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None,
            "seed": self._seed if self._seed is not None else global_seed(),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {**self.export_metadata(), "skipped_steps": self.skipped_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY) or {}
        self.skipped_steps = int(meta.get("skipped_steps") or 0)
        saved = meta.get("seed")
        if saved is not None:
            current = global_seed()
            if current != saved:
                log.warning(
                    "checkpoint was trained with seed %s, this run has %s: keeping %s so that dropout "
                    "draws continue the interrupted run",
                    saved,
                    current,
                    saved,
                )
            self._seed = int(saved)


def _total_steps(trainer: L.Trainer) -> int:
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        return int(trainer.estimated_stepping_batches)
    except Exception:  # noqa: BLE001 - unsized iterables have no estimate
        return 1
