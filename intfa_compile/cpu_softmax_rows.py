"""The softmax rows of one chunk of the op's CPU implementation in one native pass (C++, built by Inductor).

``cpu_fast_attention`` multiplies a chunk of query rows by all the keys they see, then, between its two GEMMs,
turns the scores into the P·V GEMM's left operand: the scales, the masks, the block maxima and their running
maximum, exp2, P rounded as the kernel rounds it and weighted by the online softmax's rescalings, and the row sums.
As PyTorch ops that is a dozen passes over a chunk larger than the L2 cache (most of the CPU path's time beyond the
GEMMs, ``benchmarks/bench_cpu.py``). Here it is one pass per row, while the row is in L1: the same arithmetic in
the same order, each step rounded to fp32 as the PyTorch op rounds it. On x86 with AVX2 or AVX-512 that includes
exp2, which is the SLEEF function ATen's vectorized exp2 calls (exported by libtorch_cpu), and the masked scores'
fused multiply-add (ATen's addcmul): P is then the PyTorch passes' bit for bit, and only the row sums differ, added
in another order (``tests/test_cpu_softmax_rows.py``). Elsewhere exp2 is a degree-7 polynomial on [−½, ½] times a
power of two (Taylor coefficients of 2^f: truncation below 10⁻⁸ relative, plus Horner's fp32 roundings, within 2
ulps; 0 below 2⁻¹²⁶, where each row's sum of at least 1 cannot see it), which is fp32 rounding as the allowance
``tests/test_cpu_fast_attention.py`` holds the fast path to against the twin takes it (a P entry at a rounding
midpoint may land on the other side).

The source is plain C++ with vector extensions (GCC 12 or Clang: 16 fp32 lanes, which the compiler maps to AVX-512,
AVX2 or NEON registers) and OpenMP over the rows, compiled by
``torch._inductor.codecache.CppCodeCache`` with the compiler, ISA flags and cache Inductor already uses on this CPU
(the one C++ toolchain ``torch.compile`` needs; nothing to install). If it cannot be built the caller runs the
PyTorch passes instead, and the reason is logged once.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass

import torch
from torch import Tensor

log = logging.getLogger("intfa_compile")

P_FORMATS = {"int8_fixed": 0, "int8_row_block": 1, torch.float16: 2, torch.bfloat16: 3}
"""How the pass rounds P (the code it passes to C++): INT8 with the fixed scale 1/127 or a per-row-block scale,
or to a 16-bit V's type. A float8 P stays with the PyTorch passes."""

LANES = 16
"""fp32 lanes per vector in the C++ source; key blocks are multiples of it (``numerics``: at least 16 keys)."""

