"""Constants that fix the arithmetic of INT-FlashAttention, shared by the Triton kernel and its CPU twin.

The result of blockwise online softmax with a quantized P depends on the key block size (P is
quantized against the running maximum of the blocks seen so far), so the kernel and the CPU
implementation must agree on it to compute the same thing.
"""

import struct
from typing import Literal, get_args

from .pv_formats import PVFormat

INT8_MAX = 127
"""Symmetric INT8 range is [-127, 127]; -128 is never produced."""

KV_BLOCK_SIZE = 64
"""Keys per block of the online softmax (the kernel's BLOCK_N) where 128 would not fit (see ``default_kv_block``)."""

KV_BLOCK_SIZES = (16, 32, 64, 128)
"""Key block sizes a caller may fix (``kv_block``). 64 and 128 are the fast ones (smaller blocks only add softmax
overhead per tensor-core instruction); 16 and 32 exist for tests that compare kernel and CPU implementation at
small shapes."""

KV_BLOCK_AUTOTUNE = -1
"""``kv_block`` value that lets the CUDA kernel's autotuner pick 64 or 128 keys per block by timing (recorded in
``kernels.int8_flash_attention.tuned_tiles()``); the result then depends on that choice. Elsewhere it means
``default_kv_block``."""


def default_kv_block(block_d: int, pv: PVFormat) -> int:
    """Keys per block when the caller fixes none (``kv_block`` 0), from the padded head dim and the P·V format: 128
    where a 128-key tile compiles without spills (up to ``pv.widest_128_key_head_dim``: 128; 64 with FP8 P·V, whose e4m3
    P and second fp32 accumulator spill at 128), else 64. The per-pipe model (``benchmarks/pipe_model.py``) puts 128
    keys at 1.53× the tensor time against 1.75× for 64 (d = 128, full INT8, sm_90): the block's bookkeeping is spread
    over twice the scores. A rule of shapes only, so every device computes the same thing."""
    return 128 if block_d <= pv.widest_128_key_head_dim else KV_BLOCK_SIZE


def resolve_kv_block(kv_block: int, block_d: int, pv: PVFormat) -> int:
    """The key block a call runs with: ``kv_block`` when it is fixed, ``default_kv_block`` for 0 and for
    ``KV_BLOCK_AUTOTUNE`` (which only the CUDA kernel's autotuner acts on)."""
    return kv_block if kv_block > 0 else default_kv_block(block_d, pv)

LOG2E = 1.4426950408889634
"""log2(e): the kernel works in base 2 (exp2), with this folded into Q's scale."""

P_DEQUANT_FIXED = 1.0 / INT8_MAX
"""The paper's fixed scale of the softmax block P, whose entries lie in [0, 1]."""

PScale = Literal["fixed", "row_block"]
"""How P is scaled: "fixed" = 1/127 (paper); "row_block" = each row's block maximum / 127 (``config.p_scale``)."""
P_SCALE_MODES: tuple[str, ...] = get_args(PScale)

FP32_LOWEST = -3.4028234663852886e38
"""The most negative finite fp32. An additive mask entry scaled to base 2 is clamped here rather than
overflowing to -inf, so a row masked with ``finfo.min`` (as Hugging Face masks) averages uniformly as
eager softmax does, while a true -inf still removes its key."""

BF16_MASK_FLOOR = -2.352733552539301e38
"""The most negative bfloat16 whose base-2 form (times log2(e) in fp32) stays finite: a bfloat16 mask entry below
it (as ``finfo(bfloat16).min``, -3.39e38) counts as this value, −inf and NaN kept. The floor is applied before the
multiply, on the entry's 16 bits (``BF16_MASK_FLOOR_BITS``), where the kernel's registers can afford it: clamping
the fp32 product at ``FP32_LOWEST`` (as for fp32 masks) spilled the d = 128 tile with a 2-D mask on Triton 3.9. A
row masked entirely this way still averages uniformly, as eager softmax does. An fp16 entry (at most 65504 in
magnitude) never needs a floor."""

