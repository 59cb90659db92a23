"""INT-FlashAttention forward kernel in Triton (Chen et al. 2024, arXiv 2409.16997).

One program computes BLOCK_M query rows of one (batch, query head). Q·Kᵀ is an INT8 GEMM with INT32
accumulation, dequantized once per tile by the per-token scales of Q and K (without a mask, the query's
scale, with sm_scale·log2 e folded in, enters the exp2 argument through one FFMA instead). The online
softmax runs in base 2.
P·V takes one of three formats: full INT8 (P quantized to INT8 with the fixed scale 1/127 or per row
block, V per channel), FP8 (P·448 and V in e4m3, SageAttention2's), or 16-bit (the paper's half-INT8).

Written for the SM's pipes (``benchmarks/pipe_model.py`` models them from the SASS): P is rounded to
INT8 with an FFMA and a magic number (no F2I on the 16/clock unit), quantized P·V products add up in a
second accumulator (INT32, or the FP8 GEMM's fp32) that is folded into the fp32 one only when a row
maximum grows, the accumulator is rescaled only then, full key blocks carry no bounds masks, and V
arrives sequence-major (``quantize.sequence_major``) so Hopper's INT8/FP8 ``wgmma`` reads it directly.

``intfa_compile.cpu_attention`` is this kernel's arithmetic in PyTorch; the two must stay in step
(same block size along the keys, same order of the fp32 scalings, same roundings of P).
"""

from __future__ import annotations

import contextvars
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from intfa_compile import pv_formats
from intfa_compile.attention_call import AttentionCall
from intfa_compile.key_splits import combine_key_splits, key_splits, split_keys_evenly
from intfa_compile.numerics import (
    BF16_MASK_FLOOR_BITS,
    FP32_LOWEST,
    FP32_TINY,
    INT8_MAX,
    KV_BLOCK_AUTOTUNE,
    LOG2E,
    P_DEQUANT_FIXED,
    PV_FP8_FOLD_BLOCKS,
    default_kv_block,
    folds_query_scale,
    padded_head_dim,
)

_MASK_NONE, _MASK_BOOL, _MASK_ADDITIVE = 0, 1, 2
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Triton reads module globals only when they are constexpr.
_INT8_MAX = tl.constexpr(float(INT8_MAX))
_LOG2E = tl.constexpr(LOG2E)
_P_DEQUANT_FIXED = tl.constexpr(P_DEQUANT_FIXED)
_FP32_LOWEST = tl.constexpr(FP32_LOWEST)
_BF16_MASK_FLOOR_BITS = tl.constexpr(BF16_MASK_FLOOR_BITS)
_BF16_NEG_INF_BITS = tl.constexpr(-128)  # 0xFF80 as an int16
_FP32_ROUNDING_MAGIC = tl.constexpr(1.5 * 2.0**23)
_FP64_ROUNDING_MAGIC = tl.constexpr(1.5 * 2.0**52)
_FP32_MAGIC_BITS = tl.constexpr(0x4B400000)  # the bits of 1.5·2²³
_FP32_TINY = tl.constexpr(FP32_TINY)
_PV_FP8_FOLD_BLOCKS = tl.constexpr(PV_FP8_FOLD_BLOCKS)


@triton.jit
def _round_to_bf16(x):
    """fp32 → nearest bf16 (ties to even), kept in fp32; for finite x and ±inf (a NaN may come back as inf)."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.to(tl.float32, bitcast=True)


@triton.jit
def _scores(q, k, qs, ks, MAGIC_I2F: tl.constexpr = False, FOLD_Q_SCALE: tl.constexpr = False):
    """INT8·INT8 → INT32 scores of one tile, and their dequantized base-2 logits (fp32); with ``FOLD_Q_SCALE``
    the logits without the query's scale (``_exp2_arg`` applies it).

    ``MAGIC_I2F`` converts INT32 → fp32 without the conversion unit: an integer add puts x into the low
    mantissa bits of 1.5·2²³ and a float subtract removes it, exact for |x| < 2²² — one tile's Q·Kᵀ is at
    most 127²·256 < 2²² for head dims up to 256. On Ampere the plain conversion is ``I2F`` on the 16/clock
    unit; on Hopper it is ``I2FP`` on the ALU, where the two-instruction form only costs issue slots.
    """
    qk = tl.dot(q, k, out_dtype=tl.int32)
    if MAGIC_I2F:
        qk_f = (qk + _FP32_MAGIC_BITS).to(tl.float32, bitcast=True) - _FP32_ROUNDING_MAGIC
    else:
        qk_f = qk.to(tl.float32)
    if FOLD_Q_SCALE:
        return qk, qk_f * ks[None, :]
    return qk, qk_f * qs[:, None] * ks[None, :]


@triton.jit
def _exp2_arg(t, qs, neg_max, INTERPRETER: tl.constexpr):
    """t · qs − qs · m as one FFMA (``neg_max`` = −(m · qs), per row): the base-2 softmax exponent of scores ``t``
    kept without the query's scale. Folding the scale here saves one multiply per score; it is exact up to that
    FFMA's single rounding (the interpreter, without a fused multiply-add, adds in fp64)."""
    if INTERPRETER:
        return (t.to(tl.float64) * qs.to(tl.float64) + neg_max.to(tl.float64)).to(tl.float32)
    return tl.fma(t, qs, neg_max)


