"""Symmetric INT8 quantizers written as plain aten ops, so Inductor can fuse them with their neighbours.

Per-token scales of Q and K factor out of Q·Kᵀ (the sum runs over head_dim); per-channel scales of V
factor out of P·V (the sum runs over tokens). A row or channel that is all zero gets scale 1 rather
than 0, so nothing divides by zero and it quantizes to zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .numerics import INT8_MAX


def _quantize_along(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    xf = x.float()
    amax = xf.abs().amax(dim=dim, keepdim=True)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    xq = torch.round(xf / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return xq, scale.squeeze(dim)


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """INT8 values of ``x`` (..., N, D) with one fp32 scale per token (..., N): max|x| over D / 127."""
    return _quantize_along(x, -1)


def quantize_per_channel(x: Tensor) -> tuple[Tensor, Tensor]:
    """INT8 values of ``x`` (..., N, D) with one fp32 scale per channel (..., D): max|x| over N / 127."""
    return _quantize_along(x, -2)
