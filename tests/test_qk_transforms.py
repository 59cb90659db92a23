"""The exact transforms of Q and K before quantization: the Hadamard rotation (``qk_rotation``), Q centring
(``smooth_q``) and the 16-bit V of half-INT8 (``value_16bit``), as functions, through ``int8_sdpa`` and through
the backend."""

from __future__ import annotations

import logging
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import intfa_compile
from intfa_compile import ops
from intfa_compile.cpu_attention import int8_flash_attention_cpu
from intfa_compile.numerics import hadamard_block
from intfa_compile.ops import centring_fits, int8_sdpa
from intfa_compile.quantize import center_queries, value_16bit
from intfa_compile.reference import reference_attention
from intfa_compile.rotation import hadamard_matrix, hadamard_signs, rotate_hadamard


@pytest.mark.parametrize("head_dim", [16, 32, 64, 96, 128, 256])
def test_rotation_is_orthonormal_and_keeps_every_score(head_dim):
    rotation = rotate_hadamard(torch.eye(head_dim, dtype=torch.float64))
    assert torch.allclose(rotation @ rotation.T, torch.eye(head_dim, dtype=torch.float64), atol=1e-12)
    q, k = torch.randn(2, 5, head_dim, dtype=torch.float64), torch.randn(2, 7, head_dim, dtype=torch.float64)
    scores = rotate_hadamard(q) @ rotate_hadamard(k).transpose(-1, -2)
    assert torch.allclose(scores, q @ k.transpose(-1, -2), rtol=1e-10, atol=1e-10)
    assert rotate_hadamard(q.half()).dtype == torch.float32  # 16-bit inputs rotate with fp32 sums, as the kernel


def test_rotation_stays_within_its_blocks_and_its_matrix_is_exact_in_16_bit():
    matrix = hadamard_matrix(96, torch.device("cpu"))
    assert hadamard_block(96) == 32 and hadamard_block(128) == 128 and hadamard_block(256) == 128
    assert set(matrix.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert (matrix[:32, 32:] == 0).all() and (matrix[32:64, :32] == 0).all()
    assert torch.equal(matrix.to(torch.bfloat16).float(), matrix)


@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_rotation_spreads_an_outlier_channel_and_a_shared_offset(head_dim):
    spike = torch.zeros(head_dim)
    spike[3] = 1.0
    assert torch.allclose(rotate_hadamard(spike).abs(), torch.full((head_dim,), head_dim ** -0.5))
    # Without the sign flips an offset shared by every channel would become a spike of √d in one channel.
    assert hadamard_signs(head_dim, torch.device("cpu")).abs().eq(1).all()
    assert rotate_hadamard(torch.ones(head_dim)).abs().max() <= 3.75 < head_dim ** 0.5


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


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def test_centring_recovers_the_resolution_a_shared_query_offset_takes():
    # An offset of 5σ in every query token sets each token's INT8 range, leaving the part that varies about a
    # sixth of it; centred, the range is the variation's own, so the Q·Kᵀ quantization error shrinks several-fold.
    torch.manual_seed(1)
    q = torch.randn(1, 2, 64, 64) + 5 * torch.randn(64)
    k, v = torch.randn(1, 2, 64, 64), torch.randn(1, 2, 64, 64)
    reference = reference_attention(q, k, v).out
    plain, centred = (_relative_error(int8_sdpa(q, k, v, smooth_q=flag), reference) for flag in (False, True))
    assert centred < plain / 3


def test_rotation_recovers_the_resolution_an_outlier_channel_takes():
    # One channel 30× the others sets every token's INT8 range (about 30·|x₅| ≈ 24σ); rotated, it is spread over
    # all 64 channels, whose largest entry is then about 2.5·√((63 + 900·x₅²)/64) ≈ 9σ: a range 2–3× narrower.
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 64, 64), torch.randn(1, 2, 64, 64), torch.randn(1, 2, 64, 64)
    q[..., 5] *= 30
    k[..., 5] *= 30
    reference = reference_attention(q, k, v).out
    plain, rotated = (_relative_error(int8_sdpa(q, k, v, qk_rotation=r), reference) for r in ("none", "hadamard"))
    assert rotated < plain / 2


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
        return int8_flash_attention_cpu(call, *args, **kwargs)

    with mock.patch.object(ops, "int8_flash_attention_cpu", counted):
        out = compiled(q, k, v, mask)
    assert calls == [torch.bfloat16]  # INT8 Q·Kᵀ, 16-bit P·V (the default)
    reference = reference_attention(q, k, v, mask).out
    baseline = int8_sdpa(q, k, v, mask)
    # The transforms are exact: what differs from the default is quantization noise of the same size.
    assert _relative_error(out, reference) < 2 * _relative_error(baseline, reference) + 1e-3


@pytest.mark.parametrize("option", [{"smooth_q": True}, {"qk_rotation": "hadamard"}])
def test_static_scales_refuse_the_transforms(option):
    scales = intfa_compile.AttentionScales({})
    with pytest.raises(ValueError, match=next(iter(option))):
        intfa_compile.config.resolve({"scales": scales, **option})