@triton.jit
def _rescale_factor(m_i, m_new, m_safe, qs, FOLD_Q_SCALE: tl.constexpr, INTERPRETER: tl.constexpr):
    """exp2(m_old − m_new) per row, what the accumulator and row sums are multiplied by when maxima move.

    With ``FOLD_Q_SCALE`` the maxima lack the query scale and the exponent is the same FFMA as P's; it is
    exactly 1 where the maximum stood still (the FFMA would leave the rounding of m · qs).
    """
    if FOLD_Q_SCALE:
        return tl.where(m_new == m_i, 1.0, tl.math.exp2(_exp2_arg(m_i, qs, -(m_safe * qs), INTERPRETER)))
    return tl.math.exp2(m_i - m_safe)


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
def round_to_int8(p, scale, INTERPRETER: tl.constexpr):
    """round(p · scale) to INT8, ties to even, for p · scale in [0, 127.5): no F2I on the GPU.

    One FFMA adds 1.5·2²³ to the exact product and rounds once: fp32 numbers in [2²³, 2²⁴) are spaced by 1, so
    the sum is the nearest integer to p · scale above 1.5·2²³, held in the low mantissa bits; its low byte is
    the INT8 value (the magic number's low byte is 0 and the value is below 128). Packing the bytes is integer
    work on the ALU, where F2I would cost one slot of the 16/clock conversion unit per score, as many as exp2.
    The interpreter has no fused multiply-add, so it adds in fp64, where the product is exact.
    """
    if INTERPRETER:
        exact = p.to(tl.float64) * scale + _FP64_ROUNDING_MAGIC
        return (exact - _FP64_ROUNDING_MAGIC).to(tl.int8)
    rounded = tl.fma(p, scale, _FP32_ROUNDING_MAGIC)
    return rounded.to(tl.int32, bitcast=True).to(tl.int8)


@triton.jit
def round_to_float8(x, MANTISSA: tl.constexpr, BIAS: tl.constexpr):
    """x ≥ 0, below the type's largest value → the nearest value of the float8 type with ``MANTISSA`` mantissa
    bits and exponent bias ``BIAS`` (ties to even), kept in fp32; the interpreter's stand-in for
    ``cvt.rn.satfinite`` (e4m3: 3 and 7, e5m2: 2 and 15), whose fp32 → float8 cast loses the carry when rounding
    reaches the next power of two (1.99 becomes 1.0 in e4m3). Normal values keep ``MANTISSA`` bits; below
    2^(1 − BIAS) the grid is 2^(1 − BIAS − MANTISSA)."""
    DROPPED: tl.constexpr = 23 - MANTISSA
    HALF_ULP: tl.constexpr = (1 << (DROPPED - 1)) - 1
    KEPT: tl.constexpr = (0xFFFFFFFF << DROPPED) & 0xFFFFFFFF
    MIN_NORMAL: tl.constexpr = 2.0 ** (1 - BIAS)
    SUBNORMAL_STEPS: tl.constexpr = 2.0 ** (BIAS - 1 + MANTISSA)
    bits = x.to(tl.uint32, bitcast=True)
    normal = ((bits + HALF_ULP + ((bits >> DROPPED) & 1)) & KEPT).to(tl.float32, bitcast=True)
    subnormal = ((x * SUBNORMAL_STEPS + _FP32_ROUNDING_MAGIC) - _FP32_ROUNDING_MAGIC) / SUBNORMAL_STEPS
    return tl.where(x < MIN_NORMAL, subnormal, normal)


@triton.jit
def _bias_in_base2(bias):
    """An additive mask's entries as the base-2 scores take them (``cpu_attention.additive_mask_in_base2``): times
    log2(e), clamped at fp32's lowest, −inf kept. An fp16 entry (at most 65504 in magnitude) cannot overflow there,
    so it takes no clamp; a bfloat16 one is floored on its 16 bits before the multiply (``BF16_MASK_FLOOR``). The
    fp32 clamp of a 16-bit 2-D mask spilled the 64×128 tile at d = 128 on Triton 3.9 (2-5 registers)."""
    if bias.dtype == tl.float16:
        return bias.to(tl.float32) * _LOG2E
    if bias.dtype == tl.bfloat16:  # floored on its bits: finite values below the floor lie between it and −inf's
        bits = bias.to(tl.int16, bitcast=True)
        bits = tl.where((bits > _BF16_MASK_FLOOR_BITS) & (bits < _BF16_NEG_INF_BITS), _BF16_MASK_FLOOR_BITS, bits)
        return bits.to(tl.bfloat16, bitcast=True).to(tl.float32) * _LOG2E
    bias = bias.to(tl.float32)  # NaN propagates, as the twin's clamp and eager softmax do
    return tl.where(bias == float("-inf"), bias, tl.maximum(bias * _LOG2E, _FP32_LOWEST, tl.PropagateNan.ALL))


