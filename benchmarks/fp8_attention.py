"""FP8 (e4m3) FlashAttention forward in Triton: the FP8 baseline of the speed table, for Hopper.

The same kernel on fp16/bf16 inputs is the 16-bit FlashAttention baseline (``flash_attention_16bit``).

It computes what FlashAttention-3's FP8 forward computes (Shah et al. 2024, arXiv 2407.08608): Q, K
and V in e4m3 with one descale factor per (batch, head), Q·Kᵀ as an FP8 GEMM with fp32 accumulation,
the online softmax in fp32, P (values in [0, 1] after the running-max shift) rounded to e4m3 without
a scale, and P·V as a second FP8 GEMM. Hopper's FP8 ``wgmma`` takes both operands K-major, so V is
stored with the sequence axis contiguous (``quantize_fp8`` lays it out so; the kernel reads any
strides). No masks, no GQA: it is a speed and accuracy yardstick for the benchmark, not a product path.

``fp8_attention_reference`` is the same arithmetic in PyTorch, block by block; the tests compare the
two under the Triton interpreter, and ``benchmarks/inspect_sass.py`` checks the FP8 ``wgmma``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from intfa_compile.kernels.int8_flash_attention import (
    AUTOTUNE_BENCH,
    autotune_configs,
    causal_block_range,
    online_softmax_step,
    prune_configs,
    round_to_float8,
)
from torch import Tensor

from intfa_compile.numerics import LOG2E, padded_head_dim

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
"""Largest finite e4m3 value."""
BLOCK_N = 64
"""Keys per block. Part of the result: P is rounded after each block's running-max shift."""

_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _fp8_block(
    acc, l_i, m_i, q, offs_m, start_n, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
    N_K, HEAD_DIM, qk_scale,
    CAUSAL_MASK: tl.constexpr, EMULATE_CAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One KV block of the online softmax with both GEMMs in FP8."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < N_K
    d_ok = offs_d < HEAD_DIM
    k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                mask=n_ok[None, :] & d_ok[:, None], other=0.0)
    s = tl.dot(q, k, out_dtype=tl.float32) * qk_scale
    if CAUSAL_MASK:
        s = tl.where(offs_n[None, :] <= offs_m[:, None], s, float("-inf"))
    s = tl.where(n_ok[None, :], s, float("-inf"))
    p, alpha, m_new, l_i = online_softmax_step(s, m_i, l_i)
    if EMULATE_CAST:
        p = round_to_float8(p, 3, 7)  # e4m3's mantissa bits and exponent bias
    v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=tl.float32)
    return acc, l_i, m_new


def _prune_fp8_or_16bit(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The INT8 kernel's pruning, with P·V counted as quantized when V is e4m3 (the 16-bit baseline's is not), at
    the key block size this kernel's CPU reference takes (``BLOCK_N``)."""
    v = named_args.get("V")
    return prune_configs(configs, named_args, QUANT_PV=v is not None and v.dtype == FP8_DTYPE, KV_BLOCK=BLOCK_N,
                         **kwargs)


@triton.autotune(configs=autotune_configs(), key=["N_Q", "N_K", "HEAD_DIM", "IS_CAUSAL"],
                 prune_configs_by={"early_config_prune": _prune_fp8_or_16bit}, do_bench=AUTOTUNE_BENCH)
