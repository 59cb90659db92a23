"""The op's CPU implementation: the method of ``cpu_attention`` (the kernel's twin) computed a whole key range at once.

The twin walks the key blocks one after another, as the GPU kernel does, and emulates its grid (split-K ranges) and
its FFMA in float64; that makes it the oracle the kernel is tested against, and 3–18× slower than SDPA on a CPU.
This module computes the same quantities without the walk. For a chunk of query rows it takes the scores of all
the keys they see in one GEMM and, per row,

- the running maximum after each key block: the block maxima and their running maximum (``cummax``), reset at the
  split-K range boundaries, as the kernel's programs keep one each (``key_splits``' rule, a rule of shapes);
- P of each block against that running maximum, quantized as the kernel quantizes it (INT8 with the fixed or
  per-row-block scale, e4m3, or V's 16-bit type);
- the online softmax's rescalings: after the last block, block j's contribution has been multiplied by
  exp2(m_j − m_last) (the product of the α's after it), so each block is weighted by that factor and the
  blocks are summed in one GEMM; the row sums likewise.

Every integer the twin forms is formed the same way (the Q·Kᵀ products exactly, as INT8 or fp32 GEMMs of integers;
P's integers and e4m3 values by the same roundings of P), so the two differ only by fp32 rounding: of the scores'
scalings and the exponent (the twin's FFMA is a subtraction and a product here; the query scale enters the
exponent where the kernel's does, without an additive mask), of the α chain (here one exp2 per block), and of
the P·V sums (here fp32 sums of weighted values). Such a rounding can move a P entry across a
rounding midpoint, i.e. by one INT8 (or e4m3) step, which is the bound the tests hold it to
(``tests/test_cpu_fast_attention.py``).

Query heads that share a KV head are stacked token-major, so a chunk of rows is a range of query positions and a
causal chunk only multiplies the keys up to its last row's diagonal.

Between the two GEMMs the steps above run as one native pass per row (``cpu_softmax_rows``: C++ built by Inductor's
compiler, the same arithmetic; on x86 the same P bit for bit) where it applies, and as PyTorch ops
(``_eager_softmax_rows``) for a float8 P, a mask applied by dropping (scores that may not be finite), or a machine
where the pass cannot be built. Both are held to the twin by the same tests.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention_call import DEFAULT_OPTIONS, AttentionCall, KernelOptions
from .cpu_attention import additive_mask_in_base2, int8_flash_attention_cpu
from .cpu_softmax_rows import LANES, P_FORMATS, RowLayout, native_softmax_rows, softmax_rows
from .key_splits import key_splits, split_keys_evenly
from .numerics import FP32_TINY, INT8_MAX, LOG2E, folds_query_scale

SCORES_PER_CHUNK = 1 << 21
"""Scores (fp32) one chunk of query rows holds at most (8 MiB), unless a single query position's rows need more:
large enough that per-op overhead and the GEMMs' packing are spread; with the native pass (one read of each row,
reread from L1) 0.5, 1 and 2 Mi were within noise on the issue's cases (``benchmarks/bench_cpu.py``)."""

CAUSAL_TOKENS = 128
"""Query positions a causal chunk holds at most: its keys end at its last row's diagonal, so the GEMMs multiply
at most 128 × 128 / 2 masked scores per head more than the triangle."""

INT8_GEMM_MIN_SCORES = 1 << 18
"""Scores per (batch, KV head) from which Q·Kᵀ runs as INT8 GEMMs where they are exact: ``torch._int_mm`` is one
call per KV head with a fixed cost of its own (measured: about 1 ms per call on all-MiniLM-L6-v2's 26 × 26 heads,
where one batched fp32 GEMM takes a few microseconds per head)."""

FAST_PATH_OPTIONS = frozenset({"p_scale", "kv_block", "launch"})
"""The kernel options (``attention_call.KernelOptions``) this module computes with. A call that sets another one
away from its default runs the twin instead (logged once per option): a new option is right on CPU as soon as the
twin computes it, and teaching it to this module is a speed-up, tested against the twin."""

_INF = float("inf")
log = logging.getLogger("intfa_compile")


