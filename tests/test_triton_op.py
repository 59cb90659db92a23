"""kernels/triton_op.py: ``intfa::int8_attention_triton``, the INT8 kernel as a triton_op (the CUDA lowering Inductor
traces into), computes what a direct launch of the kernel computes, under the op's contract."""

from __future__ import annotations

import pytest
import torch
from intfa_compile.kernels.int8_flash_attention import int8_flash_attention_triton

from intfa_compile.attention_call import AttentionCall
from tests.helpers import quantized_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_triton_op_variant_runs_the_same_kernel():
    """intfa::int8_attention_triton (the lowering Inductor traces into on CUDA) computes what the kernel does."""
    import intfa_compile.kernels.triton_op  # noqa: F401

    gen = torch.Generator().manual_seed(29)
    q, k, v = (torch.randn(1, 2, 70, 32, generator=gen).to(DEVICE) for _ in range(3))
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    args = [inputs[name] for name in ("q", "k", "v", "q_scale", "k_scale", "v_scale")]
    via_triton_op = torch.ops.intfa.int8_attention_triton(*args, None, True, 32**-0.5, out_dtype="float32")
    out = torch.empty(q.shape, device=DEVICE)
    direct = int8_flash_attention_triton(AttentionCall(*args, None, True, 32**-0.5), out)
    assert torch.equal(via_triton_op, direct)


def test_triton_op_refuses_what_the_op_refuses():
    import intfa_compile.kernels.triton_op  # noqa: F401

    q = torch.zeros(1, 2, 8, 32, dtype=torch.int8, device=DEVICE)
    scale = torch.ones(1, 2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="needs is_causal=True"):
        torch.ops.intfa.int8_attention_triton(q, q, q, scale, scale, torch.ones(1, 2, 32, device=DEVICE), None,
                                              False, 0.125, out_dtype="float32", window_left=4)
