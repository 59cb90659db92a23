"""Constants that fix the arithmetic of INT-FlashAttention, shared by the Triton kernel and its CPU twin.

The result of blockwise online softmax with a quantized P depends on the key block size (P is
quantized against the running maximum of the blocks seen so far), so the kernel and the CPU
implementation must agree on it to compute the same thing.
"""

INT8_MAX = 127
"""Symmetric INT8 range is [-127, 127]; -128 is never produced."""

KV_BLOCK_SIZE = 64
"""Keys per block of the online softmax (the kernel's BLOCK_N)."""

LOG2E = 1.4426950408889634
"""log2(e): the kernel works in base 2 (exp2), with this folded into Q's scale."""

P_DEQUANT_FIXED = 1.0 / INT8_MAX
"""The paper's fixed scale of the softmax block P, whose entries lie in [0, 1]."""

P_SCALE_MODES = ("fixed", "row_block")
"""How P is scaled: "fixed" = 1/127 (paper); "row_block" = each row's block maximum / 127."""

FP32_LOWEST = -3.4028234663852886e38
"""The most negative finite fp32. An additive mask entry scaled to base 2 is clamped here rather than
overflowing to -inf, so a row masked with ``finfo.min`` (as Hugging Face masks) averages uniformly as
eager softmax does, while a true -inf still removes its key."""

FP32_TINY = 1.1754943508222875e-38
"""The smallest normal fp32: stands in for a zero query scale where the scale multiplies a −inf score."""


def folds_query_scale(attn_mask: object, sm_scale: float) -> bool:
    """Whether the kernel (and its CPU twin) keep scores without the per-row query scale and apply it inside
    the exponent (one FFMA per score instead of a multiply and a subtract). Valid when the scale is positive
    (maxima commute with it) and no mask adds to the scores in logit units."""
    return attn_mask is None and sm_scale > 0


def int32_pv_accumulation(head_dim: int) -> bool:
    """Whether full INT8 with the fixed P scale sums P·V in INT32 across key blocks (folded into fp32 only when a
    row maximum grows). The INT32 accumulator needs as many registers as the fp32 one; above a padded head dim
    of 128 the two would spill, so there P·V is converted to fp32 block by block (same values, other fp32
    rounding). The kernel pads head dims to a power of two of at least 32."""
    return max(32, 1 << (head_dim - 1).bit_length()) <= 128
