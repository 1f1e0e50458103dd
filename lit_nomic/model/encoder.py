"""The bidirectional encoder (BERT / XLM-R / NomicBERT family) with optional MoE FFN layers.

Read top to bottom: the packed batch, embeddings, attention, one block, the encoder, pooling.

Hidden states stay *unpadded*, [T, D] with T the number of real tokens in the batch, through the
embeddings, every LayerNorm, projection and FFN, and are padded only around the attention kernel
(or not at all with the flash-attn varlen kernel). That skips the padding FLOPs everywhere except
attention, and it is what guarantees that padding never reaches the experts: an MoE layer sees
exactly the real tokens, so router statistics, load-balancing losses and expert capacity are not
polluted by pad tokens. The MoE layers also get the sequence boundaries (``cu_seqlens``), so that
an expert-choice router selects tokens within each text and an embedding does not depend on the
other texts of its batch.

Positions are the rank of a token among the real tokens of its row (``cumsum(mask) - 1``), so an
embedding does not depend on how much padding a batch has nor on the padding side. For right
padding this equals HF BERT's ``arange(seq_len)``; RoBERTa's ``pad_id + 1 + rank`` is the same
table shifted, which :mod:`lit_nomic.model.weights` removes when importing.

Model code knows nothing of parallelism: ``encoder.blocks`` is a plain ``nn.ModuleList`` that FSDP2
can ``fully_shard`` block by block from outside, and activation checkpointing is one flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lit_nomic.config import EncoderConfig
from lit_nomic.model.ffn import FeedForward
from lit_nomic.model.moe import MoEFeedForward, MoEOutput
from lit_nomic.model.rope import apply_rotary, rotary_tables

__all__ = ["Encoder", "EncoderOutput", "PackedBatch", "normalize_and_truncate"]


# ----------------------------------------------------------------------------- packed batch
@dataclass
class PackedBatch:
    """Where the real tokens of a padded [B, S] batch live once flattened to [T].

    Built once per forward and shared by every block; ``indices_T`` index the flattened B*S grid.
    """

    batch_size: int
    seq_len: int
    indices_T: torch.Tensor  # int64 [T]: positions of real tokens in the flattened [B*S] grid
    row_T: torch.Tensor  # int64 [T]: batch row of every real token
    positions_T: torch.Tensor  # int64 [T]: rank of the token among its row's real tokens
    lengths_B: torch.Tensor  # int64 [B]: real tokens per row
    cu_seqlens: torch.Tensor  # int32 [B+1]: flash-attn varlen offsets
    max_seqlen: int
    key_mask_B11S: torch.Tensor | None  # bool, True = attend; None when no row is padded
    rope_cos_T: torch.Tensor | None = None  # [T, head_dim/2]
    rope_sin_T: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.indices_T.numel())

    @property
    def is_padded(self) -> bool:
        return self.num_tokens != self.batch_size * self.seq_len

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> PackedBatch:
        if attention_mask.dim() != 2:
            raise ValueError(
                f"attention_mask must be [batch, seq_len], got shape {tuple(attention_mask.shape)}"
            )
        mask_BS = attention_mask.bool()
        batch_size, seq_len = mask_BS.shape
        lengths_B = mask_BS.sum(dim=1)
        empty = (lengths_B == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"rows {empty} of attention_mask have no real token; every text needs >= 1 token"
            )
        flat = mask_BS.flatten()
        indices_T = flat.nonzero().flatten()
        positions_BS = mask_BS.long().cumsum(dim=1) - 1
        cu_seqlens = F.pad(lengths_B.cumsum(0), (1, 0)).to(torch.int32)
        return cls(
            batch_size=batch_size,
            seq_len=seq_len,
            indices_T=indices_T,
            row_T=torch.div(indices_T, seq_len, rounding_mode="floor"),
            positions_T=positions_BS.flatten().index_select(0, indices_T),
            lengths_B=lengths_B,
            cu_seqlens=cu_seqlens,
            max_seqlen=int(lengths_B.max()),
            key_mask_B11S=None if bool(flat.all()) else mask_BS[:, None, None, :],
        )

    def unpad(self, x_BS: torch.Tensor) -> torch.Tensor:
        """[B, S, ...] -> [T, ...]."""
        return x_BS.reshape(self.batch_size * self.seq_len, *x_BS.shape[2:]).index_select(0, self.indices_T)

    def pad(self, x_T: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [B, S, ...] with zeros at padding (differentiable)."""
        grid = x_T.new_zeros(self.batch_size * self.seq_len, *x_T.shape[1:])
        grid.index_copy_(0, self.indices_T, x_T)  # in place: no copy of the zero grid
        return grid.view(self.batch_size, self.seq_len, *x_T.shape[1:])


