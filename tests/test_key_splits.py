"""intfa_compile/key_splits.py: when decode-shaped attention splits its keys, and how the parts merge."""

from __future__ import annotations

import pytest
import torch

from intfa_compile.key_splits import (
    MIN_SPLIT_KEYS,
    SPLIT_KEY_UNIT,
    SPLIT_MAX_QUERIES,
    TARGET_PROGRAMS,
    combine_key_splits,
    key_splits,
    split_keys_evenly,
)


@pytest.mark.parametrize("n_q, n_k, batch_heads", [(1, 4096, 8), (16, 2048, 32), (1, 100_000, 1), (4, 1024, 2)])
def test_decode_shapes_split_into_whole_units_that_cover_the_keys(n_q, n_k, batch_heads):
    ranges, per_range = key_splits(n_q, n_k, batch_heads)
    assert ranges > 1 and per_range % SPLIT_KEY_UNIT == 0 and per_range >= MIN_SPLIT_KEYS
    assert (ranges - 1) * per_range < n_k <= ranges * per_range  # every range holds keys
    assert ranges * batch_heads <= TARGET_PROGRAMS + batch_heads


@pytest.mark.parametrize("n_q, n_k, batch_heads", [(SPLIT_MAX_QUERIES + 1, 4096, 8), (1, 2 * MIN_SPLIT_KEYS - 1, 8),
                                                   (1, 4096, TARGET_PROGRAMS)])
def test_prefill_short_keys_and_full_grids_stay_whole(n_q, n_k, batch_heads):
    assert key_splits(n_q, n_k, batch_heads) == (1, n_k)


def test_even_splits_drop_ranges_the_keys_do_not_fill():
    assert split_keys_evenly(1000, 1) == (1, 1000)
    assert split_keys_evenly(300, 4) == (3, 128)  # 4 ranges of 128 would leave the last empty


def _softmax_parts(scores: torch.Tensor, values: torch.Tensor, bounds: list[tuple[int, int]]):
    accs, maxima, sums = [], [], []
    for start, stop in bounds:
        part = scores[..., start:stop]
        top = part.amax(dim=-1)
        weights = torch.exp2(part - top.unsqueeze(-1))
        accs.append(weights @ values[start:stop])
        maxima.append(top)
        sums.append(weights.sum(dim=-1))
    return torch.stack(accs), torch.stack(maxima), torch.stack(sums)


def test_merged_parts_are_the_softmax_over_all_keys():
    gen = torch.Generator().manual_seed(0)
    scores, values = torch.randn(3, 700, generator=gen, dtype=torch.float64) * 4, torch.randn(700, 8, generator=gen,
                                                                                                dtype=torch.float64)
    merged = combine_key_splits(*_softmax_parts(scores, values, [(0, 256), (256, 512), (512, 700)]))
    whole = torch.softmax(scores * torch.log(torch.tensor(2.0, dtype=torch.float64)), dim=-1) @ values
    assert torch.allclose(merged, whole, rtol=1e-12, atol=1e-12)


def test_rows_no_range_saw_give_zeros_and_nan_stays_nan():
    acc = torch.zeros(2, 2, 4)
    row_max = torch.tensor([[float("-inf"), 0.0], [float("-inf"), 1.0]])
    row_sum = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    acc[1, 1] = float("nan")
    out = combine_key_splits(acc, row_max, row_sum)
    assert torch.equal(out[0], torch.zeros(4)) and out[1].isnan().all()