SOURCE = r"""
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <omp.h>

namespace {
constexpr int W = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));

inline vf splat(float x) { return vf{} + x; }
inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline vf load_int(const int32_t* p) { vi v; std::memcpy(&v, p, sizeof v); return __builtin_convertvector(v, vf); }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

// Round to the nearest integer, ties to even (|x| < 2^22), as torch.round: the magic-number addition.
inline vf round_even(vf x) { return (x + 12582912.0f) - 12582912.0f; }

// max that keeps a NaN, as torch.amax and torch.cummax do.
inline float nan_max(float a, float b) { return (a == a && !(b <= a)) ? b : a; }
inline vf nan_max(vf a, vf b) { return (a == a) & ~(b <= a) ? b : a; }
inline float lanes_max(vf v) {
  v = nan_max(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = nan_max(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  v = nan_max(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  v = nan_max(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
  return v[0];
}
inline float lanes_sum(vf v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  return v[0];
}

// 2^x for x <= 128: 2^n times a degree-7 polynomial of f = x - n in [-1/2, 1/2] (Taylor coefficients
// (ln 2)^k / k!); 0 below -126 (where n's bits are garbage, -inf included); NaN stays NaN (f and p are NaN).
inline vf exp2_polynomial(vf x) {
  vf n = round_even(x);
  vf f = x - n;
  vf p = splat(1.5252733804059841e-05f);
  p = p * f + 1.5403530393381608e-04f;
  p = p * f + 1.3333558146428443e-03f;
  p = p * f + 9.6181291076284772e-03f;
  p = p * f + 5.5504108664821580e-02f;
  p = p * f + 2.4022650695910071e-01f;
  p = p * f + 6.9314718055994531e-01f;
  p = p * f + 1.0f;
  vf r = (vf)((vi)p + (__builtin_convertvector(n, vi) << 23));
  return x < -126.0f ? splat(0.0f) : r;
}
}  // namespace

// On x86 with AVX-512 or AVX2, exp2 is the function ATen's vectorized exp2 calls (SLEEF's, exported by
// libtorch_cpu, which Inductor's builds link): P is then the PyTorch passes' bit for bit. Elsewhere the polynomial.
#if defined(__AVX512F__)
extern "C" vf Sleef_exp2f16_u10(vf);
namespace {
constexpr bool EXP2_IS_ATENS = true;
inline vf exp2v(vf x) { return Sleef_exp2f16_u10(x); }
}  // namespace
#elif defined(__AVX2__) && defined(__FMA__)
typedef float vf8 __attribute__((vector_size(32)));
extern "C" vf8 Sleef_exp2f8_u10(vf8);
namespace {
constexpr bool EXP2_IS_ATENS = true;
inline vf exp2v(vf x) {
  vf8 half[2];
  std::memcpy(half, &x, sizeof x);
  half[0] = Sleef_exp2f8_u10(half[0]);
  half[1] = Sleef_exp2f8_u10(half[1]);
  std::memcpy(&x, half, sizeof x);
  return x;
}
}  // namespace
#else
namespace {
constexpr bool EXP2_IS_ATENS = false;
inline vf exp2v(vf x) { return exp2_polynomial(x); }
}  // namespace
#endif

// a·b + c with one rounding where the CPU has FMA, as ATen's addcmul computes the masked scores (its vectorized
// kernels are built with FMA), so they are the PyTorch passes' bit for bit.
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
namespace {
inline vf fmadd(vf a, vf b, vf c) {
#if defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
  __m256 x[2], y[2], z[2];
  std::memcpy(x, &a, sizeof a);
  std::memcpy(y, &b, sizeof b);
  std::memcpy(z, &c, sizeof c);
  x[0] = _mm256_fmadd_ps(x[0], y[0], z[0]);
  x[1] = _mm256_fmadd_ps(x[1], y[1], z[1]);
  std::memcpy(&a, x, sizeof a);
  return a;
#endif
}
}  // namespace
#else
namespace {
inline vf fmadd(vf a, vf b, vf c) { return a * b + c; }
}  // namespace
#endif

namespace {
// Round to fp16 (nearest, ties to even; subnormals on fp16's grid of 2^-24) and back, for 0 <= x <= 1.
inline vf round_fp16(vf x) {
  vu u = (vu)x;
  vf normal = (vf)((u + 0xFFFu + ((u >> 13) & 1u)) & ~0x1FFFu);
  vf tiny = round_even(x * 16777216.0f) * 5.9604644775390625e-08f;
  vf r = x < 6.103515625e-05f ? tiny : normal;
  return x == x ? r : x;
}

// Round to bf16 (nearest, ties to even) and back.
inline vf round_bf16(vf x) {
  vu u = (vu)x;
  vf r = (vf)((u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u);
  return x == x ? r : x;
}

enum Scores { INT32_PRODUCTS = 1, FOLD = 2, BIAS = 4 };  // what the scores are made of
enum PFormat { INT8_FIXED, INT8_ROW_BLOCK, FP16, BF16 };

struct Chunk {
  float* scores; const float* k_scale; int64_t k_scale_pair_stride; const float* q_scale;
  int64_t q_scale_pair_stride; const float* bias;
  int64_t bias_batch_stride, bias_head_stride, bias_token_stride, bias_group_stride;
  int64_t pair0, pairs, heads_k, rows_per_pair, keys, group, key0, n_k, block_n, blocks_per_range, causal, token0,
      offset, window_left;
  float* row_sum;
};

template <int SCORES, int P>
void rows(const Chunk& c, int64_t threads) {
  const int64_t rows = c.pairs * c.rows_per_pair, blocks = c.keys / c.block_n, first_block = c.key0 / c.block_n;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> running(blocks), weights((blocks + W - 1) / W * W);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pair = r / c.rows_per_pair, row = r % c.rows_per_pair, token = c.token0 + row / c.group;
      float* s = c.scores + r * c.keys;
      const int32_t* products = reinterpret_cast<const int32_t*>(s);
      const float* ks = c.k_scale + pair * c.k_scale_pair_stride;
      const float qs = c.q_scale[pair * c.q_scale_pair_stride + row];
      // The bias's batch entry and head: the chunk's pairs count (batch, KV head) from pair0.
      const int64_t batch_entry = (c.pair0 + pair) / c.heads_k - c.pair0 / c.heads_k;
      const int64_t head = (c.pair0 + pair) % c.heads_k;
      const float* b = (SCORES & BIAS) ? c.bias + batch_entry * c.bias_batch_stride + head * c.bias_head_stride
                                         + (row / c.group) * c.bias_token_stride
                                         + (row % c.group) * c.bias_group_stride : nullptr;
      // The keys this row sees, in chunk coordinates: [lo, hi).
      int64_t hi = c.n_k - c.key0 < c.keys ? c.n_k - c.key0 : c.keys, lo = 0;
      if (c.causal) {
        if (token + c.offset + 1 - c.key0 < hi) hi = token + c.offset + 1 - c.key0;
        if (c.window_left >= 0 && token + c.offset - c.window_left - c.key0 > lo)
          lo = token + c.offset - c.window_left - c.key0;
      }
      float row_max = -INFINITY;
      // Pass 1: the scores (base 2), the masks, the block maxima and their running maximum.
      for (int64_t j = 0; j < blocks; ++j) {
        vf m = splat(-INFINITY);
        for (int64_t i = j * c.block_n; i < (j + 1) * c.block_n; i += W) {
          vf x = (SCORES & INT32_PRODUCTS) ? load_int(products + i) : load(s + i);
          x = x * load(ks + i);
          if (!(SCORES & FOLD)) x = (SCORES & BIAS) ? fmadd(x, splat(qs), load(b + i)) : x * qs;
          if (i < lo || i + W > hi) {
            vi index = vi{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} + (int32_t)i;
            x = (index >= (int32_t)lo) & (index < (int32_t)hi) ? x : splat(-INFINITY);
          }
          store(s + i, x);
          m = nan_max(m, x);
        }
        const float block_max = lanes_max(m);
        const bool restart = j == 0 || (first_block + j) % c.blocks_per_range == 0;
        running[j] = restart ? block_max : nan_max(running[j - 1], block_max);
        row_max = nan_max(row_max, block_max);
      }
      if (row_max == -INFINITY) row_max = 0.0f;
      // Each block's weight: the rescalings after it, 2^(m_j - m_last) (times the query scale when it is folded).
      for (int64_t j = 0; j < blocks; ++j)
        weights[j] = (SCORES & FOLD) ? (running[j] - row_max) * qs : running[j] - row_max;
      for (int64_t j = 0; j < blocks; j += W) store(weights.data() + j, exp2v(load(weights.data() + j)));
      // Pass 2: P against each block's running maximum, rounded, weighted.
      float sum = 0.0f;
      for (int64_t j = 0; j < blocks; ++j) {
        const float m = running[j], base = m == -INFINITY ? 0.0f : m, weight = weights[j];
        const float dequant_fixed = weight / 127.0f;
        vf block_sum = {}, p_max = splat(-INFINITY);
        const int64_t i0 = j * c.block_n, i1 = (j + 1) * c.block_n;
        for (int64_t i = i0; i < i1; i += W) {
          vf x = load(s + i) - base;
          vf p = exp2v((SCORES & FOLD) ? x * qs : x);
          block_sum += p;
          if (P == INT8_FIXED) p = round_even(p * 127.0f) * dequant_fixed;
          if (P == INT8_ROW_BLOCK) p_max = nan_max(p_max, p);
          if (P == FP16) p = round_fp16(p) * weight;
          if (P == BF16) p = round_bf16(p) * weight;
          store(s + i, p);
        }
        if (P == INT8_ROW_BLOCK) {  // the block's own P scale: its largest P maps to 127
          const float top = lanes_max(p_max), inv = top > 0.0f ? 127.0f / top : 0.0f;
          const float dequant = weight * top / 127.0f;
          for (int64_t i = i0; i < i1; i += W) store(s + i, round_even(load(s + i) * inv) * dequant);
        }
        sum += lanes_sum(block_sum) * weight;
      }
      c.row_sum[r] = sum;
    }
  }
}

template <int SCORES>
void rows_of_format(const Chunk& c, int64_t p_format, int64_t threads) {
  switch (p_format) {
    case INT8_FIXED: return rows<SCORES, INT8_FIXED>(c, threads);
    case INT8_ROW_BLOCK: return rows<SCORES, INT8_ROW_BLOCK>(c, threads);
    case FP16: return rows<SCORES, FP16>(c, threads);
    default: return rows<SCORES, BF16>(c, threads);
  }
}
}  // namespace

// The pass's elementwise pieces on n values (multiples of 16), for the tests: 2^x, and P rounded by p_format
// (INT8: round(127 x)).
extern "C" void intfa_exp2(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += W) store(y + i, exp2v(load(x + i)));
}
extern "C" void intfa_exp2_polynomial(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += W) store(y + i, exp2_polynomial(load(x + i)));
}
extern "C" int64_t intfa_exp2_is_atens() { return EXP2_IS_ATENS; }
extern "C" void intfa_round_p(const float* x, float* y, int64_t n, int64_t p_format) {
  for (int64_t i = 0; i < n; i += W) {
    const vf v = load(x + i);
    store(y + i, p_format == FP16 ? round_fp16(v) : p_format == BF16 ? round_bf16(v) : round_even(v * 127.0f));
  }
}

// One chunk's rows (pairs x rows_per_pair rows of `keys` scores each, row-major): see cpu_softmax_rows.py.
extern "C" void intfa_softmax_rows(
    float* scores, int64_t products_are_int32,
    const float* k_scale, int64_t k_scale_pair_stride,
    const float* q_scale, int64_t q_scale_pair_stride,
    const float* bias, int64_t bias_batch_stride, int64_t bias_head_stride, int64_t bias_token_stride,
    int64_t bias_group_stride, int64_t fold, int64_t pair0, int64_t pairs, int64_t heads_k, int64_t rows_per_pair,
    int64_t keys, int64_t group,
    int64_t key0, int64_t n_k, int64_t block_n, int64_t blocks_per_range,
    int64_t causal, int64_t token0, int64_t offset, int64_t window_left,
    int64_t p_format, float* row_sum, int64_t threads) {
  const Chunk c{scores, k_scale, k_scale_pair_stride, q_scale, q_scale_pair_stride, bias, bias_batch_stride,
                bias_head_stride, bias_token_stride, bias_group_stride, pair0, pairs, heads_k, rows_per_pair, keys,
                group, key0, n_k, block_n, blocks_per_range, causal, token0, offset, window_left, row_sum};
  const int scores_kind = (products_are_int32 ? INT32_PRODUCTS : 0) | (fold ? FOLD : (bias ? BIAS : 0));
  switch (scores_kind) {
    case 0: return rows_of_format<0>(c, p_format, threads);
    case INT32_PRODUCTS: return rows_of_format<INT32_PRODUCTS>(c, p_format, threads);
    case FOLD: return rows_of_format<FOLD>(c, p_format, threads);
    case INT32_PRODUCTS | FOLD: return rows_of_format<INT32_PRODUCTS | FOLD>(c, p_format, threads);
    case BIAS: return rows_of_format<BIAS>(c, p_format, threads);
    default: return rows_of_format<INT32_PRODUCTS | BIAS>(c, p_format, threads);
  }
}
"""