@functools.cache
def exact_int8_gemm() -> bool:
    """Whether ``torch._int_mm`` on this CPU computes INT8 products exactly, and fast: only with INT8 dot-product
    instructions (AVX512-VNNI, AVX-VNNI, AMX). Without them oneDNN emulates s8·s8 with ``vpmaddubsw``, whose 16-bit
    pair sums saturate (measured: wrong results on random INT8 inputs with ``ONEDNN_MAX_CPU_ISA=AVX2``), so a probe
    of the worst case (127·127 everywhere, and random signs) must also come out exact; otherwise fp32 GEMMs of the
    integers (exact below 2**24) are used."""
    is_vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    if is_vnni is None or not is_vnni():
        return False
    gen = torch.Generator().manual_seed(0)
    for rows, depth, cols in ((64, 64, 256), (256, 128, 128), (17, 96, 40)):
        a = torch.randint(-127, 128, (rows, depth), generator=gen, dtype=torch.int8)
        b = torch.randint(-127, 128, (depth, cols), generator=gen, dtype=torch.int8)
        a[0], b[:, 0] = 127, 127
        a[1], b[:, 1] = -127, 127
        try:
            product = torch._int_mm(a, b)
        except RuntimeError:
            return False
        if not torch.equal(product.double(), a.double() @ b.double()):
            return False
    return True


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _mask_in_base2(attn_mask: Tensor, finite_scores: bool) -> Tensor:
    """The mask as the scores take it: the bias times log2(e), clamped at fp32's lowest (a row masked with
    ``finfo.min`` stays finite, as in the twin), −inf kept. A boolean mask becomes a bias of 0 and −inf where the
    scores are finite (adding is ten times faster than ``masked_fill_`` with a broadcast mask), else the entries
    to drop (a NaN score at a dropped key must not reach the row, as in the twin)."""
    if attn_mask.dtype == torch.bool:
        return _minus_inf_where(~attn_mask) if finite_scores else ~attn_mask
    return additive_mask_in_base2(attn_mask)


def _minus_inf_where(dropped: Tensor) -> Tensor:
    """A bias of −inf where ``dropped``, 0 elsewhere."""
    return torch.zeros(dropped.shape).masked_fill_(dropped, -_INF)


def _running_block_maxima(block_max: Tensor, first_block: int, blocks_per_range: int) -> Tensor:
    """The running maximum after each key block (…, nb), restarting at every split-K range (``blocks_per_range``
    blocks each, counted from block 0 of the keys; the chunk starts at block ``first_block``)."""
    n_blocks = block_max.shape[-1]
    if first_block // blocks_per_range == (first_block + n_blocks - 1) // blocks_per_range:
        return torch.cummax(block_max, dim=-1).values
    parts, start = [], 0
    while start < n_blocks:
        stop = min(n_blocks, (first_block + start) // blocks_per_range * blocks_per_range + blocks_per_range
                   - first_block)
        parts.append(torch.cummax(block_max[..., start:stop], dim=-1).values)
        start = stop
    return torch.cat(parts, dim=-1)


@dataclass(frozen=True)
class _Operands:
    """The call's tensors laid out for whole-row GEMMs: rows token-major (B·Hk, Nq·G, …), keys padded to a whole
    number of blocks, K transposed; Q and K as INT8 for ``torch._int_mm`` or as fp32 integers."""

    q: Tensor
    q_scale: Tensor
    kt: Tensor
    k_scale: Tensor
    v: Tensor
    drop_or_bias: Tensor | None
    finite_scores: bool
    fold: bool
    int8_gemm: bool


