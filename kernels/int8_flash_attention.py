"""INT-FlashAttention forward kernel in Triton (Chen et al. 2024, arXiv 2409.16997).

One program computes BLOCK_M query rows of one (batch, query head). Q·Kᵀ is an INT8 GEMM with INT32
accumulation, dequantized once per tile by the per-token scales of Q (with sm_scale·log2 e folded in)
and K. The online softmax runs in base 2. In full INT8 the block P is quantized to INT8 (fixed scale
1/127, or per row of the block) and P·V is a second INT8 GEMM whose per-channel V scales are applied
once, at the end; in half-INT8 P·V is a 16-bit GEMM with fp32 accumulation.

``intfa_compile.cpu_attention`` is this kernel's arithmetic in PyTorch; the two must stay in step
(same block size along the keys, same order of the fp32 scalings).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from intfa_compile.numerics import FP32_LOWEST, INT8_MAX, KV_BLOCK_SIZE, LOG2E, P_DEQUANT_FIXED

_MASK_NONE, _MASK_BOOL, _MASK_ADDITIVE = 0, 1, 2
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Triton reads module globals only when they are constexpr.
_INT8_MAX = tl.constexpr(float(INT8_MAX))
_LOG2E = tl.constexpr(LOG2E)
_P_DEQUANT_FIXED = tl.constexpr(P_DEQUANT_FIXED)
_FP32_LOWEST = tl.constexpr(FP32_LOWEST)


@triton.jit
def _round_to_bf16(x):
    """fp32 → nearest bf16 (ties to even), kept in fp32; for finite x."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.to(tl.float32, bitcast=True)


@triton.jit
def _scores(q, k, qs, ks):
    """INT8·INT8 → INT32 scores of one tile, and their dequantized base-2 logits (fp32)."""
    qk = tl.dot(q, k, out_dtype=tl.int32)
    return qk, qk.to(tl.float32) * qs[:, None] * ks[None, :]


