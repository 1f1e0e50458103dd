"""A padded, graph-friendly forward of :class:`~lit_nomic.model.encoder.Encoder` for ONNX export.

The training encoder keeps hidden states unpadded ([T, D], data-dependent shapes via ``nonzero``)
and routes MoE tokens with sorts and grouped GEMMs: fast in PyTorch, but not what an ONNX graph
with dynamic batch and sequence axes can express. :class:`PaddedEncoder` computes the same function
on the padded [B, S, D] grid with the *same parameters* (it holds the encoder, copies nothing):

* positions are the rank of a token among its row's real tokens (``cumsum(mask) - 1``), as in the
  encoder, so any padding side gives the same embedding;
* attention adds ``-inf``-like bias at padded keys (explicit matmul + softmax: plain ONNX ops);
* MoE layers keep token-choice routing in the graph: router logits, softmax/sigmoid, top-k with the
  loss-free selection bias, optional renormalisation, then the gates are scattered into a dense
  [N, E] matrix and *every* expert runs on every token (two 2-D MatMuls over the stacked experts,
  the second on gate-scaled activations, which int8 dynamic quantisation handles per channel).
  That is exact (a zero gate contributes exactly 0) but costs E / k times the routed FLOPs of the
  sparse PyTorch path; ONNX has no grouped GEMM. Padded positions run through the FFN and are
  dropped by the pooling mask, so they never change a real token;
* expert-choice routing picks tokens per sequence with a sort over the sequence, which this graph
  does not express: :func:`onnx_unsupported_reason` says so and export refuses such models.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_nomic.model.encoder import Encoder
from lit_nomic.model.ffn import activation_fn
from lit_nomic.model.rope import rotate_half

__all__ = ["PaddedEncoder", "onnx_unsupported_reason"]


def onnx_unsupported_reason(encoder: Encoder) -> str | None:
    """None when :class:`PaddedEncoder` reproduces ``encoder``, else one line saying why not."""
    config = encoder.config
    if config.is_moe and config.router == "expert_choice":
        return (
            "router='expert_choice' selects each expert's tokens per sequence with a sort that the ONNX "
            "graph does not express; only token-choice routers (softmax, sigmoid) export to ONNX"
        )
    if config.attention_backend != "sdpa":
        return None  # the graph has its own attention; the backend only picks a kernel
    return None


class PaddedEncoder(nn.Module):
    """``(input_ids [B, S], attention_mask [B, S]) -> embeddings [B, D]`` on the padded grid.

    Equal to ``encoder(input_ids, attention_mask).embeddings`` (full dimension) up to float
    round-off, for right- or left-padded batches. ``token_type_ids`` are not an input: like
    :class:`Encoder` without them, every token gets type row 0 (single-segment embedding inputs).
    """

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        reason = onnx_unsupported_reason(encoder)
        if reason is not None:
            raise ValueError(reason)
        self.encoder = encoder.eval()
        self.config = encoder.config
        self.act = activation_fn(self.config.activation)
        # The stacked experts as the 2-D matrices the graph multiplies by: [D, E*F] and [E*F, D].
        # Stored (a snapshot, taken at construction) so that they are graph initializers that int8
        # dynamic quantisation can quantise, not the outputs of in-graph Reshape nodes.
        for block in encoder.blocks:
            if block.is_moe:
                w1, w2 = block.ffn.experts.w1.detach(), block.ffn.experts.w2.detach()
                e, d, f = w1.shape
                self.register_buffer(f"w1_{block.index}", w1.permute(1, 0, 2).reshape(d, e * f).contiguous())
                self.register_buffer(f"w2_{block.index}", w2.reshape(e * f, d).contiguous())

    # ------------------------------------------------------------------ pieces
    def _embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        emb = self.encoder.embeddings
        x = emb.word_embeddings(input_ids)
        if emb.position_embeddings is not None:
            x = x + emb.position_embeddings(positions)
        if emb.token_type_embeddings is not None:
            x = x + emb.token_type_embeddings.weight[0]
        return emb.norm(x)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        half = torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_base**half)
        angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # [B, S, K/2]
        cos, sin = angles.cos(), angles.sin()
        # [B, 1, S, K]: broadcast over heads in the [B, H, S, K] layout
        return torch.cat((cos, cos), -1).unsqueeze(1), torch.cat((sin, sin), -1).unsqueeze(1)

    def _attention(
        self,
        block: nn.Module,
        x: torch.Tensor,
        key_bias: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        attn = block.attn
        b, s, d = x.shape
        qkv = attn.qkv(x).view(b, s, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, S, K]
        if rope is not None:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(attn.head_dim)) + key_bias
        ctx = torch.matmul(scores.softmax(dim=-1), v)  # [B, H, S, K]
        return attn.out(ctx.transpose(1, 2).reshape(b, s, d))

    def _moe(self, index: int, ffn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        b, s, d = x.shape
        x_nd = x.reshape(b * s, d)
        logits = ffn.router(x_nd).float()
        scores = torch.sigmoid(logits) if cfg.router == "sigmoid" else logits.softmax(dim=-1)
        if cfg.loss_free_balancing:
            chosen = torch.topk(scores + ffn.selection_bias.to(scores.dtype), cfg.top_k, dim=-1).indices
            gates = scores.gather(-1, chosen)
        else:
            gates, chosen = torch.topk(scores, cfg.top_k, dim=-1)
        if cfg.router_renormalize:
            gates = gates / gates.sum(-1, keepdim=True).clamp_min(torch.finfo(gates.dtype).tiny)
        dense_gates = torch.zeros_like(scores).scatter(-1, chosen, gates).to(x.dtype)  # [N, E]
        e, f = cfg.num_experts, ffn.experts.w1.shape[-1]
        w1, w2 = getattr(self, f"w1_{index}"), getattr(self, f"w2_{index}")  # [D, E*F], [E*F, D]
        h = torch.matmul(x_nd, w1).view(b * s, e, f)
        if ffn.experts.b1 is not None:
            h = h + ffn.experts.b1
        h = self.act(h) * dense_gates.unsqueeze(-1)  # g_e * (h_e @ w2_e) == (g_e * h_e) @ w2_e
        out = torch.matmul(h.reshape(b * s, e * f), w2)  # one 2-D MatMul: [N, D]
        if ffn.experts.b2 is not None:
            out = out + torch.matmul(dense_gates, ffn.experts.b2)
        if ffn.shared_expert is not None:
            out = out + ffn.shared_expert(x_nd)
        if ffn.output_bias is not None:
            out = out + ffn.output_bias
        return out.view(b, s, d)

    def _ffn(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self._moe(block.index, block.ffn, x) if block.is_moe else block.ffn(x)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        mask = attention_mask.to(torch.int64)
        positions = (torch.cumsum(mask, dim=1) - 1).clamp_min(0)
        x = self._embed(input_ids, positions)
        dtype = x.dtype
        key_bias = ((1 - mask).to(dtype) * torch.finfo(dtype).min)[:, None, None, :]  # [B, 1, 1, S]
        rope = self._rope(positions) if cfg.position_embedding == "rope" else None
        for block in self.encoder.blocks:
            if block.pre_norm:
                x = x + self._attention(block, block.norm1(x), key_bias, rope)
                x = x + self._ffn(block, block.norm2(x))
            else:
                x = block.norm1(x + self._attention(block, x, key_bias, rope))
                x = block.norm2(x + self._ffn(block, x))
        if self.encoder.final_norm is not None:
            x = self.encoder.final_norm(x)
        weights = mask.to(dtype).unsqueeze(-1)  # [B, S, 1]
        if cfg.pooling == "cls":
            first = torch.argmax(
                weights.squeeze(-1), dim=1
            )  # the first real token of each row (any padding side)
            pooled = x.gather(1, first.view(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1)
        else:
            pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return F.normalize(pooled, p=2.0, dim=-1) if cfg.normalize else pooled
