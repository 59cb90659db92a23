"""intfa_compile/rotation.py: the randomized Walsh–Hadamard rotation of Q's and K's head dim (``qk_rotation``):
orthonormal, within its blocks, every score kept, and what it buys the INT8 quantization."""

from __future__ import annotations

import pytest
import torch

from intfa_compile.numerics import hadamard_block
from intfa_compile.ops import int8_sdpa
from intfa_compile.reference import error_metrics, reference_attention
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


def test_rotation_recovers_the_resolution_an_outlier_channel_takes():
    # One channel 30× the others sets every token's INT8 range (about 30·|x₅| ≈ 24σ); rotated, it is spread over
    # all 64 channels, whose largest entry is then about 2.5·√((63 + 900·x₅²)/64) ≈ 9σ: a range 2–3× narrower.
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 64, 64), torch.randn(1, 2, 64, 64), torch.randn(1, 2, 64, 64)
    q[..., 5] *= 30
    k[..., 5] *= 30
    reference = reference_attention(q, k, v).out
    plain, rotated = (error_metrics(int8_sdpa(q, k, v, qk_rotation=r), reference).rel_l2 for r in ("none", "hadamard"))
    assert rotated < plain / 2
