"""intfa_compile/cpu_attention.py: the kernel's arithmetic on the CPU (the twin the Triton kernel is tested against,
``test_int8_flash_attention.py``; its accuracy through the op: ``test_ops.py``). Here: the facts it is built on and
the limits it refuses past."""

from __future__ import annotations

import pytest
import torch

from intfa_compile.attention_call import AttentionCall, KernelOptions
from intfa_compile.cpu_attention import int8_flash_attention_cpu


def test_integer_gemms_in_fp32_are_exact_at_the_extremes():
    """The CPU implementation's claim: fp32 GEMMs of INT8 values equal the INT32 products exactly."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (1, 1, 64, 256), generator=gen, dtype=torch.int8)
    q[..., 0, :] = 127  # largest partial sums: 127·127·256 = 4,129,024 < 2**24
    k = q.clone()
    exact = q.long() @ k.long().transpose(-1, -2)
    assert torch.equal((q.float() @ k.float().transpose(-1, -2)).long(), exact)


def test_a_block_whose_integer_sums_could_exceed_fp32s_exact_range_is_refused():
    """127·127·max(D, block) must stay below 2**24 for the fp32 GEMMs to hold the INT32 products exactly."""
    q = torch.ones(1, 1, 2, 1041, dtype=torch.int8)  # 127·127·1041 > 2**24 (1040 still fits)
    scales = torch.ones(1, 1, 2)
    call = AttentionCall(q, q, q.half(), scales, scales, None, sm_scale=0.03)
    with pytest.raises(ValueError, match="too large for exact fp32 integer GEMMs"):
        int8_flash_attention_cpu(call, torch.empty(1, 1, 2, 1041))


def test_the_twin_computes_in_the_calls_key_blocks():
    """The result depends on the key block (P is quantized against the running maximum of the blocks so far): the
    twin follows the call's ``kv_block``, as the kernel does."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randint(-127, 128, (1, 2, 40, 32), generator=gen, dtype=torch.int8)
    k = torch.randint(-127, 128, (1, 2, 200, 32), generator=gen, dtype=torch.int8)
    v = torch.randint(-127, 128, (1, 2, 200, 32), generator=gen, dtype=torch.int8)
    q_scale, k_scale, v_scale = torch.rand(1, 2, 40) * 0.02, torch.rand(1, 2, 200) * 0.02, torch.rand(1, 2, 32)
    outputs = {block: int8_flash_attention_cpu(AttentionCall(q, k, v, q_scale, k_scale, v_scale, sm_scale=0.2,
                                                             options=KernelOptions(kv_block=block)),
                                               torch.empty(1, 2, 40, 32))
               for block in (0, 128, 32)}
    assert torch.equal(outputs[0], outputs[128])  # d = 32: the shape rule's 128 keys
    assert not torch.equal(outputs[128], outputs[32])
