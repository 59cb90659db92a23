"""The quantizers: the granularities, bit widths and K smoothing that the ablation toggles choose."""

from __future__ import annotations

import pytest
import torch

from intfa_compile.quantize import (
    K_BLOCK_TOKENS,
    quantize_qk,
    quantize_v,
    smooth,
)
from intfa_compile.reference import reference_attention


@pytest.mark.parametrize("granularity", ["per_token", "per_block", "per_head"])
@pytest.mark.parametrize("bits", [8, 4])
def test_qk_round_trip_error_is_half_a_step(granularity, bits):
    x = torch.randn(2, 3, 150, 32) * torch.rand(2, 3, 150, 1) * 4
    xq, scale = quantize_qk(x, granularity, bits, K_BLOCK_TOKENS)
    int_max = 2 ** (bits - 1) - 1
    assert xq.dtype == torch.int8 and xq.abs().max() <= int_max
    assert scale.shape == x.shape[:-1]
    error = (xq.float() * scale.unsqueeze(-1) - x).abs()
    assert (error <= scale.unsqueeze(-1) / 2 * (1 + 1e-6)).all()


def test_granularities_share_scales_as_named():
    x = torch.randn(1, 2, 150, 16)
    _, per_block = quantize_qk(x, "per_block", block=64)
    assert (per_block[..., :64] == per_block[..., :1]).all() and (per_block[..., 128:] == per_block[..., 128:129]).all()
    assert not torch.equal(per_block[..., 0], per_block[..., 64])
    _, per_head = quantize_qk(x, "per_head")
    assert (per_head == per_head[..., :1]).all()
    assert torch.equal(per_head[..., 0], x.abs().amax(dim=(-1, -2)) / 127)
    assert torch.equal(quantize_qk(x)[1], x.abs().amax(dim=-1) / 127)  # per token by default


def test_v_per_tensor_shares_one_scale_per_head():
    x = torch.randn(2, 3, 40, 16)
    _, per_tensor = quantize_v(x, "per_tensor")
    assert (per_tensor == per_tensor[..., :1]).all()
    assert torch.equal(per_tensor[..., 0], x.abs().amax(dim=(-1, -2)) / 127)
    assert torch.equal(quantize_v(x)[1], x.abs().amax(dim=-2) / 127)  # per channel by default


def test_zero_rows_get_unit_scale_and_zero_values():
    x = torch.zeros(1, 1, 4, 8)
    xq, scale = quantize_qk(x)
    assert (scale == 1).all() and (xq == 0).all()


def test_smoothing_k_leaves_attention_unchanged():
    """Softmax is invariant to a per-query constant: q·(k − mean k) = q·k − q·mean k."""
    q, k, v = torch.randn(3, 1, 2, 50, 16, dtype=torch.float64)
    k = k + 5.0
    assert torch.allclose(reference_attention(q, smooth(k), v).out, reference_attention(q, k, v).out, atol=1e-12)


@pytest.mark.parametrize("kwargs, name", [({"qk_granularity": "per_tokens"}, "qk_granularity"),
                                          ({"v_granularity": "per_chanel"}, "v_granularity"),
                                          ({"qk_bits": 6}, "qk_bits"), ({"qk_bits": True}, "qk_bits"),
                                          ({"pv_format": "int4"}, "pv_format")])
def test_unknown_choices_raise_where_they_enter(kwargs, name):
    """A misspelt granularity, bit width or format raises at the public entry, naming the setting, instead of
    falling through to some other granularity."""
    from intfa_compile.ops import int8_sdpa

    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match=name):
        int8_sdpa(q, q, q, **kwargs)