_ARGUMENT_TYPES = (
    [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
     ctypes.c_void_p] + [ctypes.c_int64] * 20 + [ctypes.c_void_p, ctypes.c_int64])


@functools.cache
def native_library() -> ctypes.CDLL | None:
    """The compiled source (built once per source and compiler flags, then taken from Inductor's cache), or None
    where it cannot be built here; the reason is logged once."""
    try:
        from torch._inductor.codecache import CppCodeCache

        library = CppCodeCache.load(SOURCE)
        library.intfa_softmax_rows.argtypes = _ARGUMENT_TYPES
        library.intfa_softmax_rows.restype = None
    except Exception as error:  # no compiler, an unsupported platform, a changed Inductor API: the PyTorch passes
        log.warning("intfa: the CPU path's native softmax pass could not be built (%s: %s); using PyTorch ops "
                    "between its GEMMs instead (slower, same results within fp32 rounding)",
                    type(error).__name__, error)
        return None
    return library


def native_softmax_rows() -> ctypes._CFuncPtr | None:
    """The native pass, or None where it cannot be built here (``native_library``)."""
    library = native_library()
    return None if library is None else library.intfa_softmax_rows


@dataclass(frozen=True)
class RowLayout:
    """Where a chunk's rows come from: ``pairs`` (batch, KV head) pairs from pair ``pair0`` (``heads_k`` KV heads
    per batch entry) of ``rows_per_pair`` rows each, query position-major (``group`` query heads per KV head) from
    position ``token0``, against keys [``key0``, ``key0`` + keys) of ``n_k``."""

    pair0: int
    pairs: int
    heads_k: int
    rows_per_pair: int
    group: int
    token0: int
    key0: int
    n_k: int


