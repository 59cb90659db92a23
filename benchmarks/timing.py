"""Wall-clock timing on the CPU, shared by the benchmarks that run there (CUDA timings use triton's do_bench)."""

from __future__ import annotations

import time
from collections.abc import Callable


def samples_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (compilation, caches, allocator)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times
