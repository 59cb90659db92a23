"""``intfa::hadamard_quantize``: the fused rotate-and-quantize kernel against its aten reference, the reference
against the method's rounding bound, and the operator as the one step ``qk_rotation`` inserts.

Without a GPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set in conftest).

What must agree, and how closely:
- the kernel and the reference compute the same fp32 rotation (±1 products are exact) but may sum in another
  order, so a rotated entry can differ by a few fp32 ulps: scales agree to ``FP32_SLACK`` relative, and an integer
  value can move by one level only where x / scale lay within those ulps of a rounding midpoint (rare);
- dequantized, the reference is within half a quantization step of the exact rotation (round to nearest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from intfa_compile.kernels.hadamard_quantize import hadamard_quantize_triton
from torch._subclasses.fake_tensor import FakeTensorMode

from intfa_compile.numerics import chunk_width, hadamard_block
from intfa_compile.ops import int8_sdpa
from intfa_compile.rotation import (
    hadamard_quantize_reference,
    rotate_and_quantize_qk,
    rotate_hadamard,
)
from tests.helpers import FP32_SLACK

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = Path(__file__).resolve().parents[1]
LIMITS = {8: 127, 4: 7}


def _assert_same_quantization(got: tuple, expected: tuple) -> None:
    values, scale = got
    ref_values, ref_scale = expected
    assert values.dtype == torch.int8 and scale.dtype == torch.float32
    assert values.shape == ref_values.shape and scale.shape == ref_scale.shape
    torch.testing.assert_close(scale.cpu(), ref_scale, rtol=FP32_SLACK, atol=0)
    moved = (values.cpu().int() - ref_values.int()).abs()
    assert moved.max() <= 1
    assert moved.float().mean() < 1e-3


@pytest.mark.parametrize("head_dim", [8, 40, 64, 96, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_kernel_matches_reference_per_token(head_dim, dtype):
    torch.manual_seed(head_dim)
    x = torch.randn(2, 3, 37, head_dim, dtype=dtype)
    x[..., 1] *= 20  # an outlier channel: the case the rotation is for
    expected = hadamard_quantize_reference(x, 1, 8)
    _assert_same_quantization(hadamard_quantize_triton(x.to(DEVICE), 1, 127), expected)


def test_kernel_covers_every_tile_when_programs_take_several():
    # 581 tokens: 10 tiles of 64, so two programs (8 tiles each at most), the second one partial.
    torch.manual_seed(9)
    x = torch.randn(1, 2, 581, 32, dtype=torch.float16)
    _assert_same_quantization(hadamard_quantize_triton(x.to(DEVICE), 1, 127), hadamard_quantize_reference(x, 1, 8))


@pytest.mark.parametrize(("group", "bits"), [(16, 8), (64, 8), (1, 4), (16, 4)])
def test_kernel_matches_reference_per_block_and_int4(group, bits):
    torch.manual_seed(group + bits)
    # (B, N, H, D)-major, as a projection's output viewed per head: the kernel reads any strides.
    x = torch.randn(2, 50, 3, 64, dtype=torch.float16).transpose(1, 2)
    expected = hadamard_quantize_reference(x, group, bits)
    got = hadamard_quantize_triton(x.to(DEVICE), group, LIMITS[bits])
    _assert_same_quantization(got, expected)
    assert got[0].abs().max() <= LIMITS[bits]
    if group > 1:  # the last, partial group (tokens 48 and 49 of 50 at group 16) shares one scale too
        blocks = got[1].cpu()[..., : 50 - 50 % group].unflatten(-1, (-1, group))
        assert (blocks == blocks[..., :1]).all()


def test_kernel_keeps_the_reference_special_values():
    x = torch.randn(1, 2, 20, 32)
    x[0, 0, 3] = 0.0  # an all-zero token: scale 1, values 0
    x[0, 0, 5, 7] = float("inf")  # every rotated entry of its token is ±inf: ±limit, scale inf
    x[0, 1, 9, 2] = float("nan")  # a NaN poisons its token's scale
    values, scale = hadamard_quantize_triton(x.to(DEVICE), 1, 127)
    ref_values, ref_scale = hadamard_quantize_reference(x, 1, 8)
    values, scale = values.cpu(), scale.cpu()
    assert scale[0, 0, 3] == 1 and (values[0, 0, 3] == 0).all()
    assert scale[0, 0, 5] == float("inf") and torch.equal(values[0, 0, 5], ref_values[0, 0, 5])
    assert values[0, 0, 5].abs().eq(127).all()
    assert scale[0, 1, 9].isnan() and ref_scale[0, 1, 9].isnan()
    finite = torch.ones_like(scale, dtype=torch.bool)
    finite[0, 0, 5] = finite[0, 1, 9] = False
    torch.testing.assert_close(scale[finite], ref_scale[finite], rtol=FP32_SLACK, atol=0)
    assert (values[finite] - ref_values[finite]).abs().max() <= 1


@pytest.mark.parametrize("head_dim", [16, 48, 64, 128])
def test_reference_is_round_to_nearest_of_the_rotation(head_dim):
    torch.manual_seed(5)
    x = torch.randn(2, 2, 30, head_dim, dtype=torch.bfloat16)
    values, scale = hadamard_quantize_reference(x, 1, 8)
    exact = rotate_hadamard(x.double())
    error = (values.double() * scale.double()[..., None] - exact).abs()
    assert (error <= scale.double()[..., None] * (0.5 + 1e-5)).all()
    assert values.abs().amax(dim=-1).eq(127).all()  # each token's largest rotated entry takes the full range


def test_chunks_are_whole_blocks_and_tensor_core_sized():
    for head_dim in (8, 16, 24, 40, 64, 80, 96, 128, 192, 256):
        width, block = chunk_width(head_dim), hadamard_block(head_dim)
        assert width >= 16 and width % block == 0 and head_dim % block == 0 and width <= 128


def test_rotation_is_one_operator_between_the_inputs_and_the_attention():
    """What ``qk_rotation`` adds to a traced graph is the fused operator, once for Q and once for K: no GEMM for
    the rotation and no separate quantization reductions for Q and K (the fp32 V of half-INT8 is only cast)."""
    q, k, v = (torch.randn(1, 2, 32, 64) for _ in range(3))
    graph = torch.fx.experimental.proxy_tensor.make_fx(
        lambda q, k, v: int8_sdpa(q, k, v, qk_rotation="hadamard"))(q, k, v).graph
    targets = [node.target for node in graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.intfa.hadamard_quantize.default) == 2
    assert not {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.amax.default} & set(targets)


def test_per_head_scales_rotate_then_quantize():
    x = torch.randn(1, 2, 24, 32)
    values, scale = rotate_and_quantize_qk(x, "per_head", 8, 128)
    assert (scale == scale[..., :1]).all()
    assert (values.double() * scale.double()[..., None] - rotate_hadamard(x.double())).abs().max() <= \
        scale.max() * (0.5 + 1e-5)


def test_operator_refuses_what_the_kernel_cannot_take():
    with pytest.raises(ValueError, match="group"):
        torch.ops.intfa.hadamard_quantize(torch.randn(1, 1, 4, 16), 12, 8)
    with pytest.raises(TypeError, match="float16"):
        torch.ops.intfa.hadamard_quantize(torch.ones(1, 1, 4, 16, dtype=torch.int32), 1, 8)
    with pytest.raises(ValueError, match="qk_bits"):
        torch.ops.intfa.hadamard_quantize(torch.randn(1, 1, 4, 16), 1, 5)
    with FakeTensorMode(), pytest.raises(ValueError, match="4-D"):  # the fake refuses the same
        torch.ops.intfa.hadamard_quantize(torch.randn(4, 16), 1, 8)


def test_fused_kernel_compiles_for_hopper_without_spills_and_issues_within_its_memory_time():
    """The fused kernel as a launch compiles it for sm_90 (``benchmarks/rotation_cost.py``): the rotation on the
    tensor cores (wgmma), no spills, and at d = 64 and 128 fewer issue clocks per tile than its bytes take at the
    H200's copy bandwidth, so it should run at the speed of the quantization alone. In a subprocess: the
    interpreter (set for this session) cannot compile."""
    script = ("import json; from benchmarks.rotation_cost import compile_kernel; "
              "facts = [compile_kernel(d) for d in (64, 128, 256)]; "
              "print(json.dumps([[f.head_dim, f.spill_bytes, f.wgmma, f.issue_clocks, f.memory_clocks] "
              "for f in facts]))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for head_dim, spills, wgmma, issue, memory in json.loads(result.stdout.strip().splitlines()[-1]):
        assert spills == 0 and wgmma > 0, head_dim
        if head_dim <= 128:
            assert issue < memory, (head_dim, issue, memory)
