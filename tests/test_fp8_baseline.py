"""The FP8 baseline kernel of the benchmark (benchmarks/fp8_attention.py) against its PyTorch reference
and fp64 attention, so that the speed table compares against a kernel that computes what it claims.

On CPU the kernel runs in Triton's interpreter; on a GPU with FP8 tensor cores (sm_89+) it is compiled.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.fp8_attention import (
    FP8_DTYPE,
    FP8_MAX,
    flash_attention_16bit,
    fp8_attention,
    fp8_attention_reference,
    fp8_flash_attention,
    quantize_fp8,
)
from intfa_compile.reference import reference_attention
from tests.helpers import FP32_SLACK, half_int8_bound

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cuda" and torch.cuda.get_device_capability() < (8, 9):
    pytest.skip("FP8 tensor cores need sm_89 or newer", allow_module_level=True)

# One e4m3 step of P: a P entry whose exp2 differs by an ulp between the kernel and the reference
# can round to the neighbouring e4m3 value, at most 2**-4 away for P ≤ 1 (3 mantissa bits).
E4M3_STEP_BELOW_ONE = 2.0**-4


def _quantized(n_q: int, n_k: int, head_dim: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, n, head_dim, generator=gen) for n in (n_q, n_k, n_k))
    (q8, dq), (k8, dk) = quantize_fp8(q), quantize_fp8(k)
    v8, dv = quantize_fp8(v, sequence_contiguous=True)
    return q8, k8, v8, dq, dk, dv


def _dequantized(x8: torch.Tensor, descale: torch.Tensor) -> torch.Tensor:
    return x8.double() * descale.double()[..., None, None]


@pytest.mark.parametrize("n_q,n_k", [(1, 1), (64, 64), (70, 200), (200, 70), (130, 130)])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("is_causal", [False, True])
def test_fp8_kernel_matches_its_reference_and_fp64(n_q, n_k, head_dim, is_causal):
    q8, k8, v8, dq, dk, dv = _quantized(n_q, n_k, head_dim, seed=n_q * 3 + n_k + head_dim)
    sm_scale = head_dim**-0.5
    on_device = [t.to(DEVICE) for t in (q8, k8, v8, dq, dk, dv)]
    out = fp8_flash_attention(*on_device, is_causal, sm_scale, torch.float32).cpu()
    ref = fp8_attention_reference(q8, k8, v8, dq, dk, dv, is_causal, sm_scale)

    q_hat, k_hat, v_hat = _dequantized(q8, dq), _dequantized(k8, dk), _dequantized(v8, dv)
    exact = reference_attention(q_hat, k_hat, v_hat, None, is_causal, sm_scale)
    # Kernel vs reference: fp32 slack, plus one e4m3 step of one P entry (divided by l ≥ 1).
    allowed = E4M3_STEP_BELOW_ONE * v_hat.abs().amax(-2, keepdim=True) + FP32_SLACK * ref.abs().amax(-1, keepdim=True)
    assert ((out.double() - ref.double()).abs() <= allowed).all()
    # Against fp64 on the same e4m3 inputs, rounding P to e4m3 is the only error: the half-INT8 bound with
    # e4m3's unit roundoff (2**-4) and subnormal step.
    bound = half_int8_bound(q_hat, k_hat, v_hat, None, is_causal, sm_scale, FP8_DTYPE)
    assert ((out.double() - exact.out).abs() <= bound).all()
    assert ((ref.double() - exact.out).abs() <= bound).all()


def test_quantize_fp8_uses_the_full_e4m3_range_per_head_and_lays_v_out_sequence_major():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 50, 64, generator=gen) * torch.tensor([1.0, 10.0, 0.01])[:, None, None]
    x8, descale = quantize_fp8(x, sequence_contiguous=True)
    assert x8.dtype == FP8_DTYPE and descale.shape == (2, 3)
    assert torch.equal(x8.float().abs().amax(dim=(-2, -1)), torch.full((2, 3), FP8_MAX))
    assert x8.stride(-2) == 1 and x8.shape == x.shape
    # Rounding to e4m3 errs by at most 2**-4 relative for normal values, half a subnormal step below.
    err = (x8.double() * descale.double()[..., None, None] - x.double()).abs()
    assert (err <= 2.0**-4 * x.double().abs() + 2.0**-10 * descale.double()[..., None, None]).all()


def test_fp8_attention_end_to_end_is_fp8_accurate():
    """Quantization included, against fp64 attention of the original inputs: the error FP8 costs."""
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 96, 64, generator=gen).to(DEVICE) for _ in range(3))
    out = fp8_attention(q, k, v, is_causal=True).cpu()
    exact = reference_attention(q.cpu().double(), k.cpu().double(), v.cpu().double(), None, True).out
    cos = torch.nn.functional.cosine_similarity(out.double().flatten(), exact.flatten(), dim=0).item()
    # Each of Q, K, V, P carries ≤ 2**-4 relative rounding; the output's relative L2 error stays within a few of
    # those steps, so cosine ≥ 1 − (4·2**-4)²/2.
    assert cos >= 1 - (4 * 2.0**-4) ** 2 / 2


@pytest.mark.parametrize("is_causal", [False, True])
def test_the_same_kernel_on_fp16_inputs_is_a_16bit_flash_attention(is_causal):
    """The pipe model's 16-bit baseline: fp16 Q, K, V with unit descales. Against fp64 attention of the same fp16
    inputs the only error is P rounded to fp16 (unit roundoff 2**-11) and the fp16 output's own rounding."""
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, n, 64, generator=gen).half() for n in (70, 130, 130))
    out = flash_attention_16bit(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), is_causal=is_causal).cpu()
    assert out.dtype == torch.float16
    exact = reference_attention(q.double(), k.double(), v.double(), None, is_causal, 64**-0.5)
    bound = half_int8_bound(q.double(), k.double(), v.double(), None, is_causal, 64**-0.5, torch.float16)
    assert ((out.double() - exact.out).abs() <= bound + 2.0**-11 * exact.out.abs()).all()
    with pytest.raises(ValueError, match="fp16 or bf16"):
        flash_attention_16bit(q.float(), k.float(), v.float())