@triton.jit
def _attention_block(
    acc, acc_pv, pending, l_i, m_i, q, qs, offs_m, start_n,
    k_base, v_base, ks_base, mask_base,
    stride_kn, stride_kd, stride_vn, stride_vd, stride_ksn, stride_mm, stride_mn,
    N_Q, N_K, HEAD_DIM, causal_offset, window_left,
    CAUSAL_MASK: tl.constexpr, WINDOW: tl.constexpr, MASK_KIND: tl.constexpr, QUANT_PV: tl.constexpr,
    PV_FP8: tl.constexpr, P_LOG2_SCALE: tl.constexpr, P_ROW_BLOCK: tl.constexpr, UPCAST_16BIT_DOT: tl.constexpr,
    INTERPRETER: tl.constexpr,
    MAGIC_I2F: tl.constexpr, FOLD_Q_SCALE: tl.constexpr, BOUNDS: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, LAZY_PV: tl.constexpr, FOLD_BLOCKS: tl.constexpr, k_desc, v_desc, TMA: tl.constexpr,
    V_SEQUENCE_MAJOR: tl.constexpr,
):
    """One KV block of the online softmax: update the accumulators, row sums and running maxima.

    ``TMA``: K and V arrive through the tensor descriptors ``k_desc`` (N_K, HEAD_DIM) and ``v_desc``
    ((HEAD_DIM, N_K) when ``V_SEQUENCE_MAJOR``, else (N_K, HEAD_DIM)) instead of pointer loads; the
    descriptors fill what lies past N_K and HEAD_DIM with zeros, as the masked loads do.

    ``BOUNDS`` masks keys at and past N_K; the loop over full blocks leaves it off (no per-score select).
    The mask is read at row min(query, N_Q − 1): the tile's rows past N_Q must not read past its end.
    ``INTERPRETER``: running in Triton's interpreter, which has no fused multiply-add and rounds fp32 → e4m3
    wrongly at carries; those two steps are then emulated exactly.

    The fp32 accumulator and the row sums are rescaled only when some row of the tile raised its maximum
    (otherwise every alpha is exactly 1). With ``LAZY_PV`` (the fixed P scale, head dims ≤ 128) the P·V
    products of the blocks in between add up in a second accumulator (``acc_pv``: INT32 for INT8 P·V, the
    fp32 tensor-core accumulator for FP8) folded into ``acc`` at such a rescale or every ``FOLD_BLOCKS``
    blocks (INT32 overflow; the FP8 accumulator's reduced precision): no per-block conversion of P·V.

    ``PV_FP8`` (a float8 V, as pv_format="fp8", SageAttention2's P·V): P scaled by 2^``P_LOG2_SCALE`` (the P·V
    record's ``p_log2_scale``: 448 for e4m3, folded into the exponent, so P spans the type's range; the row sums
    carry the same factor, which cancels in acc / l) and rounded to V's float8 type, V in it with per-channel
    scales, an FP8 GEMM with fp32 accumulation.
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < N_K
    d_ok = offs_d < HEAD_DIM
    k_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    if TMA:
        k = k_desc.load([start_n, 0]).T
    elif BOUNDS:
        k = tl.load(k_ptrs, mask=n_ok[None, :] & d_ok[:, None], other=0)
    else:
        k = tl.load(k_ptrs, mask=d_ok[:, None], other=0)
    if BOUNDS:
        ks = tl.load(ks_base + offs_n * stride_ksn, mask=n_ok, other=0.0)
    else:
        ks = tl.load(ks_base + offs_n * stride_ksn)
    _, s = _scores(q, k, qs, ks, MAGIC_I2F, FOLD_Q_SCALE)
    if MASK_KIND != 0:
        mask_ptrs = mask_base + tl.minimum(offs_m, N_Q - 1)[:, None] * stride_mm + offs_n[None, :] * stride_mn
        if MASK_KIND == 1:
            keep = tl.load(mask_ptrs, mask=n_ok[None, :], other=0)
            s = tl.where(keep != 0, s, float("-inf"))
        else:
            s = s + _bias_in_base2(tl.load(mask_ptrs, mask=n_ok[None, :], other=0.0))
    if CAUSAL_MASK:
        diagonal = offs_m[:, None] + causal_offset
        s = tl.where(offs_n[None, :] <= diagonal, s, float("-inf"))
        if WINDOW:
            s = tl.where(offs_n[None, :] >= diagonal - window_left, s, float("-inf"))
    if BOUNDS:
        s = tl.where(n_ok[None, :], s, float("-inf"))

    # With FOLD_Q_SCALE, s and the maxima lack the (positive) per-row query scale, which leaves row maxima
    # where they are; it enters the exponent through one FFMA per score.
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    if FOLD_Q_SCALE:
        neg_max = -(m_safe * qs) + P_LOG2_SCALE if PV_FP8 else -(m_safe * qs)
    else:
        shift = m_safe - P_LOG2_SCALE if PV_FP8 else m_safe
    # `!=` rather than `>`: a NaN maximum also rescales, so NaN reaches the accumulator as in eager attention.
    grew = tl.max((m_new != m_i).to(tl.int32), 0) != 0
    if LAZY_PV:
        if grew or pending >= FOLD_BLOCKS:
            alpha = _rescale_factor(m_i, m_new, m_safe, qs, FOLD_Q_SCALE, INTERPRETER)
            if PV_FP8:
                acc = (acc + acc_pv) * alpha[:, None]
            else:
                acc = (acc + acc_pv.to(tl.float32) * _P_DEQUANT_FIXED) * alpha[:, None]
            acc_pv = tl.zeros_like(acc_pv)
            l_i = l_i * alpha
            pending = 0
    elif grew:
        alpha = _rescale_factor(m_i, m_new, m_safe, qs, FOLD_Q_SCALE, INTERPRETER)
        acc = acc * alpha[:, None]
        l_i = l_i * alpha
    if FOLD_Q_SCALE:
        p = tl.math.exp2(_exp2_arg(s, qs[:, None], neg_max[:, None], INTERPRETER))
    else:
        p = tl.math.exp2(s - shift[:, None])
    l_i = l_i + tl.sum(p, 1)

    v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    if TMA and V_SEQUENCE_MAJOR:
        v = v_desc.load([0, start_n]).T
    elif TMA:
        v = v_desc.load([start_n, 0])
    elif BOUNDS:
        v = tl.load(v_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
    if PV_FP8:
        p8 = (round_to_float8(p, v.dtype.fp_mantissa_width, v.dtype.exponent_bias) if INTERPRETER else p).to(v.dtype)
        if LAZY_PV:
            acc_pv = tl.dot(p8, v, acc=acc_pv, out_dtype=tl.float32)
            pending += 1
        else:
            acc = acc + tl.dot(p8, v, out_dtype=tl.float32)
    elif LAZY_PV:
        acc_pv = tl.dot(round_to_int8(p, _INT8_MAX, INTERPRETER), v, acc=acc_pv, out_dtype=tl.int32)
        pending += 1
    elif QUANT_PV and not P_ROW_BLOCK:
        pv = tl.dot(round_to_int8(p, _INT8_MAX, INTERPRETER), v, out_dtype=tl.int32).to(tl.float32)
        acc = acc + pv * _P_DEQUANT_FIXED
    elif QUANT_PV:
        p_max = tl.max(p, 1)
        inv = tl.where(p_max > 0, _INT8_MAX / p_max, 0.0)
        pv = tl.dot(round_to_int8(p, inv[:, None], INTERPRETER), v, out_dtype=tl.int32).to(tl.float32)
        acc = acc + pv * (p_max / _INT8_MAX)[:, None]
    elif v.dtype == tl.float32:
        # fp32 V: an IEEE fp32 GEMM, not TF32, so P keeps its fp32 value as in the CPU implementation.
        acc = acc + tl.dot(p, v, input_precision="ieee", out_dtype=tl.float32)
    elif UPCAST_16BIT_DOT:
        # Triton's interpreter multiplies bf16 wrongly and truncates fp32 → bf16; round P to bf16 (nearest
        # even, as the GPU does) and multiply in fp32, which holds 16-bit × 16-bit products exactly.
        p16 = _round_to_bf16(p)
        acc = acc + tl.dot(p16, v.to(tl.float32), input_precision="ieee", out_dtype=tl.float32)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc=acc, out_dtype=tl.float32)
    return acc, acc_pv, pending, l_i, m_new


def autotune_configs() -> list[triton.Config]:
    """Tiles worth trying on Ampere and Hopper (``prune_configs`` keeps those fit for a head dim and the key
    block asked for); under the interpreter, one 64-row tile per key block size the tests compare.

    BLOCK_N is part of the result (P is quantized against the running maximum of the blocks seen so far), so a
    launch fixes it (``numerics.default_kv_block`` unless the caller chose one, as the CPU implementation does)
    and only the tiles of that size compete; with ``KV_BLOCK_AUTOTUNE`` the autotuner picks it by timing too.
    """
    if _INTERPRETED:
        return [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=4, num_stages=1)
                for block_m in (64, DECODE_BLOCK_M) for block_n in INTERPRETER_KV_BLOCKS]
    return [
        triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
        for block_m in (DECODE_BLOCK_M, 64, 128)
        for block_n in (64, 128)
        for warps in (4, 8)
        for stages in (1, 2, 3, 4)
        if stages > 1 or block_m == 64
    ]


DECODE_BLOCK_M = 16
"""Query rows of the tile for up to 16 queries per head (``N_Q_BUCKET`` ≤ 16: decode steps), where a 64-row tile
would compute 63 rows of nothing for one query: the smallest M of an INT8 ``mma.sync`` (Hopper's ``wgmma`` needs
64 rows, so this tile runs on the Ampere-style tensor-core instructions there too)."""


INTERPRETER_KV_BLOCKS = (16, 32, 64, 128)
"""Key block sizes the interpreter's configs offer (each test asks for one; by default ``default_kv_block``)."""


