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
