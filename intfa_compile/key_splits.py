"""Split-K over the keys for decode-shaped attention: when to split, and how the parts are combined.

A decode step has one query row (or a few) per head, so the kernel's grid has one program per (batch, head):
far fewer than an H100/H200 has SMs, each walking every key alone. Splitting the keys into ranges, one
program per range, fills the GPU; each range runs the same online softmax and leaves its unnormalized
output, running maximum and row sum, and ``combine_key_splits`` merges them as FlashDecoding does
(Dao et al. 2023, "Flash-Decoding for long-context inference"): rescale every part to the largest maximum and
divide the summed outputs by the summed row sums.

The rule depends on shapes only, not on the device, so the CUDA kernel and the CPU implementation split the
same way and compute the same thing (P is quantized against the running maximum of its own range).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SPLIT_MAX_QUERIES = 16
"""Query rows per head up to which the keys are split (decode and speculative-decode steps)."""

SPLIT_KEY_UNIT = 128
"""Every range but the last holds a multiple of this many keys: a multiple of every key block size, so ranges
start on block boundaries whatever BLOCK_N the autotuner picks."""

MIN_SPLIT_KEYS = 512
"""Keys a range holds at least: below that the combine and the extra programs cost more than they save."""

TARGET_PROGRAMS = 264
"""Programs worth having in flight: two per SM of a 132-SM H100/H200. Fixed (not read from the device) so the
split, which the result depends on, is the same on every device."""


def key_splits(n_q: int, n_k: int, batch_heads: int) -> tuple[int, int]:
    """(ranges, keys per range) for attention of ``n_q`` queries over ``n_k`` keys in ``batch_heads`` (batch ·
    query heads) independent problems; (1, n_k) when splitting would not help. Up to ``SPLIT_MAX_QUERIES``
    queries fit one query tile, so unsplit there is one program per problem."""
    if n_q > SPLIT_MAX_QUERIES or batch_heads >= TARGET_PROGRAMS or n_k < 2 * MIN_SPLIT_KEYS:
        return 1, n_k
    wanted = min(math.ceil(TARGET_PROGRAMS / batch_heads), n_k // MIN_SPLIT_KEYS)
    return split_keys_evenly(n_k, wanted)


def split_keys_evenly(n_k: int, ranges: int) -> tuple[int, int]:
    """(ranges, keys per range) for about ``ranges`` ranges of ``n_k`` keys, each a multiple of
    ``SPLIT_KEY_UNIT`` but the last; fewer ranges when the keys do not fill them."""
    if ranges <= 1:
        return 1, n_k
    per_range = math.ceil(n_k / ranges / SPLIT_KEY_UNIT) * SPLIT_KEY_UNIT
    return math.ceil(n_k / per_range), per_range


def combine_key_splits(acc: Tensor, row_max: Tensor, row_sum: Tensor) -> Tensor:
    """Merge the ranges' parts: ``acc`` (S, ..., D) unnormalized fp32 outputs, ``row_max`` (S, ...) base-2 running
    maxima (−inf where a range saw no key), ``row_sum`` (S, ...) row sums against those maxima. Returns the
    normalized fp32 output (..., D): Σ 2^(m_s − M) acc_s / Σ 2^(m_s − M) l_s with M the largest maximum; zeros
    where no range saw a key (as the unsplit kernel), NaN where a part holds NaN.

    One function for the kernel's launcher and the CPU implementation, so both merge in the same order."""
    top = row_max.amax(dim=0)
    top = torch.where(top == float("-inf"), 0.0, top)
    weight = torch.exp2(row_max - top)
    total = (weight * row_sum).sum(dim=0)
    out = (weight.unsqueeze(-1) * acc).sum(dim=0)
    return out / torch.where(total == 0, 1.0, total).unsqueeze(-1)
