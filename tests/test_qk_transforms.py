"""The exact transforms of Q and K before quantization through ``int8_sdpa`` and the backend: Q centring
(``smooth_q``), the 16-bit V of half-INT8 (``value_16bit``) and the rotation's place among them (the rotation
itself: ``test_rotation.py``)."""

from __future__ import annotations

import logging
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import intfa_compile
from intfa_compile import ops
from intfa_compile.cpu_fast_attention import fast_int8_attention_cpu
from intfa_compile.ops import centring_fits, int8_sdpa
from intfa_compile.quantize import center_queries, value_16bit
from intfa_compile.reference import error_metrics, reference_attention


@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
@pytest.mark.parametrize("factor", [None, -0.7])
def test_centred_queries_with_their_mask_give_the_same_softmax(mask_kind, factor):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 9, 16, dtype=torch.float64) + 4.0  # GQA: 4 query heads on 2 KV heads
    k = torch.randn(2, 2, 11, 16, dtype=torch.float64)
    mask = {None: None, "bool": torch.rand(2, 1, 1, 11) > 0.3, "float": torch.randn(2, 1, 1, 11)}[mask_kind]
    factor_t = None if factor is None else torch.tensor(factor)
    centred, centred_mask = center_queries(q, k, mask, 0.25, factor_t)
    scale = 0.25 * (1.0 if factor is None else factor)
    expected = reference_attention(q, k, torch.eye(11, dtype=torch.float64).expand(2, 2, 11, 11), mask,
                                   scale=scale).probs
    got = reference_attention(centred.double(), k, torch.eye(11, dtype=torch.float64).expand(2, 2, 11, 11),
                              centred_mask, scale=scale).probs
    assert centred_mask.dtype == torch.float32 and centred_mask.shape == (2, 4, 1, 11)
    assert centred.double().mean(dim=-2).abs().max() < 1e-5
    assert torch.allclose(got, expected, atol=1e-5)


def test_centring_only_where_the_mask_stays_one_row_per_head(caplog):
    padding = torch.ones(2, 1, 1, 8, dtype=torch.bool)
    assert centring_fits(None, {}) and centring_fits(padding, {}) and centring_fits(padding.expand(2, 1, 8, 8), {})
    assert not centring_fits(padding.expand(2, 1, 8, 8).contiguous(), {})
    assert not centring_fits(None, {"exact_query": torch.zeros(1)})
    q = torch.randn(1, 2, 8, 16)
    with caplog.at_level(logging.INFO, logger="intfa_compile"):
        int8_sdpa(q, q, q, torch.ones(1, 1, 8, 8, dtype=torch.bool), smooth_q=True)
    assert any("smooth_q not applied" in record.getMessage() for record in caplog.records)


def test_centring_recovers_the_resolution_a_shared_query_offset_takes():
    # An offset of 5σ in every query token sets each token's INT8 range, leaving the part that varies about a
    # sixth of it; centred, the range is the variation's own, so the Q·Kᵀ quantization error shrinks several-fold.
    torch.manual_seed(1)
    q = torch.randn(1, 2, 64, 64) + 5 * torch.randn(64)
    k, v = torch.randn(1, 2, 64, 64), torch.randn(1, 2, 64, 64)
    reference = reference_attention(q, k, v).out
    plain, centred = (error_metrics(int8_sdpa(q, k, v, smooth_q=flag), reference).rel_l2 for flag in (False, True))
    assert centred < plain / 3


def test_half_int8_runs_a_16_bit_product_for_fp32_models():
    assert value_16bit(torch.ones(2, dtype=torch.float32)).dtype == torch.bfloat16
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.ones(2, dtype=dtype)
        assert value_16bit(x) is x
    seen = []

    def op(q, k, v, *args, **kwargs):
        seen.append(v.dtype)
        return torch.ops.intfa.int8_attention(q, k, v, *args, **kwargs)

    q = k = v = torch.randn(1, 1, 8, 16)
    int8_sdpa(q, k, v, attention_op=op)
    assert seen == [torch.bfloat16]


@pytest.mark.parametrize("options", [{"qk_rotation": "hadamard"}, {"smooth_q": True},
                                     {"smooth_q": True, "smooth_k": True, "qk_rotation": "hadamard"}])
def test_backend_runs_the_transforms_in_int8(options):
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 4, 48, 32) for _ in range(3))
    mask = torch.rand(2, 1, 1, 48) > 0.2

    def attention(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    torch._dynamo.reset()
    compiled = torch.compile(attention, backend="intfa", options=options)
    calls = []

    def counted(call, *args, **kwargs):
        calls.append(call.v.dtype)
        return fast_int8_attention_cpu(call, *args, **kwargs)

    with mock.patch.object(ops, "fast_int8_attention_cpu", counted):
        out = compiled(q, k, v, mask)
    assert calls == [torch.bfloat16]  # INT8 Q·Kᵀ, 16-bit P·V (the default)
    reference = reference_attention(q, k, v, mask).out
    baseline = int8_sdpa(q, k, v, mask)
    # The transforms are exact: what differs from the default is quantization noise of the same size.
    assert error_metrics(out, reference).rel_l2 < 2 * error_metrics(baseline, reference).rel_l2 + 1e-3


@pytest.mark.parametrize("option", [{"smooth_q": True}, {"qk_rotation": "hadamard"}])
def test_static_scales_refuse_the_transforms(option):
    scales = intfa_compile.AttentionScales({})
    with pytest.raises(ValueError, match=next(iter(option))):
        intfa_compile.config.resolve({"scales": scales, **option})
