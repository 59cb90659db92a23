"""Rotate-and-quantize for ``qk_rotation="hadamard"``: Q or K times the randomized Walsh–Hadamard matrix, then
symmetric INT8 (or INT4-range) quantization per token or per block of tokens, in one pass over the input.

Why a kernel: as aten ops the rotation is a GEMM that Inductor runs as its own (extern) kernel, writing the
rotated tensor and reading it back for the quantization: four more bytes per 16-bit element on top of the
quantization's three. Here each program loads a tile of tokens, multiplies it by the ±1 matrix on the tensor
cores (exact products, fp32 sums), takes each token's amax and writes INT8 values and fp32 scales: the traffic
of the quantization alone (read x, write one byte per element and four per token).

The matrix is built in registers from channel indices (``intfa_compile.rotation.hadamard_matrix`` defines it),
once per program for the several tiles it quantizes. The head dim is processed in chunks of ``chunk_width(D)``
channels, each a whole number of Hadamard blocks, so one W × W matrix (W ≤ 128) serves every chunk and the sign
flips apply to x's channels as they are loaded. The amax needs every chunk before any is quantized, so the chunks
are multiplied twice rather than held (the compiler merges the two when there is one chunk); the tile is
re-read from L1/L2 and the tensor cores are otherwise idle here.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from intfa_compile.numerics import chunk_width, hadamard_block

_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_FP32_ROUNDING_MAGIC = tl.constexpr(1.5 * 2.0**23)
_FP64_ROUNDING_MAGIC = tl.constexpr(1.5 * 2.0**52)
_SIGN_HASH = tl.constexpr(0x27D4EB2F)
TOKENS_PER_TILE = 64
"""Tokens per tile when each token has its own scale."""
TILES_PER_PROGRAM = 8
"""Tiles one program quantizes in turn, building the constant matrix once for all of them."""


def launch_warps(head_dim: int) -> int:
    """Warps per program: 8 above d = 128, where 4 would hold two 128-channel chunks in too few threads and spill
    (sm_90 compile, ``benchmarks/rotation_cost.py``); 4 otherwise."""
    return 8 if head_dim > 128 else 4


@triton.jit
def _walsh_hadamard(W: tl.constexpr, HB: tl.constexpr):
    """The ±1 matrix of one chunk (W × W) without the sign flips: −1 where i & j has an odd number of bits within a
    Hadamard block, 0 across blocks. Chunks start at multiples of W, a whole number of blocks, so every chunk's
    matrix is this one; the flips apply to x's channels (``_channel_signs``)."""
    index = tl.arange(0, W)
    bits = index[:, None] & index[None, :] & (HB - 1)
    bits = bits ^ (bits >> 8)
    bits = bits ^ (bits >> 4)
    bits = bits ^ (bits >> 2)
    bits = bits ^ (bits >> 1)
    same_block = (index[:, None] // HB) == (index[None, :] // HB)
    return tl.where(same_block, 1.0 - 2.0 * (bits & 1).to(tl.float32), 0.0)


@triton.jit
def _channel_signs(channels):
    """True where channel i's sign flips: bit 22 of a 32-bit multiplicative hash of i (``hadamard_signs``)."""
    return ((((channels.to(tl.int64) * _SIGN_HASH) & 0xFFFFFFFF) >> 22) & 1) == 1


@triton.jit
def _max_keeping_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _rotated_chunk(x_row_ptr, stride_d, tokens, token_ok, chunk, matrix, D: tl.constexpr, W: tl.constexpr,
                   IEEE: tl.constexpr):
    """Channels [chunk·W, chunk·W + W) of the rotated tile without its 1/√HB, fp32 (BLOCK_N, W): x with its
    channels' signs flipped (exact) times the chunk's ±1 matrix, on the tensor cores with fp32 sums."""
    channels = chunk * W + tl.arange(0, W)
    ok = token_ok[:, None] & (channels[None, :] < D)
    x = tl.load(x_row_ptr + tokens[:, None] + channels[None, :] * stride_d, mask=ok, other=0.0)
    if IEEE:
        x = x.to(tl.float32)
    x = tl.where(_channel_signs(channels)[None, :], -x, x)
    if IEEE:
        rotated = tl.dot(x, matrix, input_precision="ieee")
    else:
        rotated = tl.dot(x, matrix)
    return rotated, channels, ok


@triton.jit
def _quantize_chunk(rotated, multiplier, any_infinite, LIMIT: tl.constexpr, INTERPRETER: tl.constexpr):
    """round(rotated · multiplier) to INT8, ties to even, as ``rotation.hadamard_quantize_reference``: one FFMA adds
    1.5·2²³ to the exact product and rounds once, and the integer is the low byte of the sum's bits (no F2I, no
    clamp: |rotated · multiplier| ≤ LIMIT up to a few ulps, which round to LIMIT). Only where the tile has a token
    with an infinite entry (``any_infinite``) is each infinite entry set to ±LIMIT."""
    if INTERPRETER:  # no fused multiply-add: the fp64 product of two fp32 numbers is exact
        exact = rotated.to(tl.float64) * multiplier.to(tl.float64)[:, None] + _FP64_ROUNDING_MAGIC
        quantized = (exact - _FP64_ROUNDING_MAGIC).to(tl.int32).to(tl.int8)
    else:
        summed = tl.fma(rotated, multiplier[:, None], _FP32_ROUNDING_MAGIC)
        quantized = summed.to(tl.int32, bitcast=True).to(tl.int8)
    if any_infinite:
        is_inf = (rotated == float("inf")) | (rotated == float("-inf"))
        quantized = tl.where(is_inf, tl.where(rotated > 0, LIMIT, -LIMIT).to(tl.int8), quantized)
    return quantized


@triton.jit
def hadamard_quantize_kernel(
    X, OUT, SCALE, n_heads, n_tokens,
    stride_b, stride_h, stride_n, stride_d,
    D: tl.constexpr, W: tl.constexpr, HB: tl.constexpr, INV_SQRT_HB: tl.constexpr, BLOCK_N: tl.constexpr,
    TILES: tl.constexpr, SHARED_SCALE: tl.constexpr, LIMIT: tl.constexpr, IEEE: tl.constexpr,
    INTERPRETER: tl.constexpr,
):
    """One program: up to TILES tiles of BLOCK_N tokens of one (batch, head), so the constant matrix is built once
    for all of them. ``SHARED_SCALE``: a tile's tokens share one scale (a "per_block" group of BLOCK_N tokens);
    otherwise one per token. OUT (B, H, N, D) and SCALE (B, H, N) are contiguous."""
    program, batch_head = tl.program_id(0), tl.program_id(1)
    batch, head = batch_head // n_heads, batch_head % n_heads
    x_row_ptr = X + batch.to(tl.int64) * stride_b + head.to(tl.int64) * stride_h
    out_head = OUT + batch_head.to(tl.int64) * n_tokens * D
    scale_head = SCALE + batch_head.to(tl.int64) * n_tokens
    N_CHUNKS: tl.constexpr = (D + W - 1) // W
    if IEEE:
        matrix = _walsh_hadamard(W, HB)
    else:
        matrix = _walsh_hadamard(W, HB).to(X.dtype.element_ty)

    first = program * TILES
    last = tl.minimum(first + TILES, tl.cdiv(n_tokens, BLOCK_N))
    for tile in range(first, last):
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        token_ok = rows < n_tokens
        tokens = rows.to(tl.int64) * stride_n
        amax = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for chunk in tl.static_range(N_CHUNKS):
            rotated, _, _ = _rotated_chunk(x_row_ptr, stride_d, tokens, token_ok, chunk, matrix, D, W, IEEE)
            amax = _max_keeping_nan(amax, tl.reduce(tl.abs(rotated), 1, _max_keeping_nan))
        if SHARED_SCALE:
            amax = tl.zeros((BLOCK_N,), dtype=tl.float32) + tl.reduce(tl.where(token_ok, amax, 0.0), 0,
                                                                       _max_keeping_nan)
        amax = amax * INV_SQRT_HB  # the rotation's 1/√HB, once per token
        scale = tl.where(amax == 0.0, 1.0, tl.div_rn(amax, tl.full((BLOCK_N,), LIMIT, tl.float32)))
        multiplier = tl.div_rn(tl.full((BLOCK_N,), INV_SQRT_HB, tl.float32), scale)
        any_infinite = tl.max((scale == float("inf")).to(tl.int32), axis=0) > 0
        for chunk in tl.static_range(N_CHUNKS):
            rotated, channels, ok = _rotated_chunk(x_row_ptr, stride_d, tokens, token_ok, chunk, matrix, D, W, IEEE)
            quantized = _quantize_chunk(rotated, multiplier, any_infinite, LIMIT, INTERPRETER)
            tl.store(out_head + rows.to(tl.int64)[:, None] * D + channels[None, :], quantized, mask=ok)
        tl.store(scale_head + rows, scale, mask=token_ok)


def launch_constexprs(x: Tensor, group_tokens: int, limit: int) -> dict:
    """The kernel's compile-time arguments for ``x`` (B, H, N, D), and its warps: what a launch specializes on,
    shared with ``benchmarks/rotation_cost.py``'s offline compile."""
    head_dim = x.shape[-1]
    return dict(
        D=head_dim, W=chunk_width(head_dim), HB=hadamard_block(head_dim), INV_SQRT_HB=hadamard_block(head_dim) ** -0.5,
        BLOCK_N=TOKENS_PER_TILE if group_tokens == 1 else group_tokens, TILES=TILES_PER_PROGRAM,
        SHARED_SCALE=group_tokens != 1, LIMIT=float(limit),
        # The interpreter's bf16 dot is wrong (as for the attention kernel); bf16 → fp32 is exact, so it sums in fp32.
        IEEE=x.dtype == torch.float32 or (_INTERPRETED and x.dtype == torch.bfloat16), INTERPRETER=_INTERPRETED,
        num_warps=launch_warps(head_dim),
    )


def hadamard_quantize_triton(x: Tensor, group_tokens: int, limit: int) -> tuple[Tensor, Tensor]:
    """Launch the kernel on ``x`` (B, H, N, D), any strides: integer values (B, H, N, D) int8, contiguous, and fp32
    scales (B, H, N). ``group_tokens`` = 1: one scale per token; otherwise tokens [g·group, (g+1)·group) share one
    (a power of two ≥ 16). ``limit``: 127 for INT8, 7 for the INT4 range. Arguments unchecked (see the op)."""
    batch, heads, n_tokens, _ = x.shape
    out = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scale = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    if out.numel() == 0:
        return out, scale
    constexprs = launch_constexprs(x, group_tokens, limit)
    grid = (triton.cdiv(triton.cdiv(n_tokens, constexprs["BLOCK_N"]), TILES_PER_PROGRAM), batch * heads)
    hadamard_quantize_kernel[grid](x, out, scale, heads, n_tokens, *x.stride(), **constexprs)
    return out, scale
