"""How often the INT8 kernel's rare path runs: the share of (query tile, key block) steps in which some row of
the tile raises its running maximum, so the tile folds its INT32 P·V sums and rescales.

The pipe model (``pipe_model.py``) reports the steady state without the fold and, apart, the fold's cost; the
expected cost per block is steady + rate × fold. This measures the rate on the benchmark's inputs (i.i.d.
normal Q, K) and on inputs with an attention sink (one key that every query scores high, as trained decoders
have), with the kernel's tile (128 query rows) and key block (64).

    python -m benchmarks.fold_rate
"""

from __future__ import annotations

import torch

TILE_ROWS = 128
KEY_BLOCK = 64


def fold_rate(n: int, head_dim: int = 128, sink: float = 0.0, seed: int = 0) -> float:
    """Share of steps after a tile's first key block in which some row's running maximum grows.

    ``sink`` > 0 adds a shared direction to every query and puts key 0 along it, scaled by ``sink``.
    """
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, head_dim, generator=gen)
    k = torch.randn(n, head_dim, generator=gen)
    if sink:
        shared = torch.randn(head_dim, generator=gen)
        shared = shared / shared.norm()
        q = q + 2.0 * shared
        k[0] = sink * shared * head_dim**0.5
    scores = (q @ k.T) * head_dim**-0.5
    block_max = scores.view(n, n // KEY_BLOCK, KEY_BLOCK).amax(-1)
    running = block_max.cummax(-1).values
    grew = running[:, 1:] > running[:, :-1]
    per_tile = grew.view(n // TILE_ROWS, TILE_ROWS, -1).any(1)
    return per_tile.float().mean().item()


def main() -> None:
    print("| N | i.i.d. normal Q, K | with an attention sink |")
    print("|---|---|---|")
    for n in (1024, 4096, 16384):
        print(f"| {n} | {fold_rate(n):.2f} | {fold_rate(n, sink=4.0):.2f} |")


if __name__ == "__main__":
    main()
