"""The INT8 attention kernel's arithmetic, run with PyTorch ops on any device (the op's CPU implementation).

It walks the keys in blocks of ``KV_BLOCK_SIZE`` exactly as the Triton kernel does: the same online
softmax in base 2, the same quantization of each P block against the running maximum, the same
order of the fp32 scalings. Query rows are independent, so it processes all of them at once instead
of in the kernel's BLOCK_M tiles; that changes nothing.

Both integer GEMMs are exact: they are computed as fp32 GEMMs on integer-valued operands, and every
partial sum is an integer of magnitude at most 127·127·D (Q·Kᵀ, D ≤ 1040) or 127·127·KV_BLOCK_SIZE
(P·V), below 2**24, so fp32 represents each one exactly whatever the summation order. The INT32
products therefore equal the kernel's bit for bit; the float steps that follow (exp2, row sums)
can differ from the GPU's by a few ulps, which can move a P entry by one INT8 level.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .numerics import FP32_LOWEST, INT8_MAX, KV_BLOCK_SIZE, LOG2E, P_DEQUANT_FIXED

_EXACT_FP32_INT = 2**24


def int8_flash_attention_cpu(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_scale: Tensor,
    k_scale: Tensor,
    v_scale: Tensor | None,
    attn_mask: Tensor | None,
    is_causal: bool,
    sm_scale: float,
    p_scale: str,
    out: Tensor,
    causal_offset: int = 0,
    window_left: int = -1,
    block_n: int = KV_BLOCK_SIZE,
) -> Tensor:
    """Blockwise INT8 attention into ``out`` (B, Hq, Nq, D); see ``intfa_compile.ops.int8_attention``."""
    batch, heads_q, n_q, head_dim = q.shape
    heads_k, n_k = k.shape[1], k.shape[2]
    group = heads_q // heads_k
    if INT8_MAX * INT8_MAX * max(head_dim, block_n) >= _EXACT_FP32_INT:
        raise ValueError(f"head_dim {head_dim} / block {block_n} too large for exact fp32 integer GEMMs")
    rows = group * n_q
    full_int8 = v_scale is not None

    # Query heads that share a KV head are stacked along the row axis: (B, Hk, G·Nq, D).
    qf = q.float().reshape(batch, heads_k, rows, head_dim)
    qs = (q_scale.float() * (sm_scale * LOG2E)).reshape(batch, heads_k, rows, 1)
    kf = k.float()
    ks = k_scale.float().unsqueeze(-2)
    vf = v.float()
    row_ids = torch.arange(n_q, device=q.device).repeat(group).unsqueeze(-1)

    m_i = torch.full((batch, heads_k, rows, 1), float("-inf"), device=q.device)
    l_i = torch.zeros((batch, heads_k, rows, 1), device=q.device)
    acc = torch.zeros((batch, heads_k, rows, head_dim), device=q.device)
    # Causal: row i sees keys j <= i + causal_offset, so no block past the last row's diagonal is needed.
    stop = min(n_k, max(0, n_q + causal_offset)) if is_causal else n_k
    # With a window, blocks left of the first row's window are masked for every row: nothing to add.
    first = max(0, causal_offset - window_left) // block_n * block_n if is_causal and window_left >= 0 else 0
    for start in range(first, stop, block_n):
        end = min(start + block_n, n_k)
        s = (qf @ kf[:, :, start:end].transpose(-1, -2)) * qs * ks[..., start:end]
        if attn_mask is not None:
            # Expanded one key block at a time: a broadcast mask never becomes an Nq×Nk copy.
            block_mask = attn_mask[..., start:end].expand(batch, heads_q, n_q, end - start)
            block_mask = block_mask.reshape(batch, heads_k, rows, end - start)
            if block_mask.dtype == torch.bool:
                s = s.masked_fill(~block_mask, float("-inf"))
            else:
                bias = block_mask.float()
                bias2 = torch.where(bias == float("-inf"), bias, (bias * LOG2E).clamp(min=FP32_LOWEST))
                s = s + bias2
        if is_causal:
            cols = torch.arange(start, end, device=q.device)
            s = s.masked_fill(cols > row_ids + causal_offset, float("-inf"))
            if window_left >= 0:  # blocks wholly left of a row's window change nothing for that row
                s = s.masked_fill(cols < row_ids + causal_offset - window_left, float("-inf"))
        m_new = torch.maximum(m_i, s.amax(dim=-1, keepdim=True))
        m_safe = torch.where(m_new == float("-inf"), 0.0, m_new)
        alpha = torch.exp2(m_i - m_safe)
        p = torch.exp2(s - m_safe)
        l_i = l_i * alpha + p.sum(dim=-1, keepdim=True)
        if not full_int8:
            pv = p.to(v.dtype).float() @ vf[:, :, start:end]
            acc = acc * alpha + pv
        elif p_scale == "fixed":
            p_q = torch.floor(p * float(INT8_MAX) + 0.5)
            acc = acc * alpha + (p_q @ vf[:, :, start:end]) * P_DEQUANT_FIXED
        else:
            p_max = p.amax(dim=-1, keepdim=True)
            inv = torch.where(p_max > 0, float(INT8_MAX) / p_max, 0.0)
            p_q = torch.floor(p * inv + 0.5)
            acc = acc * alpha + (p_q @ vf[:, :, start:end]) * (p_max / float(INT8_MAX))
        m_i = m_new

    # A row that saw no key (fully masked) has l = 0 and acc = 0: it gives zeros. A NaN in l stays.
    result = acc / torch.where(l_i == 0, 1.0, l_i)
    if full_int8:
        result = result * v_scale.float().unsqueeze(-2)
    out.copy_(result.reshape(batch, heads_q, n_q, head_dim))
    return out
