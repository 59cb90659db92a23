"""The CUDA path: the compiled Triton kernel under torch.compile and at realistic sizes (`pytest -m cuda`).

Skipped on machines without a GPU (conftest). The kernel tests in test_int8_flash_attention.py also run on
CUDA there; these add what the interpreter cannot reach: autotuning, real sizes, 16-bit models.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from intfa_compile.attention_call import AttentionCall
from intfa_compile.cpu_attention import int8_flash_attention_cpu
from intfa_compile.reference import reference_attention
from tests.helpers import END_TO_END_COSINE, P_STEP, cosine, p_quantization_bound, quantized_inputs

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("is_causal", [False, True])
def test_compiled_sdpa_runs_the_triton_kernel(dtype, is_causal):
    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

    q, k, v = torch.randn(3, 2, 8, 1024, 128, device="cuda", dtype=dtype)
    with torch.no_grad():
        out = torch.compile(attend, backend="intfa")(q, k, v)
        with torch.profiler.profile() as prof:
            torch.compile(attend, backend="intfa")(q, k, v)
    assert any(event.key == "intfa::int8_attention" for event in prof.key_averages())
    ref = reference_attention(q, k, v, None, is_causal).out
    assert cosine(out, ref) >= END_TO_END_COSINE


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("is_causal", [False, True])
def test_autotuned_kernel_within_bound_at_2k(head_dim, is_causal):
    from intfa_compile.kernels.int8_flash_attention import int8_flash_attention_triton

    gen = torch.Generator().manual_seed(head_dim)
    q, k, v = (torch.randn(1, 4, 2048, head_dim, generator=gen) for _ in range(3))
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    names = ("q", "k", "v", "q_scale", "k_scale", "v_scale")
    args = [inputs[name] for name in names]
    sm_scale = head_dim**-0.5
    out = torch.empty(q.shape, device="cuda")
    call = AttentionCall(*args, None, is_causal, sm_scale)
    int8_flash_attention_triton(call.to("cuda"), out)
    cpu = int8_flash_attention_cpu(call, torch.empty(q.shape))
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, None, is_causal)
    bound = p_quantization_bound(q_hat, k_hat, v_hat, None, is_causal, None, P_STEP)
    assert ((out.cpu().double() - ref.out).abs() <= bound).all()
    assert ((cpu.double() - ref.out).abs() <= bound).all()


@pytest.mark.parametrize("lowering", ["custom_op", "triton_op"])
def test_both_cuda_lowerings_compile_and_agree(lowering):
    from torch._inductor.utils import run_and_get_code

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    q, k, v = torch.randn(3, 2, 8, 1024, 64, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(attend, backend="intfa", options={"cuda_lowering": lowering}),
                                     q, k, v)
    code = "\n".join(code)
    if lowering == "triton_op":
        assert "int8_attention_fwd" in code  # Inductor launches the user kernel itself
    else:
        assert "intfa.int8_attention.default" in code
    assert cosine(out, reference_attention(q, k, v, None, True).out) >= END_TO_END_COSINE


@pytest.mark.parametrize("lowering", ["custom_op", "triton_op"])
def test_tma_loads_compile_and_match_pointer_loads(lowering):
    """``tma_loads`` on a GPU: tensor descriptors built in the kernel (scratch from the launch's allocator, or
    Inductor's under triton_op) give what the pointer loads give, to fp32 rounding (tiles may differ)."""

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    q, k, v = torch.randn(3, 2, 8, 1024, 128, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        plain = torch.compile(attend, backend="intfa", options={"cuda_lowering": lowering})(q, k, v)
        torch._dynamo.reset()
        tma = torch.compile(attend, backend="intfa", options={"cuda_lowering": lowering, "tma_loads": True})(q, k, v)
    torch.testing.assert_close(tma, plain, rtol=1e-2, atol=1e-3)
    assert cosine(tma, reference_attention(q, k, v, None, True).out) >= END_TO_END_COSINE