def _operands(call: AttentionCall, block_n: int, int8_gemm: bool) -> _Operands:
    q, k, v, q_scale, k_scale, _, attn_mask = call.tensors
    batch, heads_q, n_q, head_dim = q.shape
    heads_k, n_k = k.shape[1], k.shape[2]
    group, pair = heads_q // heads_k, batch * heads_k

    def token_major(x: Tensor) -> Tensor:
        x = x.reshape(batch, heads_k, group, n_q, *x.shape[3:]).transpose(2, 3)
        return x.reshape(pair, n_q * group, *x.shape[4:])

    pad = _round_up(max(n_k, 1), block_n) - n_k
    gemm_type = torch.int8 if int8_gemm else torch.float32

    def padded(x: Tensor, dims: tuple[int, ...]) -> Tensor:
        return F.pad(x, dims) if pad else x

    kt = padded(k.to(gemm_type), (0, 0, 0, pad)).reshape(pair, n_k + pad, head_dim).transpose(1, 2)
    # Q·Kᵀ of INT8 values is finite, so the scores are finite unless a scale is not.
    finite_scores = _all_finite(q_scale) and _all_finite(k_scale)
    mask = None
    if attn_mask is not None:
        # Padded to the padded keys (dropped there), keys contiguous: a chunk's rows read it key block by key block.
        mask = _mask_in_base2(attn_mask, finite_scores)
        mask = mask.expand(*mask.shape[:-1], n_k)
        if pad:
            mask = F.pad(mask, (0, pad), value=True if mask.dtype == torch.bool else -_INF)
        if mask.stride(-1) != 1:  # e.g. a bias permuted from (queries, keys, heads); F.pad keeps such strides
            mask = mask.contiguous()
        mask = mask.expand(batch, heads_q, n_q, n_k + pad)
        mask = mask.reshape(batch, heads_k, group, n_q, n_k + pad).transpose(2, 3)
    # As the kernel: without an additive mask the query scale stays out of the scores and enters the exponent
    # (maxima commute with a positive scale); a zero scale becomes the smallest normal so −inf · scale stays −inf.
    fold = folds_query_scale(attn_mask, call.sm_scale)
    row_scale = token_major(q_scale.float() * (call.sm_scale * LOG2E)).unsqueeze(-1)
    return _Operands(
        q=token_major(q.to(gemm_type)).contiguous(),
        q_scale=(torch.where(row_scale == 0, FP32_TINY, row_scale) if fold else row_scale).contiguous(),
        kt=kt.contiguous() if int8_gemm else kt,
        k_scale=padded(k_scale.float(), (0, pad)).reshape(pair, 1, n_k + pad).contiguous(),  # static: broadcast
        v=padded(v.float(), (0, 0, 0, pad)).reshape(pair, n_k + pad, head_dim),
        drop_or_bias=mask,
        finite_scores=finite_scores,
        fold=fold,
        int8_gemm=int8_gemm,
    )


def _drop(scores: Tensor, dropped: Tensor, finite_scores: bool) -> None:
    """Set ``scores`` to −inf where ``dropped`` (broadcast): by adding −inf where the scores are finite (fast), else
    by ``masked_fill_`` (a NaN score at a dropped key must not reach the row)."""
    if finite_scores:
        scores.add_(_minus_inf_where(dropped))
    else:
        scores.masked_fill_(dropped, -_INF)


