"""Embedding post-processing shared by every task: validation and Matryoshka truncation."""

from __future__ import annotations

import torch


def check_embeddings(emb: torch.Tensor, expected_rows: int, what: str) -> torch.Tensor:
    """Fail loudly on shapes/NaNs from an encoder instead of producing silently wrong scores."""
    if not isinstance(emb, torch.Tensor):
        raise TypeError(f"{what}: encoder returned {type(emb).__name__}, expected a torch.Tensor")
    if emb.ndim != 2 or emb.shape[0] != expected_rows:
        raise ValueError(f"{what}: expected embeddings of shape [{expected_rows}, D], got {tuple(emb.shape)}")
    emb = emb.detach().to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(emb).all():
        bad = int((~torch.isfinite(emb)).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{what}: embedding row {bad} contains NaN or inf")
    return emb


def truncate_normalize(emb: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Keep the first ``dim`` coordinates and re-normalise rows (Matryoshka evaluation).

    Re-normalising matters: a truncated unit vector is no longer unit-norm, and inner-product search
    would then rank by norm as much as by direction. With ``dim=None`` rows are re-normalised only,
    which also guards against encoders whose output is not exactly unit-norm.
    """
    if dim is not None:
        if dim <= 0:
            raise ValueError(f"matryoshka_dim must be positive, got {dim}")
        if dim > emb.shape[1]:
            raise ValueError(f"matryoshka_dim={dim} exceeds the embedding size {emb.shape[1]}")
        emb = emb[:, :dim]
    return torch.nn.functional.normalize(emb.to(torch.float32), p=2, dim=1)