def softmax_rows(scores: Tensor, layout: RowLayout, k_scale: Tensor, q_scale: Tensor, bias: Tensor | None,
                 fold: bool, block_n: int, blocks_per_range: int, causal: tuple[int, int] | None,
                 p_format: object, row_sum: Tensor) -> Tensor:
    """The chunk's weighted, rounded P in place of ``scores`` (pairs, rows, keys: fp32, or the INT32 Q·Kᵀ
    products, reinterpreted), returned as fp32, and its row sums into ``row_sum`` (pairs, rows).

    ``k_scale`` (pairs, keys): the key scales; ``q_scale`` (pairs, rows): the query scales (with the softmax scale
    in base 2); ``bias`` (batch, KV heads, tokens, group, keys), the chunk's tokens and keys of every pair, keys
    contiguous: an additive mask in base 2, or None; ``fold``: the query scale enters the exponent (no additive
    mask) instead of the scores; ``causal``: (offset, window_left) of a causal call; ``p_format``: a key of
    ``P_FORMATS``. The caller checks that the pass exists (``native_softmax_rows``)."""
    function = native_softmax_rows()
    assert function is not None, "softmax_rows needs native_softmax_rows()"
    keys = scores.shape[-1]
    if not (scores.is_contiguous() and keys % block_n == 0 and block_n % LANES == 0 and k_scale.stride(-1) == 1
            and q_scale.stride(-1) == 1 and (bias is None or bias.stride(-1) == 1)):
        raise ValueError("softmax_rows: scores must be contiguous rows of whole blocks of whole vectors, and the "
                         "scales' and the bias's keys contiguous")
    offset, window_left = causal if causal is not None else (0, -1)
    b0 = layout.pair0 // layout.heads_k
    bias_strides = bias.stride()[:4] if bias is not None else (0, 0, 0, 0)
    function(scores.data_ptr(), scores.dtype == torch.int32, k_scale.data_ptr(), k_scale.stride(0),
             q_scale.data_ptr(), q_scale.stride(0), bias[b0].data_ptr() if bias is not None else None, *bias_strides,
             fold, layout.pair0, layout.pairs, layout.heads_k, layout.rows_per_pair, keys, layout.group, layout.key0,
             layout.n_k, block_n, blocks_per_range, causal is not None, layout.token0, offset, window_left,
             P_FORMATS[p_format], row_sum.data_ptr(), torch.get_num_threads())
    return scores.view(torch.float32)
