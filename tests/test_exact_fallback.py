"""intfa_compile/exact_fallback.py: what the op computes, exactly, when the kernel cannot take the shapes a dynamic
graph met at run time (a head dim above 256, value's head dim other than query's)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from intfa_compile.exact_fallback import band_mask, exact_attention


@pytest.mark.parametrize("causal_offset, window_left", [(0, -1), (3, -1), (2, 1)])
def test_the_band_keeps_what_the_causal_flag_and_window_keep(causal_offset, window_left):
    keep = band_mask(4, 7, causal_offset, window_left, torch.device("cpu"))
    i, j = torch.meshgrid(torch.arange(4), torch.arange(7), indexing="ij")
    expected = (j <= i + causal_offset) & ((j >= i + causal_offset - window_left) if window_left >= 0 else True)
    assert torch.equal(keep, expected)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_exact_attention_is_sdpa_with_the_band_and_the_run_time_scale(mask_kind, caplog):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 5, 320, generator=gen)
    k, v = (torch.randn(1, 2, 8, 320, generator=gen) for _ in range(2))
    mask = {"none": None, "bool": torch.rand(1, 1, 5, 8, generator=gen) > 0.2,
            "additive": torch.randn(1, 1, 5, 8, generator=gen)}[mask_kind]
    factor = torch.tensor(0.5)
    with caplog.at_level("WARNING", logger="intfa_compile"):
        out = exact_attention((q, k, v, factor), mask, True, 0.1, 3, -1, "head dim 320 is above the kernel's 256")
    band = band_mask(5, 8, 3, -1, q.device)
    full = band if mask is None else (mask & band if mask.dtype == torch.bool else mask.masked_fill(~band, -torch.inf))
    expected = F.scaled_dot_product_attention(q * 0.5, k, v, attn_mask=full, scale=0.1, enable_gqa=True)
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-6)
