"""intfa_compile/reference.py: the fp64 attention every bound is measured against, and the error metrics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from intfa_compile.reference import error_metrics, reference_attention


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive", "causal"])
def test_reference_is_sdpa_in_fp64_with_gqa(mask_kind):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 9, 16, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 11, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = {"none": None, "causal": None, "bool": torch.rand(2, 1, 9, 11, generator=gen) > 0.3,
            "additive": torch.randn(2, 4, 9, 11, generator=gen, dtype=torch.float64)}[mask_kind]
    ref = reference_attention(q, k, v, mask, mask_kind == "causal", scale=0.3)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask_kind == "causal", scale=0.3,
                                              enable_gqa=True)
    ok = ~expected.isnan()  # SDPA gives NaN where a boolean mask drops a whole row; the reference gives zeros
    assert torch.allclose(ref.out[ok], expected[ok], rtol=1e-12, atol=1e-12)
    assert torch.allclose(ref.probs.sum(-1)[ok[..., 0]], torch.ones(()).double())


def test_fully_masked_rows_give_zeros_and_a_zero_row_sum():
    q, k, v = (torch.randn(1, 1, 3, 8) for _ in range(3))
    keep = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    keep[..., 1, :] = False
    ref = reference_attention(q, k, v, keep)
    assert (ref.out[0, 0, 1] == 0).all() and ref.row_sum[0, 0, 1, 0] == 0 and (ref.row_sum[0, 0, [0, 2]] >= 1).all()


def test_error_metrics():
    ref = torch.tensor([1.0, -2.0, 2.0])
    assert error_metrics(ref, ref).rel_l2 == 0 and error_metrics(ref, ref).cosine == pytest.approx(1.0)
    metrics = error_metrics(ref * 1.1, ref)
    assert metrics.rel_l2 == pytest.approx(0.1) and metrics.mre == pytest.approx(0.1)
