"""fp64 attention, the yardstick that tests and benchmarks measure the INT8 kernels against."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ReferenceAttention:
    """fp64 attention output with the softmax statistics that error bounds are stated in."""

    out: Tensor
    """softmax(S)·V, (B, Hq, Nq, Dv), fp64."""
    probs: Tensor
    """Normalised attention weights softmax(S), (B, Hq, Nq, Nk), fp64; rows with no key are 0."""
    row_sum: Tensor
    """Σ_j exp(S_ij − max_j S_ij), (B, Hq, Nq, 1): the kernel's final l in natural units, ≥ 1 for a row
    that sees any key."""


def reference_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> ReferenceAttention:
    """SDPA semantics in fp64 (GQA when query has a multiple of key's heads); fully masked rows give 0."""
    q, k, v = (t.double() for t in (query, key, value))
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    sm_scale = scale if scale is not None else q.shape[-1] ** -0.5
    scores = (q @ k.transpose(-1, -2)) * sm_scale
    n_q, n_k = scores.shape[-2:]
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.double()
    if is_causal:
        above = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(above, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max), 0.0, row_max)
    unnormalised = torch.exp(scores - row_max)
    row_sum = unnormalised.sum(dim=-1, keepdim=True)
    probs = unnormalised / torch.where(row_sum > 0, row_sum, 1.0)
    return ReferenceAttention(out=probs @ v, probs=probs, row_sum=row_sum)


@dataclass
class ErrorMetrics:
    """How far an attention output is from the fp64 reference."""

    cosine: float
    rel_l2: float
    """‖out − ref‖₂ / ‖ref‖₂."""
    mre: float
    """Mean relative error as mean|out − ref| / mean|ref| (elementwise ratios blow up near zero)."""


def error_metrics(out: Tensor, ref: Tensor) -> ErrorMetrics:
    """Cosine, relative L2 and mean relative error of ``out`` against ``ref``, in fp64."""
    out, ref = out.double().flatten(), ref.double().flatten()
    diff = out - ref
    return ErrorMetrics(
        cosine=torch.nn.functional.cosine_similarity(out, ref, dim=0).item(),
        rel_l2=(diff.norm() / ref.norm()).item(),
        mre=(diff.abs().mean() / ref.abs().mean()).item(),
    )