@dataclass(frozen=True)
class _Chunk:
    """A chunk of rows: (batch, KV head) pairs [p0, p1) (heads of one batch entry, or whole batch entries), query
    positions [t0, t1), keys [lo, hi)."""

    p0: int
    p1: int
    t0: int
    t1: int
    lo: int
    hi: int
    heads_k: int
    group: int

    @property
    def pairs(self) -> slice:
        """Its (batch, KV head) pairs in the operands' first axis."""
        return slice(self.p0, self.p1)

    @property
    def rows(self) -> slice:
        """Its rows of each pair (query positions times the query heads of a KV head)."""
        return slice(self.t0 * self.group, self.t1 * self.group)

    @property
    def within_one_entry(self) -> bool:
        """Whether its pairs are heads of one batch entry (else they are whole batch entries)."""
        return self.p1 - self.p0 <= self.heads_k - self.p0 % self.heads_k

    def of_batch_and_heads(self, x: Tensor) -> Tensor:
        """The chunk's pairs of ``x`` (batch, KV heads, …): (heads, …) of one batch entry, or (entries, KV heads,
        …) of whole ones; a view either way, its elements in the order of the chunk's rows."""
        b0, h0 = divmod(self.p0, self.heads_k)
        if self.within_one_entry:
            return x[b0, h0:h0 + self.p1 - self.p0]
        return x[b0:self.p1 // self.heads_k]

    def of_pairs(self, x: Tensor) -> Tensor:
        """The chunk's pairs of ``x`` (batch, KV heads, …) as (pairs, …): a copy where whole batch entries' strides
        do not merge (a mask broadcast over heads)."""
        x = self.of_batch_and_heads(x)
        return x if self.within_one_entry else x.flatten(0, 1)


def _products(ops: _Operands, chunk: _Chunk) -> Tensor:
    """The exact Q·Kᵀ integers of the chunk's rows and keys (pairs, rows, keys): INT32 from ``torch._int_mm``, or
    fp32 from fp32 GEMMs of the integers."""
    pairs, rows = chunk.pairs, chunk.rows
    if not ops.int8_gemm:
        return torch.bmm(ops.q[pairs, rows], ops.kt[pairs, :, chunk.lo:chunk.hi])
    products = torch.empty(pairs.stop - pairs.start, rows.stop - rows.start, chunk.hi - chunk.lo, dtype=torch.int32)
    for index, pair in enumerate(range(pairs.start, pairs.stop)):
        torch._int_mm(ops.q[pair, rows], ops.kt[pair, :, chunk.lo:chunk.hi], out=products[index])
    return products


def _all_finite(x: Tensor) -> bool:
    return x.numel() == 0 or bool(x.abs().amax() < _INF)


def fast_int8_attention_cpu(call: AttentionCall, out: Tensor, splits: int | None = None,
                            int8_gemm: bool | None = None) -> Tensor:
    """INT8 attention of ``call`` into ``out`` (B, Hq, Nq, D): what ``int8_flash_attention_cpu`` computes, up to fp32
    rounding, a chunk of query rows and all its keys at a time. ``splits``: key ranges, as the twin's. ``int8_gemm``:
    Q·Kᵀ with ``torch._int_mm`` (default: where it is exact, ``exact_int8_gemm``, for calls of at least
    ``INT8_GEMM_MIN_SCORES`` per KV head) or as fp32 GEMMs. (With AMX and the native pass, which casts the INT32
    products as it reads them, INT8 GEMMs made the issue's cases 9–30% faster than fp32 ones.)"""
    unknown = options_left_to_the_twin(call.options)
    if unknown:
        _log_twin_once(unknown)
        return int8_flash_attention_cpu(call, out, splits)
    q, k, v, q_scale, k_scale, v_scale, attn_mask = call.tensors
    batch, heads_q, n_q, head_dim = q.shape
    heads_k, n_k = k.shape[1], k.shape[2]
    group = heads_q // heads_k
    if INT8_MAX * INT8_MAX * head_dim >= 2**24:
        raise ValueError(f"head_dim {head_dim} too large for exact fp32 integer GEMMs")
    if int8_gemm is None:
        int8_gemm = group * n_q * n_k >= INT8_GEMM_MIN_SCORES and exact_int8_gemm()
    ranges, split_keys = key_splits(n_q, n_k, batch * heads_q) if splits is None else split_keys_evenly(n_k, splits)
    # Keys that make a single block are one block however far they are padded: to whole vectors, not to the
    # kernel's block (26 keys would otherwise be multiplied and exponentiated as 128).
    block_n = call.block_n if ranges > 1 or n_k > call.block_n else _round_up(max(n_k, 1), LANES)
    ops = _operands(call, block_n, int8_gemm)
    keys_padded = ops.v.shape[1]
    is_causal, offset, window_left = call.is_causal, call.causal_offset, call.window_left
    blocks_per_range = split_keys // block_n if ranges > 1 else keys_padded // block_n + 1

    def key_range(t0: int, t1: int) -> tuple[int, int]:
        """Keys [lo, hi) the query positions [t0, t1) may see, on block boundaries."""
        if not is_causal:
            return 0, keys_padded
        hi = min(n_k, max(0, t1 - 1 + offset + 1))
        lo = max(0, t0 + offset - window_left) // block_n * block_n if window_left >= 0 else 0
        return min(lo, hi), _round_up(hi, block_n)

    def scores_of(heads: int, t0: int, t1: int) -> int:
        lo, hi = key_range(t0, t1)
        return heads * group * (t1 - t0) * max(hi - lo, block_n)

    def chunks() -> Iterator[tuple[int, int, int, int]]:
        """(first pair, last pair + 1, first token, last token + 1) per chunk, pairs counted (batch, KV head): whole
        batch entries together while their whole rows fit ``SCORES_PER_CHUNK``, else heads of one batch entry,
        else one head and as many query positions as fit."""
        heads = max(1, min(heads_k, SCORES_PER_CHUNK // max(1, scores_of(1, 0, n_q))))
        if heads == heads_k and not (is_causal and n_q > CAUSAL_TOKENS):
            entries = max(1, SCORES_PER_CHUNK // max(1, scores_of(heads_k, 0, n_q)))
            for b in range(0, batch, entries):
                yield b * heads_k, min(batch, b + entries) * heads_k, 0, n_q
            return
        for b in range(batch):
            for h0 in range(0, heads_k, heads):
                t0 = 0
                while t0 < n_q:
                    tokens = min(n_q - t0, CAUSAL_TOKENS) if is_causal else n_q - t0
                    while tokens > 1 and scores_of(heads, t0, t0 + tokens) > SCORES_PER_CHUNK:
                        tokens = (tokens + 1) // 2
                    yield b * heads_k + h0, b * heads_k + min(heads_k, h0 + heads), t0, t0 + tokens
                    t0 += tokens

    native = _native_p_format(call, ops, block_n)
    out5 = out.view(batch, heads_k, group, n_q, head_dim).transpose(2, 3)  # (B, Hk, Nq, G, D): any layout of out
    v_scale5 = v_scale.float().view(batch, heads_k, 1, 1, head_dim) if v_scale is not None else None
    for p0, p1, t0, t1 in chunks():
        lo, hi = key_range(t0, t1)
        chunk = _Chunk(p0, p1, t0, t1, lo, hi, heads_k, group)
        out_rows = chunk.of_batch_and_heads(out5)[..., t0:t1, :, :]
        if hi <= lo:  # rows that see no key give zeros, as the twin's
            out_rows.zero_()
            continue
        p, row_sum = _chunk_softmax_rows(_products(ops, chunk), ops, call, chunk, block_n, blocks_per_range, native)
        acc = torch.bmm(p, ops.v[chunk.pairs, lo:hi])
        row_sum = torch.where(row_sum == 0, 1.0, row_sum).view(*out_rows.shape[:-1], 1)
        acc = acc.view(out_rows.shape)
        if v_scale5 is None:  # normalized straight into the output (no copy)
            torch.div(acc, row_sum, out=out_rows)
        else:
            torch.mul(acc.div_(row_sum), chunk.of_batch_and_heads(v_scale5), out=out_rows)
    return out


def _chunk_softmax_rows(products: Tensor, ops: _Operands, call: AttentionCall, chunk: _Chunk, block_n: int,
                        blocks_per_range: int, native: object | None) -> tuple[Tensor, Tensor]:
    """The chunk's weighted, rounded P (pairs, rows, keys) and row sums (pairs, rows, 1) from its Q·Kᵀ products (in
    place): by the native pass where ``native`` names its P format (``_native_p_format``), else by PyTorch ops."""
    if native is None:
        return _eager_softmax_rows(products, ops, call, chunk, block_n, blocks_per_range)
    t0, lo, hi = chunk.t0, chunk.lo, chunk.hi
    row_sum = torch.empty(products.shape[:2])
    bias = None if ops.drop_or_bias is None else ops.drop_or_bias[..., t0:chunk.t1, :, lo:hi]
    layout = RowLayout(chunk.p0, chunk.p1 - chunk.p0, chunk.heads_k, products.shape[1], chunk.group, t0, lo,
                       call.k.shape[2])
    causal = (call.causal_offset, call.window_left) if call.is_causal else None
    p = softmax_rows(products, layout, ops.k_scale[chunk.pairs, 0, lo:hi], ops.q_scale[chunk.pairs, chunk.rows, 0],
                     bias, ops.fold, block_n, blocks_per_range, causal, native, row_sum)
    return p, row_sum.unsqueeze(-1)


def _native_p_format(call: AttentionCall, ops: _Operands, block_n: int) -> object | None:
    """The native pass's code for the call's P (``cpu_softmax_rows.P_FORMATS``), or None where the PyTorch passes
    run it: a float8 P, a mask applied by dropping (scores that may not be finite), a key block that is not whole
    vectors, or no native pass on this machine."""
    v_dtype = call.v.dtype
    p_format = f"int8_{call.options.p_scale}" if v_dtype == torch.int8 else v_dtype
    if (p_format not in P_FORMATS or block_n % LANES
            or (ops.drop_or_bias is not None and ops.drop_or_bias.dtype == torch.bool)):
        return None
    return p_format if native_softmax_rows() is not None else None


def _eager_softmax_rows(products: Tensor, ops: _Operands, call: AttentionCall, chunk: _Chunk, block_n: int,
                        blocks_per_range: int) -> tuple[Tensor, Tensor]:
    """What ``cpu_softmax_rows`` computes in one native pass, as PyTorch ops: the chunk's weighted, rounded P
    (pairs, rows, keys) and its row sums (pairs, rows, 1). The path for P formats and masks the native pass does
    not take, and for machines where it cannot be built."""
    n_k = call.k.shape[2]
    is_causal, offset, window_left = call.is_causal, call.causal_offset, call.window_left
    t0, t1, lo, hi, group = chunk.t0, chunk.t1, chunk.lo, chunk.hi, chunk.group
    pairs = chunk.p1 - chunk.p0
    mask = None if ops.drop_or_bias is None else chunk.of_pairs(ops.drop_or_bias[:, :, t0:t1, :, lo:hi])
    s = (products.float() if products.dtype == torch.int32 else products)  # a cast, then an in-place product:
    s = s.mul_(ops.k_scale[chunk.pairs, :, lo:hi])  # faster than one type-promoting product
    s4 = s.view(pairs, t1 - t0, group, hi - lo)
    q_scale = ops.q_scale[chunk.pairs, chunk.rows]
    real_hi = min(hi, n_k)
    if not ops.fold:  # the query scale joins the scores (in one pass with an additive mask)
        if mask is not None and mask.dtype != torch.bool:
            real = s4[..., : real_hi - lo]
            torch.addcmul(mask[..., : real_hi - lo], real, q_scale.view(pairs, t1 - t0, group, 1), out=real)
        else:
            s.mul_(q_scale)
            if mask is not None:  # entries to drop, where a score may not be finite
                s4[..., : real_hi - lo].masked_fill_(mask[..., : real_hi - lo], -_INF)
    if hi > n_k:
        s4[..., n_k - lo:].fill_(-_INF)
    if is_causal:
        tokens_idx = torch.arange(t0, t1).view(-1, 1, 1)
        first_dropped = t0 + offset + 1  # the first key some row of the chunk does not see
        if first_dropped < hi:
            c0 = max(first_dropped, lo)
            _drop(s4[..., c0 - lo:], torch.arange(c0, hi) > tokens_idx + offset, ops.finite_scores)
        if window_left >= 0:
            last_dropped = t1 - 1 + offset - window_left  # keys below this are left of some row's window
            if last_dropped > lo:
                c1 = min(last_dropped, hi)
                _drop(s4[..., : c1 - lo], torch.arange(lo, c1) < tokens_idx + offset - window_left,
                      ops.finite_scores)

    n_pairs, n_rows, n_blocks = s.shape[0], s.shape[1], (hi - lo) // block_n
    s4 = s.view(n_pairs, n_rows, n_blocks, block_n)  # rows by key blocks
    block_max = s4.amax(dim=-1)
    running = _running_block_maxima(block_max, lo // block_n, blocks_per_range)
    row_max = block_max.amax(dim=-1, keepdim=True)
    row_max = torch.where(row_max == -_INF, 0.0, row_max)
    safe_running = torch.where(running == -_INF, 0.0, running)
    p_shift = call.pv.p_log2_scale
    if ops.fold:  # exponent (s − m_j)·q_scale, as the kernel's FFMA (up to rounding)
        weight = torch.exp2((running - row_max) * q_scale)  # the α's after block j
        s4.sub_(safe_running.unsqueeze(-1)).mul_(q_scale.unsqueeze(-1))
        if p_shift:
            s4.add_(p_shift)
    else:
        weight = torch.exp2(running - row_max)
        s4.sub_((safe_running - p_shift).unsqueeze(-1))
    s4.exp2_()  # P (times the format's P factor: 448 for e4m3)
    row_sum = (s4.sum(dim=-1) * weight).sum(dim=-1, keepdim=True)
    if call.v.dtype.is_floating_point:  # P rounded to V's type: 16-bit, or a float8 such as e4m3
        p = s4.to(call.v.dtype).float().mul_(weight.unsqueeze(-1))
    elif call.options.p_scale == "fixed":
        p = s4.mul_(float(INT8_MAX)).round_().mul_((weight / INT8_MAX).unsqueeze(-1))
    else:
        p_max = s4.amax(dim=-1)
        inv = torch.where(p_max > 0, float(INT8_MAX) / p_max, 0.0)
        p = s4.mul_(inv.unsqueeze(-1)).round_().mul_((weight * p_max / INT8_MAX).unsqueeze(-1))
    return p.view(n_pairs, n_rows, hi - lo), row_sum


def options_left_to_the_twin(options: KernelOptions) -> tuple[str, ...]:
    """The options set away from their defaults that this module does not compute with (``FAST_PATH_OPTIONS``)."""
    return tuple(field.name for field in fields(options) if field.name not in FAST_PATH_OPTIONS
                 and getattr(options, field.name) != getattr(DEFAULT_OPTIONS, field.name))


@functools.cache
def _log_twin_once(names: tuple[str, ...]) -> None:
    log.info("intfa: the fast CPU path does not compute with the kernel option(s) %s; running the step-by-step CPU "
             "implementation (the kernel's twin) for calls that set them", ", ".join(names))