BF16_MASK_FLOOR_BITS = struct.unpack("<i", struct.pack("<f", BF16_MASK_FLOOR))[0] >> 16
"""``BF16_MASK_FLOOR``'s bits as an int16 (−207, 0xFF31: a bfloat16 is the top half of its fp32's bits):
negative bfloat16 values order by magnitude as their int16 bits rise from −0 (−32768) to −``finfo.max`` (−129);
−inf is −128 and NaNs lie above it."""

FP32_TINY = 1.1754943508222875e-38
"""The smallest normal fp32: stands in for a zero query scale where the scale multiplies a −inf score."""


def folds_query_scale(attn_mask: object, sm_scale: float) -> bool:
    """Whether the kernel (and its CPU twin) keep scores without the per-row query scale and apply it inside
    the exponent (one FFMA per score instead of a multiply and a subtract). Valid when the scale is positive
    (maxima commute with it) and no mask adds to the scores in logit units."""
    return attn_mask is None and sm_scale > 0


MAX_HEAD_DIM = 256
"""The largest head dim the INT8 kernel takes (its tiles' registers and shared memory)."""


def padded_head_dim(head_dim: int) -> int:
    """The head dim the kernels' tiles use (BLOCK_D): the next power of two, at least 32, the smallest
    reduction an INT8 tensor-core GEMM takes."""
    return max(32, 1 << (head_dim - 1).bit_length())


def lazy_pv_accumulation(head_dim: int) -> bool:
    """Whether quantized P·V with the fixed P scale sums across key blocks in a second accumulator (INT32 for
    INT8, fp32 for FP8) folded into the fp32 one only when a row maximum grows. That accumulator needs as many
    registers as the fp32 one; above a padded head dim of 128 the two would spill, so there P·V is added
    block by block (same values, other fp32 rounding)."""
    return padded_head_dim(head_dim) <= 128

PV_FP8_FOLD_BLOCKS = 16
"""pv_format="fp8": key blocks the tensor cores' fp32 P·V accumulator sums on its own before it is added to
the main fp32 accumulator. Hopper's FP8 MMA keeps about 22 significant bits in its accumulator (SageAttention2,
DeepSeek-V3 report the same); folding every 16 blocks bounds what that loses to far below P's e4m3 rounding."""

QKGranularity = Literal["per_token", "per_block", "per_head"]
"""Groups of tokens sharing one Q or K scale (``config.qk_granularity``)."""
QK_GRANULARITIES: tuple[str, ...] = get_args(QKGranularity)

VGranularity = Literal["per_channel", "per_tensor"]
"""Groups of channels sharing one V scale (``config.v_granularity``)."""
V_GRANULARITIES: tuple[str, ...] = get_args(VGranularity)

QKRotation = Literal["none", "hadamard"]
"""Orthogonal rotations of the head dim applied to Q and K before they are quantized (``config.qk_rotation``)."""
QK_ROTATIONS: tuple[str, ...] = get_args(QKRotation)

QKBits = Literal[8, 4]
"""Bits of the Q and K integers (``config.qk_bits``)."""
QK_BITS: tuple[int, ...] = get_args(QKBits)


def check_choice(name: str, value: object, allowed: tuple) -> None:
    """Raise ``ValueError`` naming ``name`` and the allowed values unless ``value`` is one of them: an unknown
    granularity, format or bit width must not fall through to some default."""
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


MAX_HADAMARD_BLOCK = 128
"""The largest Walsh–Hadamard block: the kernel's constant operand is one block (or 16 channels) square, and a
128 × 128 matrix already spreads an outlier over 128 channels."""


def hadamard_block(head_dim: int) -> int:
    """The block of the head-dim rotation: the largest power of two dividing ``head_dim``, at most
    ``MAX_HADAMARD_BLOCK`` (all of it for 32, 64, 128; 32 for 96; 128 for 256)."""
    return min(head_dim & -head_dim, MAX_HADAMARD_BLOCK)


def chunk_width(head_dim: int) -> int:
    """Channels the kernel rotates at a time: one block, or 16 (the smallest tensor-core operand) when blocks are
    smaller; a whole number of blocks either way."""
    return max(hadamard_block(head_dim), 16)