TUNED_TRITON = (3, 8)
"""The Triton release whose ptxas the tile rule of ``prune_configs`` was tuned on (every kept tile spill-free and
the 128-row tiles the per-pipe model prefers). Other releases allocate registers differently: on 3.6 and 3.9
the 128-row tiles at a 128-wide head spill 1–59 registers (``inspect_sass.py --spill-sweep``, results in
``benchmarks/results/spill-sweep-*``), so they get ``_register_safe_tiles``."""


def triton_release(version: str = triton.__version__) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Keep the tiles of the key block size asked for (``KV_BLOCK``; 0 lets the autotuner choose) that compile
    without spills on the installed Triton (``benchmarks/inspect_sass.py --spill-sweep``); up to 16 queries per
    head, the 16-row decode tiles only.

    On ``TUNED_TRITON``: 128 rows take 8 warps (one warpgroup per 64 rows): on 4 warps the accumulators spill
    at d = 128. Head dims up to 128: two warpgroups on 64 rows would each repeat the Q·Kᵀ GEMM, so 64 rows
    take 4 warps; one stage is for the widest head only. A 256-wide head fits shared memory with 64 rows and at
    most two stages, on 8 warps (on 4 the 64×256 fp32 accumulator spills with quantized P·V, and with 16-bit
    P·V on sm_80). 128 keys per block at a 256-wide head spill (the op refuses that launch on CUDA:
    ``passes.guards``); at 128 see ``_keys_128_fit``. Other Triton releases: ``_register_safe_tiles``.
    """
    kv_block = kwargs.get("KV_BLOCK", 0)
    if kv_block:
        configs = [c for c in configs if c.kwargs["BLOCK_N"] == kv_block]
        if not configs:
            raise ValueError(f"no kernel tile has {kv_block} keys per block")
    decode = named_args.get("N_Q_BUCKET", kwargs.get("N_Q_BUCKET", DECODE_BLOCK_M + 1)) <= DECODE_BLOCK_M
    configs = [c for c in configs if (c.kwargs["BLOCK_M"] == DECODE_BLOCK_M) == decode] or configs
    if _INTERPRETED:
        return configs[:1]
    if decode:
        return [c for c in configs if c.num_warps == 4 and c.num_stages > 1] or configs[:1]
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 0))
    # 128 keys only where the shape rule would choose them (the others spill: passes.guards refuses a fixed 128
    # there, and the autotuner, with KV_BLOCK 0, does not try them).
    widest = default_kv_block(block_d, pv_formats.FP8 if kwargs.get("PV_FP8", False) else pv_formats.INT8)
    configs = [c for c in configs if c.kwargs["BLOCK_N"] <= widest] or configs
    if block_d >= 256:
        kept = [c for c in configs if c.kwargs["BLOCK_M"] == 64 and c.kwargs["BLOCK_N"] == 64 and c.num_stages <= 2
                and c.num_warps == 8]
    elif triton_release() != TUNED_TRITON or kwargs.get("MASK_KIND", _MASK_NONE) != _MASK_NONE \
            or kwargs.get("WINDOW", False):
        kept = _register_safe_tiles(configs, block_d, kwargs.get("MASK_KIND", _MASK_NONE), kwargs.get("WINDOW", False))
    else:
        kept = [c for c in configs if c.num_stages > 1 and c.num_warps == (8 if c.kwargs["BLOCK_M"] == 128 else 4)
                and (c.kwargs["BLOCK_N"] < 128 or block_d < 128 or _keys_128_fit(c, kwargs))]
    return kept or configs[:1]


def _register_safe_tiles(configs: list[triton.Config], block_d: int, mask_kind: int, window: bool
                         ) -> list[triton.Config]:
    """The tiles where the tuned rule's spill, up to 128-wide heads: on a Triton other than ``TUNED_TRITON``, and on
    it for launches with a mask or a sliding window (whose extra loads and selects push the 128-row tiles over the
    registers even on 3.8: 1–236 spilled). 64 query rows only, on 4 warps for 64 keys per block and on 8 for 128 (two
    warpgroups share the 64×128 score tile: Q·Kᵀ and its exps run twice) or with an additive mask (its fp16 tile
    spills FP8 P·V's 4-warp one on 3.9), but for a boolean mask at heads up to 64 (one warpgroup: 4 warps), two or
    three stages (three with a mask or window: two spill on sm_80 on 3.9). Heads up to 64 without a mask or window
    keep the tuned rule's tiles, which fit on every release. ``inspect_sass.py --spill-sweep`` checks every launch
    kind; those left spilling are listed in ``tests/test_kernel_codegen.py`` (``KNOWN_SPILLS``)."""
    masked = mask_kind != _MASK_NONE or window
    if block_d <= 64 and not masked:
        return [c for c in configs if c.num_stages > 1 and c.num_warps == (8 if c.kwargs["BLOCK_M"] == 128 else 4)]
    one_warpgroup = block_d <= 64 and mask_kind == _MASK_BOOL and not window

    def warps(config: triton.Config) -> int:
        if one_warpgroup:  # 8 spill 7-9 registers on 3.6 (sm_80, 16-bit P·V); 4 fit on every release
            return 4
        return 8 if config.kwargs["BLOCK_N"] == 128 or mask_kind == _MASK_ADDITIVE else 4

    return [c for c in configs if c.kwargs["BLOCK_M"] == 64 and c.num_stages in ((3,) if masked else (2, 3))
            and c.num_warps == warps(c)]


def _keys_128_fit(config: triton.Config, kwargs: dict) -> bool:
    """Whether a 128-key tile compiles without spills at a 128-wide head (Triton 3.8, every variant and tile
    checked with ``inspect_sass.py --spill-sweep``): 16-bit P·V with two stages on sm_80 (three or more spill 1–6
    registers in the causal loops) and with any on sm_90; INT8 P·V on 128 rows and 8 warps with three stages or
    more (two spill 3–9 registers, as 64 rows on 4 warps do); FP8 P·V never (13–48 spilled registers in every
    tile: the e4m3 P and its fp32 accumulator do not fit beside the other)."""
    if not kwargs.get("QUANT_PV", False):
        return config.num_stages == 2 or not kwargs.get("MAGIC_I2F", False)
    if kwargs.get("PV_FP8", False):
        return False
    return config.kwargs["BLOCK_M"] == 128 and config.num_stages >= 3


def untimed_under_interpreter(kernel_call, quantiles) -> list[float]:
    """The autotuner's ``do_bench`` under Triton's interpreter: no timing (it would mean nothing, and there is no
    driver to time with). ``prune_configs`` leaves one config there, which Triton 3.8 runs untimed but 3.6 still
    benchmarks through the active driver ("0 active drivers" on a CPU-only machine)."""
    return [0.0 for _ in quantiles]


AUTOTUNE_BENCH = untimed_under_interpreter if _INTERPRETED else None
"""``do_bench`` for this module's autotuned kernels (and the FP8 baseline's): Triton's own on a GPU."""


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
    key=["N_Q_BUCKET", "N_K_BUCKET", "HEAD_DIM", "GROUP", "IS_CAUSAL", "WINDOW", "MASK_KIND", "QUANT_PV", "PV_FP8",
         "KV_BLOCK", "SPLIT", "TMA"],
    prune_configs_by={"early_config_prune": prune_configs},
    do_bench=AUTOTUNE_BENCH,
)
@triton.jit
def int8_attention_fwd(
    Q, K, V, QS, KS, VS, MASK, OUT, ACC_PART, STAT_PART,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_qsb, stride_qsh, stride_qsm,
    stride_ksb, stride_ksh, stride_ksn,
    stride_vsb, stride_vsh, stride_vsd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_ob, stride_oh, stride_om, stride_od,
    HEADS_Q, GROUP, N_Q, N_K, N_Q_BUCKET, N_K_BUCKET, HEAD_DIM, qk_scale, causal_offset, window_left, SPLIT_KEYS,
    SPLIT: tl.constexpr, IS_CAUSAL: tl.constexpr, WINDOW: tl.constexpr, MASK_KIND: tl.constexpr, QUANT_PV: tl.constexpr,
    PV_FP8: tl.constexpr, P_LOG2_SCALE: tl.constexpr, P_ROW_BLOCK: tl.constexpr, UPCAST_16BIT_DOT: tl.constexpr,
    INTERPRETER: tl.constexpr,
    MAGIC_I2F: tl.constexpr, FOLD_Q_SCALE: tl.constexpr, KV_BLOCK: tl.constexpr, TMA: tl.constexpr,
    V_SEQUENCE_MAJOR: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
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
    if FOLD_Q_SCALE:  # a zero scale (rows past N_Q) would turn a masked −inf score into NaN in the FFMA
        qs = tl.where(qs == 0.0, _FP32_TINY, qs)

    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    ks_base = KS + b * stride_ksb + h_kv * stride_ksh
    mask_base = MASK + b * stride_mb + h * stride_mh
    k_desc = k_base  # placeholders, never read without TMA
    v_desc = v_base
    if TMA:  # one (batch, KV head)'s K and V; the launcher checked the alignment TMA needs
        k_desc = tl.make_tensor_descriptor(k_base, shape=[N_K, HEAD_DIM], strides=[stride_kn, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        if V_SEQUENCE_MAJOR:
            v_desc = tl.make_tensor_descriptor(v_base, shape=[HEAD_DIM, N_K], strides=[stride_vd, 1],
                                               block_shape=[BLOCK_D, BLOCK_N])
        else:
            v_desc = tl.make_tensor_descriptor(v_base, shape=[N_K, HEAD_DIM], strides=[stride_vn, 1],
                                               block_shape=[BLOCK_N, BLOCK_D])

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # A second P·V accumulator, folded into acc when a maximum grows; at head dims above 128 its registers
    # (as many as acc's) would spill, so there P·V is added block by block.
    LAZY_PV: tl.constexpr = QUANT_PV and (not P_ROW_BLOCK) and BLOCK_D <= 128
    if LAZY_PV and PV_FP8:
        acc_pv = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    elif LAZY_PV:
        acc_pv = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.int32)
    else:
        acc_pv = tl.zeros([1, 1], dtype=tl.int32)
    pending = 0
    # INT32: blocks of sums that fit below 2³¹ (each adds at most 127·127·BLOCK_N per element). FP8: a bound on
    # how many blocks the tensor cores' fp32 accumulator (about 22 significant bits on Hopper) sums alone.
    FOLD_BLOCKS: tl.constexpr = _PV_FP8_FOLD_BLOCKS if PV_FP8 else (2**31 - 1) // (127 * 127 * BLOCK_N)
    diagonal_lo, hi = causal_block_range(pid_m, causal_offset, N_K, IS_CAUSAL, BLOCK_M, BLOCK_N)
    lo = 0
    if WINDOW:  # sliding window: blocks left of the first row's window are skipped, every other one is masked
        lo = tl.minimum(tl.maximum(pid_m * BLOCK_M + causal_offset - window_left, 0) // BLOCK_N * BLOCK_N, hi)
        diagonal_lo = lo
    if SPLIT:  # this program's range of keys (SPLIT_KEYS is a multiple of BLOCK_N: ranges start on block edges)
        split = tl.program_id(2)
        lo = tl.maximum(lo, split * SPLIT_KEYS)
        hi = tl.minimum(hi, (split + 1) * SPLIT_KEYS)
    # Full key blocks below the diagonal need no mask at all; the rest (the diagonal band, the partial last
    # block) are masked by position.
    full_hi = tl.minimum(diagonal_lo, N_K // BLOCK_N * BLOCK_N)
    if SPLIT:
        full_hi = tl.minimum(full_hi, hi)
    for start_n in range(lo, full_hi, BLOCK_N):
        acc, acc_pv, pending, l_i, m_i = _attention_block(
            acc, acc_pv, pending, l_i, m_i, q, qs, offs_m, start_n,
            k_base, v_base, ks_base, mask_base,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_ksn, stride_mm, stride_mn,
            N_Q, N_K, HEAD_DIM, causal_offset, window_left,
            False, False, MASK_KIND, QUANT_PV, PV_FP8, P_LOG2_SCALE, P_ROW_BLOCK, UPCAST_16BIT_DOT, INTERPRETER,
            MAGIC_I2F,
            FOLD_Q_SCALE, False, BLOCK_N, BLOCK_D, LAZY_PV, FOLD_BLOCKS, k_desc, v_desc, TMA, V_SEQUENCE_MAJOR,
        )
    for start_n in range(tl.maximum(full_hi, lo), hi, BLOCK_N):
        acc, acc_pv, pending, l_i, m_i = _attention_block(
            acc, acc_pv, pending, l_i, m_i, q, qs, offs_m, start_n,
            k_base, v_base, ks_base, mask_base,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_ksn, stride_mm, stride_mn,
            N_Q, N_K, HEAD_DIM, causal_offset, window_left,
            IS_CAUSAL, WINDOW, MASK_KIND, QUANT_PV, PV_FP8, P_LOG2_SCALE, P_ROW_BLOCK, UPCAST_16BIT_DOT, INTERPRETER,
            MAGIC_I2F,
            FOLD_Q_SCALE, True, BLOCK_N, BLOCK_D, LAZY_PV, FOLD_BLOCKS, k_desc, v_desc, TMA, V_SEQUENCE_MAJOR,
        )

    if LAZY_PV and PV_FP8:
        acc = acc + acc_pv
    elif LAZY_PV:
        acc = acc + acc_pv.to(tl.float32) * _P_DEQUANT_FIXED
    if SPLIT:
        # This range's part for ``key_splits.combine_key_splits``: the unnormalized output, the base-2 maximum
        # (with the query scale, where the loop kept it apart) and the row sum; V's scales come after the merge.
        part = (split * tl.num_programs(1) + pid_bh) * N_Q + offs_m
        tl.store(ACC_PART + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=m_ok[:, None] & d_ok[None, :])
        tl.store(STAT_PART + 2 * part, m_i * qs if FOLD_Q_SCALE else m_i, mask=m_ok)
        tl.store(STAT_PART + 2 * part + 1, l_i, mask=m_ok)
    else:
        out = acc / tl.where(l_i == 0, 1.0, l_i)[:, None]
        if QUANT_PV:
            vs = tl.load(VS + b * stride_vsb + h_kv * stride_vsh + offs_d * stride_vsd, mask=d_ok, other=0.0)
            out = out * vs[None, :]
        o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
        if INTERPRETER:
            if OUT.dtype.element_ty == tl.bfloat16:
                # The interpreter's fp32 → bf16 cast truncates (a GPU's rounds to nearest even, as torch does):
                # round first, so the cast below is exact (NaN kept as it is).
                out = tl.where(out != out, out, _round_to_bf16(out))
        tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def length_bucket(n: int) -> int:
    """The power of two at or above ``n``: what the autotuner keys sequence lengths on, so a new length within a
    bucket reuses the tuned tile instead of benchmarking every config again (the kernel itself never reads it)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def tensor_descriptors_fit(k: Tensor, v: Tensor) -> bool:
    """Whether K and V meet what a TMA tensor descriptor needs of the memory it reads: unit stride along the
    loaded rows' contiguous axis (head dim for K; keys or head dim for V), other strides and the start address
    multiples of 16 bytes (CUDA driver API, ``cuTensorMapEncodeTiled``). Sequence-major INT8/e4m3 V needs
    the key count to be a multiple of 16; where these fail the kernel loads through pointers."""

    def fits(x: Tensor, contiguous_axis: int) -> bool:
        if x.stride(contiguous_axis) != 1 or (x.data_ptr() % 16 if x.device.type != "meta" else 0):
            return False
        others = [x.stride(axis) for axis in range(x.dim()) if axis != contiguous_axis % x.dim()]
        return all(stride * x.element_size() % 16 == 0 for stride in others)

    v_axis = -2 if v.stride(-2) == 1 and v.shape[-2] > 1 else -1
    return fits(k, -1) and fits(v, v_axis)


def launch_arguments(
    call: AttentionCall,
    out: Tensor,
    target_arch: int | None = None,
    parts: tuple[Tensor, Tensor] | None = None,
    split_keys: int = 0,
) -> tuple[tuple, dict]:
    """The kernel's positional arguments and constexpr keywords for one launch (autotuned ones excluded).

    One place builds them, so the launch and ``benchmarks/inspect_sass.py`` (which compiles the kernel
    offline with the specialization Triton derives from these very arguments) cannot drift apart.
    ``target_arch`` (e.g. 90) is the GPU the kernel is built for; by default, that of ``q``'s device.
    ``call.options.kv_block``: keys per block (the result depends on it); 0 for ``default_kv_block``,
    ``KV_BLOCK_AUTOTUNE`` to let the autotuner choose (under the interpreter, which times nothing, the rule again).
    ``parts``, the fp32 outputs (S, B, Hq, Nq, D) and (maximum, row sum) pairs (S, B, Hq, Nq, 2) of S key
    ranges, and ``split_keys``, keys per range: split-K, the grid's third axis walks the ranges
    (``intfa_compile.key_splits``). ``call.options.launch.tma_loads``: load K and V through tensor descriptors
    where the target has TMA (sm_90 on) and ``tensor_descriptors_fit`` (the interpreter runs them too); the
    result is the same.
    """
    q, k, v, q_scale, k_scale, v_scale, attn_mask = call.tensors
    is_causal, sm_scale, p_scale = call.is_causal, call.sm_scale, call.options.p_scale
    causal_offset, window_left, kv_block = call.causal_offset, call.window_left, call.options.kv_block
    if target_arch is None:
        major, minor = torch.cuda.get_device_capability(q.device) if q.device.type == "cuda" else (9, 0)
        target_arch = 10 * major + minor
    batch, heads_q, n_q, head_dim = q.shape
    heads_k, n_k = k.shape[1], k.shape[2]
    quant_pv = v_scale is not None
    vs = v_scale if quant_pv else q_scale  # placeholder pointer, never read
    if attn_mask is None:
        mask_kind, mask, mask_strides = _MASK_NONE, q_scale, (0, 0, 0, 0)
    else:
        mask = attn_mask.expand(batch, heads_q, n_q, n_k)  # broadcast by stride 0, no copy
        mask_kind = _MASK_BOOL if mask.dtype == torch.bool else _MASK_ADDITIVE
        mask_strides = mask.stride()
    acc_part, stat_part = parts if parts is not None else (q_scale, q_scale)  # placeholders, never read
    args = (
        q, k, v, q_scale, k_scale, vs, mask, out, acc_part, stat_part,
        *q.stride(), *k.stride(), *v.stride(),
        *q_scale.stride(), *k_scale.stride(), *(vs.stride() if quant_pv else (0, 0, 0)),
        *mask_strides, *out.stride(),
        heads_q, heads_q // heads_k, n_q, n_k, length_bucket(n_q), length_bucket(n_k), head_dim, sm_scale * LOG2E,
        causal_offset, window_left, split_keys if parts is not None else n_k,
    )
    constexprs = dict(
        SPLIT=parts is not None, IS_CAUSAL=is_causal, WINDOW=is_causal and window_left >= 0, MASK_KIND=mask_kind,
        QUANT_PV=quant_pv, PV_FP8=quant_pv and v.dtype.is_floating_point,  # a float8 V (the P·V record's)
        P_LOG2_SCALE=call.pv.p_log2_scale, P_ROW_BLOCK=p_scale == "row_block",
        UPCAST_16BIT_DOT=_INTERPRETED and v.dtype == torch.bfloat16, INTERPRETER=_INTERPRETED,
        FOLD_Q_SCALE=folds_query_scale(attn_mask, sm_scale),
        MAGIC_I2F=target_arch < 90,  # Ampere/Ada convert INT32 → fp32 on the 16/clock unit (I2F); Hopper on the ALU
        KV_BLOCK=0 if kv_block == KV_BLOCK_AUTOTUNE and not _INTERPRETED else call.block_n,
        TMA=call.options.launch.tma_loads and (target_arch >= 90 or _INTERPRETED) and tensor_descriptors_fit(k, v),
        V_SEQUENCE_MAJOR=v.stride(-2) == 1 and n_k > 1,
        BLOCK_D=padded_head_dim(head_dim),
    )
    return args, constexprs


def int8_flash_attention_triton(
    call: AttentionCall,
    out: Tensor,
    *,
    traceable: bool = False,
    splits: int | None = None,
) -> Tensor:
    """Launch the kernel for ``call`` into ``out`` (``intfa_compile.ops.int8_attention``; inputs unchecked).

    ``traceable`` launches through ``torch.library.wrap_triton``, so that torch.compile sees the kernel
    (inside the ``intfa::int8_attention_triton`` triton_op) instead of an opaque call. ``splits``: how many key
    ranges to split into (decode shapes; by default ``key_splits``' rule, which the CPU implementation shares).
    With ``call.options.launch.tma_loads``, K and V come through tensor descriptors where possible
    (``launch_arguments``), built in the kernel, in a scratch buffer from an allocator set for this launch only.
    """
    if out.numel() == 0:
        return out
    q, k = call.q, call.k
    batch, heads_q, n_q, head_dim = q.shape
    n_k, batch_heads = k.shape[2], batch * heads_q
    ranges, split_keys = key_splits(n_q, n_k, batch_heads) if splits is None else split_keys_evenly(n_k, splits)
    parts = None
    if ranges > 1:
        parts = (torch.empty(ranges, batch, heads_q, n_q, head_dim, dtype=torch.float32, device=q.device),
                 torch.empty(ranges, batch, heads_q, n_q, 2, dtype=torch.float32, device=q.device))
    args, constexprs = launch_arguments(call, out, parts=parts, split_keys=split_keys)

    def grid(meta: dict) -> tuple[int, int, int]:
        return (triton.cdiv(n_q, meta["BLOCK_M"]), batch_heads, ranges)

    kernel = torch.library.wrap_triton(int8_attention_fwd) if traceable else int8_attention_fwd
    if constexprs["TMA"]:
        contextvars.copy_context().run(_launch_with_scratch, kernel, grid, args, constexprs, q.device)
    else:
        kernel[grid](*args, **constexprs)
    if parts is not None:
        merged = combine_key_splits(parts[0], parts[1][..., 0], parts[1][..., 1])
        if call.v_scale is not None:
            merged = merged * call.v_scale.float().repeat_interleave(heads_q // k.shape[1], dim=1).unsqueeze(-2)
        out.copy_(merged)
    return out


def _launch_with_scratch(kernel, grid, args: tuple, constexprs: dict, device: torch.device) -> None:
    """Launch a kernel that builds tensor descriptors on the device, which need global scratch memory from
    ``triton.set_allocator``: set here, in the copied context the caller runs this in, so the process's own
    allocator (if any) is left as it was. Under torch.compile, Inductor's launcher sets one itself."""
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device=device))
    kernel[grid](*args, **constexprs)


def tuned_tiles() -> dict[tuple, dict[str, int]]:
    """The tile the autotuner chose for each key it has tuned (its ``key`` values, then the argument dtypes):
    BLOCK_M, BLOCK_N, warps and stages; what ``benchmarks/bench_attention.py`` records beside its timings."""
    return {key: {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
            for key, config in int8_attention_fwd.cache.items()}