@triton.jit
def online_softmax_step(s, m_i, l_i):
    """One block of the base-2 online softmax: (p, alpha, m_new, l_new).

    p is exp2 of the block's logits against the new running maximum, alpha rescales what earlier
    blocks accumulated; a row that has seen no finite logit yet gets p = 0 and keeps l = 0.
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _attention_block(
    acc, l_i, m_i, q, qs, offs_m, start_n,
    k_base, v_base, ks_base, mask_base,
    stride_kn, stride_kd, stride_vn, stride_vd, stride_ksn, stride_mm, stride_mn,
    N_K, HEAD_DIM, causal_offset, window_left,
    CAUSAL_MASK: tl.constexpr, WINDOW: tl.constexpr, MASK_KIND: tl.constexpr, QUANT_PV: tl.constexpr,
    P_ROW_BLOCK: tl.constexpr, UPCAST_16BIT_DOT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One KV block of the online softmax: update the accumulator, row sums and running maxima."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < N_K
    d_ok = offs_d < HEAD_DIM
    k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                mask=n_ok[None, :] & d_ok[:, None], other=0)
    ks = tl.load(ks_base + offs_n * stride_ksn, mask=n_ok, other=0.0)
    _, s = _scores(q, k, qs, ks)
    if MASK_KIND != 0:
        mask_ptrs = mask_base + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn
        if MASK_KIND == 1:
            keep = tl.load(mask_ptrs, mask=n_ok[None, :], other=0)
            s = tl.where(keep != 0, s, float("-inf"))
        else:
            bias = tl.load(mask_ptrs, mask=n_ok[None, :], other=0.0).to(tl.float32)
            bias2 = tl.where(bias == float("-inf"), bias, tl.maximum(bias * _LOG2E, _FP32_LOWEST))
            s = s + bias2
    if CAUSAL_MASK:
        diagonal = offs_m[:, None] + causal_offset
        s = tl.where(offs_n[None, :] <= diagonal, s, float("-inf"))
        if WINDOW:
            s = tl.where(offs_n[None, :] >= diagonal - window_left, s, float("-inf"))
    s = tl.where(n_ok[None, :], s, float("-inf"))

    p, alpha, m_new, l_i = online_softmax_step(s, m_i, l_i)

    v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=n_ok[:, None] & d_ok[None, :], other=0)
    if QUANT_PV:
        if P_ROW_BLOCK:
            p_max = tl.max(p, 1)
            inv = tl.where(p_max > 0, _INT8_MAX / p_max, 0.0)
            p_q = (p * inv[:, None] + 0.5).to(tl.int8)
            pv = tl.dot(p_q, v, out_dtype=tl.int32).to(tl.float32)
            acc = acc * alpha[:, None] + pv * (p_max / _INT8_MAX)[:, None]
        else:
            p_q = (p * _INT8_MAX + 0.5).to(tl.int8)
            pv = tl.dot(p_q, v, out_dtype=tl.int32).to(tl.float32)
            acc = acc * alpha[:, None] + pv * _P_DEQUANT_FIXED
    elif v.dtype == tl.float32:
        # fp32 V: an IEEE fp32 GEMM, not TF32, so P keeps its fp32 value as in the CPU implementation.
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee", out_dtype=tl.float32)
    elif UPCAST_16BIT_DOT:
        # Triton's interpreter multiplies bf16 wrongly and truncates fp32 → bf16; round P to bf16 (nearest
        # even, as the GPU does) and multiply in fp32, which holds 16-bit × 16-bit products exactly.
        p16 = _round_to_bf16(p)
        acc = acc * alpha[:, None] + tl.dot(p16, v.to(tl.float32), input_precision="ieee", out_dtype=tl.float32)
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=tl.float32)
    return acc, l_i, m_new


def autotune_configs() -> list[triton.Config]:
    """Tile shapes worth trying on Ampere and Hopper; one fixed tile under the interpreter.

    BLOCK_N is not tuned: the key block size is part of the result (see ``numerics.KV_BLOCK_SIZE``).
    """
    if _INTERPRETED:
        return [triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": block_m}, num_warps=warps, num_stages=stages)
        for block_m in (64, 128)
        for warps in (4, 8)
        for stages in (2, 3, 4)
        if not (block_m == 64 and warps == 8)
    ]


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    # A 256-wide head needs BLOCK_M ≤ 64 and few stages to fit the tiles in shared memory.
    if kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 0)) >= 256:
        narrow = [c for c in configs if c.kwargs["BLOCK_M"] == 64 and c.num_stages <= 2]
        return narrow or configs[:1]
    return configs


@triton.jit
def causal_block_range(pid_m, causal_offset, N_K, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    """(diagonal_lo, hi) for query tile pid_m: key blocks below diagonal_lo need no causal mask, blocks
    from there to hi cross the diagonal, blocks from hi on are skipped.

    Causal means query i sees keys j <= i + causal_offset (0: top-left, as SDPA's is_causal; Nk − Nq:
    bottom-right). Without IS_CAUSAL every block is unmasked: (N_K, N_K).
    """
    if IS_CAUSAL:
        first_diagonal = tl.maximum(pid_m * BLOCK_M + causal_offset, 0)
        diagonal_lo = tl.minimum(first_diagonal // BLOCK_N * BLOCK_N, N_K)
        hi = tl.minimum(N_K, tl.maximum((pid_m + 1) * BLOCK_M + causal_offset, 0))
    else:
        diagonal_lo = N_K
        hi = N_K
    return diagonal_lo, hi


@triton.autotune(
    configs=autotune_configs(),
    key=["N_Q", "N_K", "HEAD_DIM", "GROUP", "IS_CAUSAL", "WINDOW", "MASK_KIND", "QUANT_PV"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit
def _int8_attention_fwd(
    Q, K, V, QS, KS, VS, MASK, OUT,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_qsb, stride_qsh, stride_qsm,
    stride_ksb, stride_ksh, stride_ksn,
    stride_vsb, stride_vsh, stride_vsd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_ob, stride_oh, stride_om, stride_od,
    HEADS_Q, GROUP, N_Q, N_K, HEAD_DIM, qk_scale, causal_offset, window_left,
    IS_CAUSAL: tl.constexpr, WINDOW: tl.constexpr, MASK_KIND: tl.constexpr, QUANT_PV: tl.constexpr,
    P_ROW_BLOCK: tl.constexpr, UPCAST_16BIT_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HEADS_Q
    h = pid_bh % HEADS_Q
    h_kv = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N_Q
    d_ok = offs_d < HEAD_DIM

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=m_ok[:, None] & d_ok[None, :], other=0)
    qs = tl.load(QS + b * stride_qsb + h * stride_qsh + offs_m * stride_qsm, mask=m_ok, other=0.0) * qk_scale

    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    ks_base = KS + b * stride_ksb + h_kv * stride_ksh
    mask_base = MASK + b * stride_mb + h * stride_mh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    diagonal_lo, hi = causal_block_range(pid_m, causal_offset, N_K, IS_CAUSAL, BLOCK_M, BLOCK_N)
    lo = 0
    if WINDOW:  # sliding window: blocks left of the first row's window are skipped, every other one is masked
        lo = tl.minimum(tl.maximum(pid_m * BLOCK_M + causal_offset - window_left, 0) // BLOCK_N * BLOCK_N, hi)
        diagonal_lo = lo
    for start_n in range(lo, diagonal_lo, BLOCK_N):
        acc, l_i, m_i = _attention_block(
            acc, l_i, m_i, q, qs, offs_m, start_n,
            k_base, v_base, ks_base, mask_base,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_ksn, stride_mm, stride_mn,
            N_K, HEAD_DIM, causal_offset, window_left,
            False, False, MASK_KIND, QUANT_PV, P_ROW_BLOCK, UPCAST_16BIT_DOT, BLOCK_N, BLOCK_D,
        )
    for start_n in range(diagonal_lo, hi, BLOCK_N):
        acc, l_i, m_i = _attention_block(
            acc, l_i, m_i, q, qs, offs_m, start_n,
            k_base, v_base, ks_base, mask_base,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_ksn, stride_mm, stride_mn,
            N_K, HEAD_DIM, causal_offset, window_left,
            True, WINDOW, MASK_KIND, QUANT_PV, P_ROW_BLOCK, UPCAST_16BIT_DOT, BLOCK_N, BLOCK_D,
        )

    out = acc / tl.where(l_i == 0, 1.0, l_i)[:, None]
    if QUANT_PV:
        vs = tl.load(VS + b * stride_vsb + h_kv * stride_vsh + offs_d * stride_vsd, mask=d_ok, other=0.0)
        out = out * vs[None, :]
    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def _block_d(head_dim: int) -> int:
    # INT8 tensor-core GEMMs take a reduction dimension of at least 32.
    return max(32, triton.next_power_of_2(head_dim))


def int8_flash_attention_triton(
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
    traceable: bool = False,
) -> Tensor:
    """Launch the kernel into ``out``; arguments as ``intfa_compile.ops.int8_attention`` (inputs unchecked).

    ``traceable`` launches through ``torch.library.wrap_triton``, so that torch.compile sees the kernel
    (inside the ``intfa::int8_attention_triton`` triton_op) instead of an opaque call.
    """
    batch, heads_q, n_q, head_dim = q.shape
    heads_k, n_k = k.shape[1], k.shape[2]
    if out.numel() == 0:
        return out
    quant_pv = v_scale is not None
    vs = v_scale if quant_pv else q_scale  # placeholder pointer, never read
    if attn_mask is None:
        mask_kind, mask, mask_strides = _MASK_NONE, q_scale, (0, 0, 0, 0)
    else:
        mask = attn_mask.expand(batch, heads_q, n_q, n_k)  # broadcast by stride 0, no copy
        mask_kind = _MASK_BOOL if mask.dtype == torch.bool else _MASK_ADDITIVE
        mask_strides = mask.stride()
    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads_q)

    kernel = torch.library.wrap_triton(_int8_attention_fwd) if traceable else _int8_attention_fwd
    kernel[grid](
        q, k, v, q_scale, k_scale, vs, mask, out,
        *q.stride(), *k.stride(), *v.stride(),
        *q_scale.stride(), *k_scale.stride(), *(vs.stride() if quant_pv else (0, 0, 0)),
        *mask_strides, *out.stride(),
        heads_q, heads_q // heads_k, n_q, n_k, head_dim, sm_scale * LOG2E, causal_offset, window_left,
        IS_CAUSAL=is_causal, WINDOW=is_causal and window_left >= 0, MASK_KIND=mask_kind, QUANT_PV=quant_pv,
        P_ROW_BLOCK=p_scale == "row_block",
        UPCAST_16BIT_DOT=_INTERPRETED and v.dtype == torch.bfloat16,
        BLOCK_N=KV_BLOCK_SIZE, BLOCK_D=_block_d(head_dim),
    )
    return out
