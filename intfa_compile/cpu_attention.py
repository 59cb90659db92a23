"""The INT8 attention kernel's arithmetic, run with PyTorch ops on any device (the op's CPU implementation).

It walks the keys in blocks of ``block_n`` (``numerics.default_kv_block`` unless fixed) exactly as the Triton
kernel does: the same online softmax in base 2, the same quantization of each P block against the running
maximum, the same order of the fp32 scalings. Query rows are independent, so it processes all of them at once instead
of in the kernel's BLOCK_M tiles; that changes nothing.

Both integer GEMMs are exact: they are computed as fp32 GEMMs on integer-valued operands, and every
partial sum is an integer of magnitude at most 127·127·D (Q·Kᵀ, D ≤ 1040) or 127·127·block_n
(P·V), below 2**24, so fp32 represents each one exactly whatever the summation order. The INT32
products therefore equal the kernel's bit for bit; the float steps that follow (exp2, row sums)
can differ from the GPU's by a few ulps, which can move a P entry by one INT8 level.

Without a mask the scores keep no query scale and the exp2 argument is one FFMA (emulated in fp64),
as in the kernel. With an e4m3 V (pv_format="fp8") P is exp2 of the exponent plus log2(448), rounded to
e4m3 (PyTorch's cast: nearest, ties to even, as ``cvt.rn``), and the e4m3 products add up exactly in
fp64; the row sums carry the same factor of 448, which cancels.

P is rounded to INT8 as the kernel rounds it: to nearest, ties to even, from the exact product (one
rounding, as the kernel's FFMA with a magic number; see ``round_to_int8``). With the fixed P scale the
kernel sums P·V in INT32 across key blocks and folds the sum into its fp32 accumulator only when a
row's running maximum moves (or before INT32 could overflow); this implementation does the same per
row, in float64 (exact), where the kernel folds a whole query tile when any of its rows moves. Folding
more often changes only fp32 rounding (one rounding per fold), not the integer sums.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .attention_call import AttentionCall
from .key_splits import combine_key_splits, key_splits, split_keys_evenly
from .numerics import (
    BF16_MASK_FLOOR,
    FP32_LOWEST,
    FP32_TINY,
    INT8_MAX,
    LOG2E,
    P_DEQUANT_FIXED,
    PV_FP8_FOLD_BLOCKS,
    folds_query_scale,
    lazy_pv_accumulation,
)

_EXACT_FP32_INT = 2**24


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """a · b + c in fp32 with one rounding of the exact result (the GPU's FFMA): the product of two fp32 numbers
    is exact in fp64, and so, for the kernel's operands (an exponent near the running maximum), is the sum."""
    return (a.double() * b.double() + c.double()).float()


def additive_mask_in_base2(bias: Tensor) -> Tensor:
    """An additive mask (any float dtype) as the kernel adds it to base-2 scores, in fp32: times log2(e), clamped at
    fp32's lowest (a row masked with ``finfo.min`` stays finite and averages uniformly, as eager softmax does); −inf
    kept. A bfloat16 entry is floored at ``BF16_MASK_FLOOR`` first (the kernel's cheaper clamp, before the multiply;
    NaN kept)."""
    if bias.dtype == torch.bfloat16:
        bias = torch.where((bias < BF16_MASK_FLOOR) & (bias != float("-inf")), BF16_MASK_FLOOR, bias)
    bias = bias.float()
    return torch.where(bias == float("-inf"), bias, (bias * LOG2E).clamp(min=FP32_LOWEST))


def round_to_int8(p: Tensor, scale: Tensor | float) -> Tensor:
    """round(p · scale), ties to even, with one rounding of the exact product (as the kernel's FFMA with the
    magic number 1.5·2²³ does); integer values in fp32."""
    scale = scale.double() if isinstance(scale, Tensor) else scale
    return torch.round(p.double() * scale).float()


def int8_flash_attention_cpu(call: AttentionCall, out: Tensor, splits: int | None = None) -> Tensor:
    """Blockwise INT8 attention of ``call`` into ``out`` (B, Hq, Nq, D); see ``intfa_compile.ops.int8_attention``.
    Keys per block: ``call.block_n`` (as the kernel); ``splits``: key ranges (split-K; by default ``key_splits``'
    rule, as the kernel's launcher)."""
    q, k, v, q_scale, k_scale, v_scale, attn_mask = call.tensors
    is_causal, sm_scale, p_scale = call.is_causal, call.sm_scale, call.options.p_scale
    causal_offset, window_left, block_n = call.causal_offset, call.window_left, call.block_n
    batch, heads_q, n_q, head_dim = q.shape
    heads_k, n_k = k.shape[1], k.shape[2]
    group = heads_q // heads_k
    if INT8_MAX * INT8_MAX * max(head_dim, block_n) >= _EXACT_FP32_INT:
        raise ValueError(f"head_dim {head_dim} / block {block_n} too large for exact fp32 integer GEMMs")
    rows = group * n_q
    quantized_pv = v_scale is not None  # INT8 or e4m3 V with per-channel scales
    pv_fp8 = quantized_pv and v.dtype.is_floating_point  # a float8 V: P rounded to its type (the record's)

    # Query heads that share a KV head are stacked along the row axis: (B, Hk, G·Nq, D).
    qf = q.float().reshape(batch, heads_k, rows, head_dim)
    qs = (q_scale.float() * (sm_scale * LOG2E)).reshape(batch, heads_k, rows, 1)
    # Without an additive mask the scores keep no query scale; it enters the exponent (as the kernel's FFMA).
    fold = folds_query_scale(attn_mask, sm_scale)
    if fold:
        qs = torch.where(qs == 0, FP32_TINY, qs)
    kf = k.float()
    ks = k_scale.float().unsqueeze(-2)
    vf = v.double() if pv_fp8 else v.float()  # e4m3 products and their block sums are exact in fp64
    row_ids = torch.arange(n_q, device=q.device).repeat(group).unsqueeze(-1)

    # With the fixed P scale the kernel sums P·V across blocks while no maximum moves (INT32 for INT8, the tensor
    # cores' fp32 accumulator for FP8); float64 holds those sums exactly here.
    lazy_pv = quantized_pv and p_scale == "fixed" and lazy_pv_accumulation(head_dim)
    fold_blocks = PV_FP8_FOLD_BLOCKS if pv_fp8 else (2**31 - 1) // (INT8_MAX * INT8_MAX * block_n)
    pv_dequant = 1.0 if pv_fp8 else P_DEQUANT_FIXED
    # FP8 P is exp2 of the exponent plus the record's log2 P factor (e4m3: log2 448, P in [0, 448]); the row sums
    # carry the factor too.
    p_shift = call.pv.p_log2_scale
    def attend(first: int, stop: int) -> tuple[Tensor, Tensor, Tensor]:
        """The online softmax over the key blocks from ``first`` to ``stop``: (unnormalized output, base-2
        running maximum (query scale included), row sum), as one program of the kernel leaves them."""
        m_i = torch.full((batch, heads_k, rows, 1), float("-inf"), device=q.device)
        l_i = torch.zeros((batch, heads_k, rows, 1), device=q.device)
        acc = torch.zeros((batch, heads_k, rows, head_dim), device=q.device)
        acc_pv = torch.zeros_like(acc, dtype=torch.float64) if lazy_pv else None
        pending = 0
        for start in range(first, stop, block_n):
            end = min(start + block_n, n_k)
            qk = qf @ kf[:, :, start:end].transpose(-1, -2)
            s = qk * ks[..., start:end] if fold else qk * qs * ks[..., start:end]
            if attn_mask is not None:
                # Expanded one key block at a time: a broadcast mask never becomes an Nq×Nk copy.
                block_mask = attn_mask[..., start:end].expand(batch, heads_q, n_q, end - start)
                block_mask = block_mask.reshape(batch, heads_k, rows, end - start)
                if block_mask.dtype == torch.bool:
                    s = s.masked_fill(~block_mask, float("-inf"))
                else:
                    s = s + additive_mask_in_base2(block_mask)
            if is_causal:
                cols = torch.arange(start, end, device=q.device)
                s = s.masked_fill(cols > row_ids + causal_offset, float("-inf"))
                if window_left >= 0:  # blocks wholly left of a row's window change nothing for that row
                    s = s.masked_fill(cols < row_ids + causal_offset - window_left, float("-inf"))
            m_new = torch.maximum(m_i, s.amax(dim=-1, keepdim=True))
            m_safe = torch.where(m_new == float("-inf"), 0.0, m_new)
            if fold:
                neg_max = -(m_safe * qs)
                alpha = torch.where(m_new == m_i, 1.0, torch.exp2(_fma(m_i, qs, neg_max)))
                p = torch.exp2(_fma(s, qs, neg_max + p_shift if pv_fp8 else neg_max))
            else:
                alpha = torch.exp2(m_i - m_safe)
                p = torch.exp2(s - (m_safe - p_shift if pv_fp8 else m_safe))
            # With nothing pending (the first block, or just after a forced fold) acc_pv is 0.
            if lazy_pv and pending > 0:
                # Fold the P·V sums into acc where the maximum moved (alpha ≠ 1), or every fold_blocks blocks.
                flush = (m_new != m_i) | (pending >= fold_blocks)
                folded = (acc.double() + acc_pv.float().double() * pv_dequant).float() * alpha
                acc = torch.where(flush, folded, acc)
                acc_pv = torch.where(flush, 0.0, acc_pv)
                pending = 0 if pending >= fold_blocks else pending
            else:
                acc = acc * alpha
            l_i = l_i * alpha + p.sum(dim=-1, keepdim=True)
            if not quantized_pv:
                acc = acc + p.to(v.dtype).float() @ vf[:, :, start:end]
            elif pv_fp8:
                pv = p.to(v.dtype).double() @ vf[:, :, start:end]
                if lazy_pv:
                    acc_pv = acc_pv + pv
                    pending += 1
                else:
                    acc = acc + pv.float()
            elif lazy_pv:
                acc_pv = acc_pv + (round_to_int8(p, float(INT8_MAX)) @ vf[:, :, start:end]).double()
                pending += 1
            elif p_scale == "fixed":
                acc = acc + (round_to_int8(p, float(INT8_MAX)) @ vf[:, :, start:end]) * P_DEQUANT_FIXED
            else:
                p_max = p.amax(dim=-1, keepdim=True)
                inv = torch.where(p_max > 0, float(INT8_MAX) / p_max, 0.0)
                acc = acc + (round_to_int8(p, inv) @ vf[:, :, start:end]) * (p_max / float(INT8_MAX))
            m_i = m_new

        if lazy_pv:
            acc = (acc.double() + acc_pv.float().double() * pv_dequant).float()
        return acc, m_i * qs if fold else m_i, l_i

    # Causal: row i sees keys j <= i + causal_offset, so no block past the last row's diagonal is needed.
    stop = min(n_k, max(0, n_q + causal_offset)) if is_causal else n_k
    # With a window, blocks left of the first row's window are masked for every row: nothing to add.
    first = max(0, causal_offset - window_left) // block_n * block_n if is_causal and window_left >= 0 else 0
    ranges, split_keys = key_splits(n_q, n_k, batch * heads_q) if splits is None else split_keys_evenly(n_k, splits)
    if ranges == 1:
        acc, _, l_i = attend(first, stop)
        # A row that saw no key (fully masked) has l = 0 and acc = 0: it gives zeros. A NaN in l stays.
        result = acc / torch.where(l_i == 0, 1.0, l_i)
    else:  # split-K: each range alone, as the kernel's programs along the grid's third axis, then merged
        accs, maxima, sums = zip(*(attend(max(first, lo), min(stop, lo + split_keys))
                                   for lo in range(0, ranges * split_keys, split_keys)), strict=True)
        result = combine_key_splits(torch.stack(accs), torch.stack(maxima).squeeze(-1),
                                    torch.stack(sums).squeeze(-1))
    if quantized_pv:
        result = result * v_scale.float().unsqueeze(-2)
    out.copy_(result.reshape(batch, heads_q, n_q, head_dim))
    return out