# ----------------------------------------------------------------------------- embeddings
class Embeddings(nn.Module):
    """Word (+ absolute position) (+ token type) embeddings, LayerNorm, dropout, on real tokens only."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        d = config.hidden_size
        # padding_idx keeps the pad row's gradient at zero, as in HF BERT/XLM-R.
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, d, padding_idx=config.pad_token_id)
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, d)
            if config.position_embedding == "absolute"
            else None
        )
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, d) if config.type_vocab_size > 0 else None
        )
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self, ids_T: torch.Tensor, positions_T: torch.Tensor, token_types_T: torch.Tensor | None
    ) -> torch.Tensor:
        x_TD = self.word_embeddings(ids_T)
        if self.position_embeddings is not None:
            x_TD = x_TD + self.position_embeddings(positions_T)
        if self.token_type_embeddings is not None:
            if token_types_T is None:
                # A single row (XLM-R, NomicBERT) or type 0 (BERT single sentence): a constant offset.
                x_TD = x_TD + self.token_type_embeddings.weight[0]
            else:
                x_TD = x_TD + self.token_type_embeddings(token_types_T)
        return self.dropout(self.norm(x_TD))


# ----------------------------------------------------------------------------- attention
def _flash_attn_varlen() -> object:
    try:
        from flash_attn import flash_attn_varlen_qkvpacked_func
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            "attention_backend='flash_attn' needs the flash-attn package on a CUDA machine "
            "(pip install 'lit-nomic[flash-attn]'); set attention_backend='sdpa' to use PyTorch SDPA"
        ) from err
    return flash_attn_varlen_qkvpacked_func


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with one fused QKV projection (NomicBERT ``Wqkv``)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.dropout_p = config.attention_dropout
        self.backend = config.attention_backend
        self.qkv = nn.Linear(d, 3 * d, bias=config.attention_bias)  # rows: [q; k; v], heads inner
        self.out = nn.Linear(d, d, bias=config.attention_bias)

    def forward(self, x_TD: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        n_tokens = x_TD.shape[0]
        qkv_T3HK = self.qkv(x_TD).view(n_tokens, 3, self.num_heads, self.head_dim)
        if batch.rope_cos_T is not None:
            q_THK = apply_rotary(qkv_T3HK[:, 0], batch.rope_cos_T, batch.rope_sin_T)
            k_THK = apply_rotary(qkv_T3HK[:, 1], batch.rope_cos_T, batch.rope_sin_T)
            qkv_T3HK = torch.stack((q_THK, k_THK, qkv_T3HK[:, 2]), dim=1)
        dropout_p = self.dropout_p if self.training else 0.0
        if self.backend == "flash_attn":
            ctx_THK = self._flash(qkv_T3HK, batch, dropout_p)
        else:
            ctx_THK = self._sdpa(qkv_T3HK, batch, dropout_p)
        return self.out(ctx_THK.reshape(n_tokens, -1))

    def _sdpa(self, qkv_T3HK: torch.Tensor, batch: PackedBatch, dropout_p: float) -> torch.Tensor:
        qkv_BS3HK = (
            batch.pad(qkv_T3HK)
            if batch.is_padded
            else qkv_T3HK.view(batch.batch_size, batch.seq_len, 3, self.num_heads, self.head_dim)
        )
        q_BHSK, k_BHSK, v_BHSK = qkv_BS3HK.permute(2, 0, 3, 1, 4).unbind(0)
        ctx_BHSK = F.scaled_dot_product_attention(
            q_BHSK, k_BHSK, v_BHSK, attn_mask=batch.key_mask_B11S, dropout_p=dropout_p
        )
        ctx_BSHK = ctx_BHSK.transpose(1, 2)
        return (
            batch.unpad(ctx_BSHK) if batch.is_padded else ctx_BSHK.reshape(-1, self.num_heads, self.head_dim)
        )

    def _flash(self, qkv_T3HK: torch.Tensor, batch: PackedBatch, dropout_p: float) -> torch.Tensor:
        if not qkv_T3HK.is_cuda or qkv_T3HK.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(
                "attention_backend='flash_attn' runs on CUDA in fp16/bf16 only "
                f"(got device={qkv_T3HK.device}, dtype={qkv_T3HK.dtype}); use bf16 autocast or 'sdpa'"
            )
        flash = _flash_attn_varlen()
        return flash(  # type: ignore[operator]
            qkv_T3HK.contiguous(),
            batch.cu_seqlens.to(qkv_T3HK.device),
            batch.max_seqlen,
            dropout_p,
            causal=False,
        )


# ----------------------------------------------------------------------------- block
class Block(nn.Module):
    """Attention + FFN (dense or MoE), post-LN (BERT, NomicBERT) or pre-LN."""

    def __init__(self, config: EncoderConfig, index: int) -> None:
        super().__init__()
        d = config.hidden_size
        self.index = index
        self.pre_norm = config.norm_position == "pre"
        self.attn = Attention(config)
        self.norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.is_moe = config.is_moe_layer(index)
        self.ffn: nn.Module = (
            MoEFeedForward(config)
            if self.is_moe
            else FeedForward(config.hidden_size, config.ffn_size, config.activation, bias=config.ffn_bias)
        )
        self.dropout = nn.Dropout(config.hidden_dropout)

    def _ffn(self, x_TD: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, MoEOutput | None]:
        if self.is_moe:
            # The sequence boundaries let expert choice select per text (batch-independent routing).
            moe: MoEOutput = self.ffn(x_TD, batch.cu_seqlens)
            return moe.y, moe
        return self.ffn(x_TD), None

    def forward(self, x_TD: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, MoEOutput | None]:
        if self.pre_norm:
            x_TD = x_TD + self.dropout(self.attn(self.norm1(x_TD), batch))
            y_TD, moe = self._ffn(self.norm2(x_TD), batch)
            return x_TD + self.dropout(y_TD), moe
        x_TD = self.norm1(x_TD + self.dropout(self.attn(x_TD, batch)))
        y_TD, moe = self._ffn(x_TD, batch)
        return self.norm2(x_TD + self.dropout(y_TD)), moe


# ----------------------------------------------------------------------------- outputs & pooling
@dataclass
class EncoderOutput:
    """Pooled embeddings plus the MoE statistics the trainer logs and the losses it adds."""

    embeddings: torch.Tensor  # [B, D'] pooled (L2-normalised if config.normalize; D' = matryoshka dim)
    aux_loss: torch.Tensor  # 0-d: mean over MoE layers of the load-balancing loss (0 when dense)
    z_loss: torch.Tensor  # 0-d: mean over MoE layers of the router z-loss (0 when dense)
    tokens_per_expert: list[torch.Tensor] = field(default_factory=list)  # per MoE layer, [E] int64, detached
    router_entropy: list[torch.Tensor] = field(default_factory=list)  # per MoE layer, detached
    token_embeddings: torch.Tensor | None = None  # [B, S, D] last hidden states (zeros at pads), on request


def normalize_and_truncate(
    embeddings: torch.Tensor, dim: int | None = None, normalize: bool = True
) -> torch.Tensor:
    """Matryoshka truncation to the first ``dim`` features, then (re-)normalisation.

    Truncating a normalised vector and re-normalising equals truncating the raw pooled vector and
    normalising (normalisation only rescales), so callers may pass either.
    """
    if dim is not None:
        if not 1 <= dim <= embeddings.shape[-1]:
            raise ValueError(f"matryoshka dim {dim} is outside [1, {embeddings.shape[-1]}]")
        embeddings = embeddings[..., :dim]
    return F.normalize(embeddings, p=2, dim=-1) if normalize else embeddings


# ----------------------------------------------------------------------------- encoder
class Encoder(nn.Module):
    """Embeddings -> blocks -> (final LN if pre-LN) -> pooling -> normalisation -> Matryoshka."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        # Pre-LN leaves the residual stream un-normalised; a final LN is the standard fix.
        self.final_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if config.norm_position == "pre"
            else None
        )
        self.gradient_checkpointing = False
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """BERT init: N(0, initializer_range) for matrices and embeddings, zero biases, LN = (1, 0).

        MoE layers are left to initialise themselves (router std, expert layout are theirs to know).
        """
        std = self.config.initializer_range
        moe_modules = {m for b in self.blocks if b.is_moe for m in b.ffn.modules()}
        for module in self.modules():
            if module in moe_modules:
                continue
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ MoE hooks
    @property
    def moe_layers(self) -> list[nn.Module]:
        return [b.ffn for b in self.blocks if b.is_moe]

    def update_loss_free_biases(self) -> None:
        """Once per optimiser step: let every MoE layer move its loss-free balancing bias."""
        for layer in self.moe_layers:
            layer.update_loss_free_bias()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        matryoshka_dim: int | None = None,
        output_token_embeddings: bool = False,
    ) -> EncoderOutput:
        """Encode a padded batch ``input_ids`` [B, S] (mask 1 = real token) into pooled embeddings."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        cfg = self.config
        if cfg.position_embedding == "absolute" and input_ids.shape[1] > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings="
                f"{cfg.max_position_embeddings}; truncate the inputs"
            )
        batch = PackedBatch.from_mask(attention_mask)
        if cfg.position_embedding == "rope":
            batch.rope_cos_T, batch.rope_sin_T = rotary_tables(
                batch.positions_T, cfg.head_dim, cfg.rope_base, dtype=self.embeddings.norm.weight.dtype
            )
        ids_T = batch.unpad(input_ids)
        types_T = batch.unpad(token_type_ids) if token_type_ids is not None else None
        x_TD = self.embeddings(ids_T, batch.positions_T, types_T)

        moe_outputs: list[MoEOutput] = []
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x_TD, moe = checkpoint(block, x_TD, batch, use_reentrant=False)
            else:
                x_TD, moe = block(x_TD, batch)
            if moe is not None:
                moe_outputs.append(moe)
        if self.final_norm is not None:
            x_TD = self.final_norm(x_TD)

        pooled_BD = self.pool(x_TD, batch)
        embeddings = normalize_and_truncate(pooled_BD, matryoshka_dim, normalize=cfg.normalize)
        zero = x_TD.new_zeros((), dtype=torch.float32)
        n_moe = len(moe_outputs)
        return EncoderOutput(
            embeddings=embeddings,
            aux_loss=sum((m.aux_loss.float() for m in moe_outputs), zero) / max(n_moe, 1),
            z_loss=sum((m.z_loss.float() for m in moe_outputs), zero) / max(n_moe, 1),
            tokens_per_expert=[m.tokens_per_expert.detach() for m in moe_outputs],
            router_entropy=[m.router_entropy.detach() for m in moe_outputs],
            token_embeddings=batch.pad(x_TD) if output_token_embeddings else None,
        )

    def pool(self, x_TD: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Mean over real tokens or the first real token ([CLS] / <s>), from unpadded states."""
        if self.config.pooling == "cls":
            return x_TD.index_select(0, batch.cu_seqlens[:-1].long())
        sums_BD = x_TD.new_zeros(batch.batch_size, x_TD.shape[1]).index_add(0, batch.row_T, x_TD)
        return sums_BD / batch.lengths_B.unsqueeze(1).to(x_TD.dtype)