@triton.jit
def fp8_attention_fwd(
    Q, K, V, DESCALE_Q, DESCALE_K, DESCALE_V, OUT,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    HEADS, N_Q, N_K, HEAD_DIM, sm_scale_log2,
    IS_CAUSAL: tl.constexpr, EMULATE_CAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HEADS
    h = pid_bh % HEADS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N_Q
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    qk_scale = tl.load(DESCALE_Q + pid_bh) * tl.load(DESCALE_K + pid_bh) * sm_scale_log2
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    diagonal_lo, hi = causal_block_range(pid_m, 0, N_K, IS_CAUSAL, BLOCK_M, BLOCK_N)  # top-left, as SDPA
    for start_n in range(0, diagonal_lo, BLOCK_N):
        acc, l_i, m_i = _fp8_block(acc, l_i, m_i, q, offs_m, start_n, k_base, v_base, stride_kn, stride_kd,
                                   stride_vn, stride_vd, N_K, HEAD_DIM, qk_scale, False, EMULATE_CAST, BLOCK_N,
                                   BLOCK_D)
    for start_n in range(diagonal_lo, hi, BLOCK_N):
        acc, l_i, m_i = _fp8_block(acc, l_i, m_i, q, offs_m, start_n, k_base, v_base, stride_kn, stride_kd,
                                   stride_vn, stride_vd, N_K, HEAD_DIM, qk_scale, True, EMULATE_CAST, BLOCK_N,
                                   BLOCK_D)
    out = acc / tl.where(l_i == 0, 1.0, l_i)[:, None] * tl.load(DESCALE_V + pid_bh)
    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def quantize_fp8(x: Tensor, sequence_contiguous: bool = False) -> tuple[Tensor, Tensor]:
    """(B, H, N, D) → e4m3 values and their fp32 descale factors (B, H), one per (batch, head).

    ``sequence_contiguous`` stores the result with N as the fastest axis (the K-major layout that
    Hopper's FP8 GEMM wants for V); the logical shape stays (B, H, N, D).
    """
    amax = x.abs().amax(dim=(-2, -1)).float()
    descale = torch.where(amax > 0, amax / FP8_MAX, 1.0)
    x8 = (x.float() / descale[..., None, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    if sequence_contiguous:
        x8 = x8.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x8, descale


def launch_arguments(
    q8: Tensor, k8: Tensor, v8: Tensor, descale_q: Tensor, descale_k: Tensor, descale_v: Tensor,
    is_causal: bool, sm_scale: float, out: Tensor,
) -> tuple[tuple, dict]:
    """The kernel's positional arguments and constexpr keywords (autotuned ones excluded), built in one place
    for the launch and for ``inspect_sass.py``'s offline compile."""
    heads, n_q, head_dim = q8.shape[1], q8.shape[2], q8.shape[3]
    n_k = k8.shape[2]
    args = (
        q8, k8, v8, descale_q.contiguous(), descale_k.contiguous(), descale_v.contiguous(), out,
        *q8.stride(), *k8.stride(), *v8.stride(), *out.stride(),
        heads, n_q, n_k, head_dim, sm_scale * LOG2E,
    )
    constexprs = dict(IS_CAUSAL=is_causal, EMULATE_CAST=_INTERPRETED and q8.dtype == FP8_DTYPE,
                      BLOCK_D=padded_head_dim(head_dim))
    return args, constexprs


def fp8_flash_attention(
    q8: Tensor, k8: Tensor, v8: Tensor, descale_q: Tensor, descale_k: Tensor, descale_v: Tensor,
    is_causal: bool, sm_scale: float, out_dtype: torch.dtype,
) -> Tensor:
    """Launch the kernel on quantized inputs (``quantize_fp8``); returns (B, H, Nq, D) in ``out_dtype``.

    Given fp16/bf16 inputs with unit descales, the same kernel is a plain 16-bit FlashAttention forward
    (``flash_attention_16bit``): the 16-bit baseline of the offline pipe model.
    """
    batch, heads, n_q, _ = q8.shape
    out = torch.empty(q8.shape, dtype=out_dtype, device=q8.device)
    if out.numel() == 0:
        return out
    args, constexprs = launch_arguments(q8, k8, v8, descale_q, descale_k, descale_v, is_causal, sm_scale, out)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads)

    fp8_attention_fwd[grid](*args, **constexprs)
    return out


def flash_attention_16bit(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False,
                          scale: float | None = None) -> Tensor:
    """SDPA semantics (no mask) for fp16/bf16 Q, K, V through the same kernel with 16-bit GEMMs (fp32
    accumulation, P rounded to the input dtype): our own FlashAttention-2-style 16-bit baseline."""
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"flash_attention_16bit takes fp16 or bf16 inputs, got q of dtype {q.dtype}")
    ones = torch.ones(q.shape[:2], dtype=torch.float32, device=q.device)
    sm_scale = scale if scale is not None else q.shape[-1] ** -0.5
    return fp8_flash_attention(q, k, v, ones, ones, ones, is_causal, sm_scale, q.dtype)


def fp8_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, scale: float | None = None) -> Tensor:
    """SDPA semantics (no mask) through the FP8 kernel, quantization included."""
    (q8, dq), (k8, dk), (v8, dv) = quantize_fp8(q), quantize_fp8(k), quantize_fp8(v, sequence_contiguous=True)
    sm_scale = scale if scale is not None else q.shape[-1] ** -0.5
    return fp8_flash_attention(q8, k8, v8, dq, dk, dv, is_causal, sm_scale, q.dtype)


def fp8_attention_reference(
    q8: Tensor, k8: Tensor, v8: Tensor, descale_q: Tensor, descale_k: Tensor, descale_v: Tensor,
    is_causal: bool, sm_scale: float, block_n: int = BLOCK_N,
) -> Tensor:
    """The kernel's arithmetic in PyTorch (fp32 out): same key blocks, same base-2 online softmax,
    P rounded to e4m3 against each block's running maximum."""
    n_q, n_k = q8.shape[2], k8.shape[2]
    qf, kf, vf = q8.float(), k8.float(), v8.float()
    qk_scale = (descale_q * descale_k * (sm_scale * LOG2E))[..., None, None]
    m_i = torch.full((*q8.shape[:3], 1), float("-inf"), device=q8.device)
    l_i = torch.zeros_like(m_i)
    acc = torch.zeros(qf.shape, device=q8.device)
    rows = torch.arange(n_q, device=q8.device)[:, None]
    for start in range(0, min(n_k, n_q) if is_causal else n_k, block_n):
        end = min(start + block_n, n_k)
        s = (qf @ kf[:, :, start:end].transpose(-1, -2)) * qk_scale
        if is_causal:
            s = s.masked_fill(torch.arange(start, end, device=q8.device) > rows, float("-inf"))
        m_new = torch.maximum(m_i, s.amax(-1, keepdim=True))
        m_safe = torch.where(m_new == float("-inf"), 0.0, m_new)
        alpha = torch.exp2(m_i - m_safe)
        p = torch.exp2(s - m_safe)
        l_i = l_i * alpha + p.sum(-1, keepdim=True)
        acc = acc * alpha + p.to(FP8_DTYPE).float() @ vf[:, :, start:end]
        m_i = m_new
    return acc / torch.where(l_i == 0, 1.0, l_i) * descale_v[..., None, None]
