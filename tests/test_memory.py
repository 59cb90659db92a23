"""The INT8 path never materializes the N×N score matrix (peak single allocation, CPU, N = 8192)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import intfa_compile

N, HEAD_DIM = 8192, 64
SCORES_BYTES = N * N * 4  # one fp32 N×N matrix: 256 MiB


def _largest_allocation(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(event.cpu_memory_usage for event in prof.events() if event.cpu_memory_usage > 0)


def test_int8_attention_allocates_no_n_by_n_buffer():
    q, k, v = torch.randn(3, 1, 1, N, HEAD_DIM)
    int8 = _largest_allocation(lambda: intfa_compile.int8_sdpa(q, k, v, is_causal=True))
    with sdpa_kernel(SDPBackend.MATH):
        math = _largest_allocation(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert math >= SCORES_BYTES  # the yardstick: the math path does materialize the scores
    # At most one N × 128-key block in fp64 (the CPU implementation rounds P from the exact product), 1/32 of N×N fp32.
    assert int8 <= N * 128 * 8, f"largest INT8-path allocation {int8} bytes"
