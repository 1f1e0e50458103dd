"""Rotary position embeddings (RoPE, Su et al. 2021) in the layout NomicBERT was trained with.

NomicBERT (contrastors ``apply_rotary_emb`` with ``interleaved=False``, the GPT-NeoX convention)
rotates the pair (x[i], x[i + d/2]) by the angle ``position * base**(-2i/d)``, i.e.

    rope(x) = x * cos + rotate_half(x) * sin,   rotate_half([x1, x2]) = [-x2, x1],

with the rotation applied to the full head dim (``rotary_emb_fraction = 1``). The GPT-J
("interleaved") layout rotates (x[2i], x[2i+1]) instead; both give the same relative-position
property but different weights, so importing a released checkpoint needs the right one.

Tables are computed in fp32 from integer positions, so bf16 training cannot merge neighbouring
positions (the bug contrastors' ``pos_idx_in_fp32`` guards against); nothing is cached or stored in
the state dict, because per-token tables are cheap ([T, d/2]) next to one attention layer.
"""

from __future__ import annotations

import torch

__all__ = ["apply_rotary", "rotary_tables", "rotate_half"]


def rotary_tables(
    positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each [..., head_dim / 2], for integer ``positions`` of any shape."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}")
    # fp32 (fp64 when asked for fp64 tables): never the model's half precision.
    exact = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=exact) / head_dim))
    angles = positions.to(exact).unsqueeze(-1) * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dim (GPT-NeoX / NomicBERT layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., heads, head_dim] by tables [..., head_dim / 2] (broadcast over heads).

    The result keeps ``x``'s dtype, so q and k stay in the autocast dtype the attention kernel wants.
    """
    cos = torch.cat((cos, cos), dim=-1).unsqueeze(-2).to(x.dtype)
    sin = torch.cat((sin, sin), dim=-1).unsqueeze(-2).to(x.dtype)
    return x * cos + rotate_half(x) * sin
