"""Property tests: the INT8 op against fp64 attention over random shapes, masks, dtypes and input scales.

Every example must stay within the bound derived in ``helpers.p_quantization_bound`` (full INT8: half
a P step per key, plus fp32 rounding that grows with the logits) or ``helpers.half_int8_bound`` (P
rounded to V's dtype: 16-bit for half-INT8, e4m3 for FP8 P·V), plus one rounding of the output to its dtype.
Every P·V format is drawn, with each P scale it takes. Hypothesis runs derandomized,
so CI sees the same examples every time.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch._dynamo.utils import counters

from intfa_compile.attention_call import AttentionCall, KernelOptions
from intfa_compile.ops import out_dtype_name
from intfa_compile.pv_formats import PV_FORMATS
from intfa_compile.reference import reference_attention
from intfa_compile.sites import rewritten_sites
from tests.helpers import P_STEP, half_int8_bound, p_quantization_bound, quantized_inputs, unit_roundoff

settings.register_profile("intfa-ci", max_examples=200, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("intfa-ci")

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@st.composite
def attention_problems(draw):
    batch = draw(st.integers(1, 2))
    heads_k = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 2, 4]))
    n_q = draw(st.integers(1, 70))
    n_k = draw(st.integers(1, 70))
    head_dim = draw(st.sampled_from([16, 32, 48, 64, 80, 128]))
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    magnitude = draw(st.sampled_from([1e-3, 0.1, 1.0, 4.0]))
    distribution = draw(st.sampled_from(["normal", "uniform"]))
    is_causal = draw(st.booleans())
    mask_kind = draw(st.sampled_from(["none", "bool", "additive"]))
    mask_shape = draw(st.sampled_from(["full", "key_padding", "per_head_row"]))
    pv_format = draw(st.sampled_from(list(PV_FORMATS)))
    p_scale = draw(st.sampled_from(PV_FORMATS[pv_format].p_scales))
    seed = draw(st.integers(0, 2**16))

    gen = torch.Generator().manual_seed(seed)

    def sample(*shape):
        x = torch.randn(shape, generator=gen) if distribution == "normal" else torch.rand(shape, generator=gen) * 2 - 1
        return (x * magnitude).to(dtype)

    heads_q = heads_k * group
    q = sample(batch, heads_q, n_q, head_dim)
    k, v = sample(batch, heads_k, n_k, head_dim), sample(batch, heads_k, n_k, head_dim)
    shape = {"full": (batch, heads_q, n_q, n_k), "key_padding": (batch, 1, 1, n_k),
             "per_head_row": (1, heads_q, n_q, 1)}[mask_shape]
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(shape, generator=gen) > 0.3
    elif mask_kind == "additive":
        mask = (torch.randn(shape, generator=gen) * 2).to(dtype)
    return q, k, v, mask, is_causal, pv_format, p_scale


def _assert_within_derived_bound(out, inputs, problem):
    q, k, v, mask, is_causal, pv_format, _ = problem
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, mask, is_causal)
    if pv_format == "int8":
        bound = p_quantization_bound(q_hat, k_hat, v_hat, mask, is_causal, None, P_STEP)
    else:
        bound = half_int8_bound(q_hat, k_hat, v_hat, mask, is_causal, None, inputs["v"].dtype)  # P in V's dtype
    # Rounding the result o to the output dtype: |round(o) − ref| ≤ |o − ref| + u·|o| ≤ b + u·(|ref| + b).
    bound = bound + unit_roundoff(q.dtype) * (ref.out.abs() + bound) + torch.finfo(q.dtype).tiny
    assert not out.isnan().any()
    excess = ((out.cpu().double() - ref.out).abs() - bound).max().item()
    assert excess <= 0, f"bound exceeded by {excess:.3g}"


@given(attention_problems())
def test_int8_attention_within_derived_bound(problem):
    q, k, v, mask, is_causal, pv_format, p_scale = problem
    inputs = quantized_inputs(q, k, v, pv_format)
    out = torch.ops.intfa.int8_attention(inputs["q"], inputs["k"], inputs["v"], inputs["q_scale"], inputs["k_scale"],
                                         inputs["v_scale"], mask, is_causal, q.shape[-1] ** -0.5,
                                         out_dtype=out_dtype_name(q.dtype), p_scale=p_scale)
    assert out.dtype == q.dtype and out.shape == q.shape
    _assert_within_derived_bound(out, inputs, problem)


@settings(max_examples=40)
@given(attention_problems())
def test_triton_kernel_within_derived_bound(problem):
    """The kernel itself (Triton's interpreter here, the GPU where there is one) under the same bound."""
    from intfa_compile.kernels.int8_flash_attention import int8_flash_attention_triton

    q, k, v, mask, is_causal, pv_format, p_scale = problem
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = quantized_inputs(q, k, v, pv_format)
    names = ("q", "k", "v", "q_scale", "k_scale", "v_scale")
    call = AttentionCall(*(inputs[name] for name in names), mask, is_causal, q.shape[-1] ** -0.5,
                         options=KernelOptions(p_scale=p_scale))
    out = torch.empty(q.shape, dtype=q.dtype, device=device)
    int8_flash_attention_triton(call.to(device), out)
    _assert_within_derived_bound(out, inputs, problem)


@settings(max_examples=12)
@given(attention_problems())
def test_compiled_sdpa_within_derived_bound(problem):
    """Through torch.compile(backend="intfa"): the compiled graph computes the op on the same quantized inputs."""
    q, k, v, mask, is_causal, pv_format, p_scale = problem
    torch._dynamo.reset()
    group = q.shape[1] // k.shape[1]

    def attend(q, k, v, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                                               enable_gqa=group > 1)

    if is_causal and mask is not None:
        mask = None  # SDPA takes one or the other
    options = {"pv_format": pv_format, "p_scale": p_scale if pv_format == "int8" else "fixed"}  # INT8 P's scale
    rewritten_before = rewritten_sites(counters["intfa"])
    with torch.no_grad():
        out = torch.compile(attend, backend="intfa", options=options)(q, k, v, mask)
    assert rewritten_sites(counters["intfa"]) == rewritten_before + 1
    inputs = quantized_inputs(q, k, v, pv_format)
    _assert_within_derived_bound(out, inputs, (q, k, v, mask, is_causal, pv_format, p_scale))
