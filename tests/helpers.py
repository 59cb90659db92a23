"""Shared pieces of the tests: input makers and the error bounds of the method."""

from __future__ import annotations

import torch
from torch import Tensor

import intfa_compile
from intfa_compile.numerics import INT8_MAX
from intfa_compile.pv_formats import PV_FORMATS
from intfa_compile.quantize import quantize_per_channel, quantize_per_token, quantize_v_fp8, value_16bit
from intfa_compile.reference import reference_attention

DEFAULT_OUTCOME = PV_FORMATS[intfa_compile.config.pv_format].outcome
"""What a site rewritten under the default settings records (``explain``): "half-INT8" since issue 13."""
DEFAULT_COUNTER = PV_FORMATS[intfa_compile.config.pv_format].counter
"""The ``counters["intfa"]`` entry such a site counts in."""

FP32_SLACK = 2.0**-14
"""Relative fp32 error allowed on P and on the output on top of the quantization bound: the kernel
rounds the scaled scores, exp2, the row sums and the rescalings in fp32 (unit roundoff 2**-24); with at
most a few hundred such roundings per element and |S·log2 e| < 64 the relative error of any P entry
stays below 2**-14. ``fp32_slack`` raises it for larger scores."""

_U32 = 2.0**-24


def fp32_slack(q_hat: Tensor, k_hat: Tensor, attn_mask: Tensor | None, scale: float | None) -> float:
    """FP32_SLACK, or more when the base-2 logits S₂ are large: S₂ and the running max each carry up to
    three fp32 roundings (two scalings, one subtraction), each at most u·max|S₂|, and exp2 turns an
    absolute error e of its argument into a relative error ln2·e of P; exp2 itself adds two ulps."""
    group = q_hat.shape[1] // k_hat.shape[1]
    sm_scale = scale if scale is not None else q_hat.shape[-1] ** -0.5
    s2 = (q_hat @ k_hat.repeat_interleave(group, dim=1).transpose(-1, -2)) * (sm_scale * 1.4426950408889634)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        s2 = s2 + attn_mask.double() * 1.4426950408889634
    max_abs = s2.abs().amax().item() if s2.numel() else 0.0
    return max(FP32_SLACK, 0.6931 * 6 * _U32 * max_abs + 4 * _U32)


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the distance from 1 to the next number of ``dtype``."""
    return torch.finfo(dtype).eps / 2


def quantized_inputs(q: Tensor, k: Tensor, v: Tensor, pv_format: str = "int8") -> dict[str, Tensor | None]:
    """The op's INT8 inputs for q, k, v in P·V format ``pv_format`` ("int8", "fp8", "fp16"), and their dequantized
    values (what the op really sees)."""
    q8, qs = quantize_per_token(q)
    k8, ks = quantize_per_token(k)
    inputs: dict[str, Tensor | None] = {"q": q8, "k": k8, "q_scale": qs, "k_scale": ks}
    if pv_format == "fp8":
        v8, vs = quantize_v_fp8(v)
        inputs.update(v=v8, v_scale=vs)
        v_seen = v8.double() * vs.double().unsqueeze(-2)
    elif pv_format == "int8":
        v8, vs = quantize_per_channel(v)
        inputs.update(v=v8, v_scale=vs)
        v_seen = v8.double() * vs.double().unsqueeze(-2)
    else:  # 16-bit P·V: an fp32 V is rounded to bf16, as int8_sdpa does
        v16 = value_16bit(v)
        inputs.update(v=v16, v_scale=None)
        v_seen = v16.double()
    inputs["dequantized"] = (q8.double() * qs.double().unsqueeze(-1), k8.double() * ks.double().unsqueeze(-1),
                             v_seen)
    return inputs


def p_quantization_bound(q_hat: Tensor, k_hat: Tensor, v_hat: Tensor, attn_mask: Tensor | None,
                         is_causal: bool, scale: float | None, p_step: float) -> Tensor:
    """Per-element bound on |op − fp64 attention of the dequantized inputs|, (B, Hq, Nq, D).

    Relative to the final row maximum, the kernel adds, for each key j, P_ij·V_jc where P_ij is the
    block's probability rescaled by exp(m_block − m_final) ≤ 1. Quantizing P with step ``p_step``
    (1/127 fixed, ≤ 1/127 per row block) errs by at most p_step/2 per entry, plus the fp32 error of P
    (FP32_SLACK); dividing by l_i = Σ_j exp(S_ij − m_final) ≥ 1 gives
        |ΔO_ic| ≤ (p_step/2 + FP32_SLACK) · Σ_j |V_jc| / l_i + FP32_SLACK · max|O_i|.
    For half-INT8, P is rounded to V's dtype instead: p_step/2 becomes u·P_ij (u its unit roundoff),
    which ``half_int8_bound`` states.
    """
    ref = reference_attention(q_hat, k_hat, v_hat, attn_mask, is_causal, scale)
    group = q_hat.shape[1] // k_hat.shape[1]
    seen = (ref.probs > 0).double()  # keys each row sees
    abs_v = v_hat.abs().repeat_interleave(group, dim=1)
    spread = (seen @ abs_v) / torch.where(ref.row_sum > 0, ref.row_sum, 1.0)
    slack = fp32_slack(q_hat, k_hat, attn_mask, scale)
    return (p_step / 2 + slack) * spread + slack * ref.out.abs().amax(-1, keepdim=True)


def half_int8_bound(q_hat: Tensor, k_hat: Tensor, v_hat: Tensor, attn_mask: Tensor | None, is_causal: bool,
                    scale: float | None, v_dtype: torch.dtype) -> Tensor:
    """Per-element bound for half-INT8: P rounded to V's dtype.

    Rounding errs by at most u·P for a normal number and by half the subnormal spacing below that, so
        |ΔO_ic| ≤ (u + slack)·Σ_j P_ij|V_jc| + (subnormal_step/2 + slack)·Σ_j |V_jc| / l_i.
    """
    ref = reference_attention(q_hat, k_hat, v_hat, attn_mask, is_causal, scale)
    group = q_hat.shape[1] // k_hat.shape[1]
    abs_v = v_hat.abs().repeat_interleave(group, dim=1)
    weighted = ref.probs @ abs_v
    seen = (ref.probs > 0).double()
    spread = (seen @ abs_v) / torch.where(ref.row_sum > 0, ref.row_sum, 1.0)
    finfo = torch.finfo(v_dtype)
    subnormal_half_step = finfo.smallest_normal * finfo.eps / 2
    slack = fp32_slack(q_hat, k_hat, attn_mask, scale)
    return ((unit_roundoff(v_dtype) + slack) * weighted + (subnormal_half_step + slack / 2**10) * spread
            + slack * ref.out.abs().amax(-1, keepdim=True))


END_TO_END_COSINE = 0.999
"""The bar for a model, module or call compiled with INT8 attention against eager fp32 where no per-element bound
applies (layers after attention carry its error on; ``p_quantization_bound`` and ``half_int8_bound`` bound the op
alone): cosine ≥ 0.999, i.e. a relative L2 error of at most √(2·0.001) ≈ 4.5%. That is about ten times the
relative rounding of one INT8 quantization (half a step of 1/127 against the largest value, ≈ 0.4%), room for it to
pass through the layers after attention, and far below what a wrong mask, scale or layout gives (errors of order
one: cosines near 0.5 or below)."""


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two tensors, flattened, in fp64."""
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


NO_EXACT_INPUTS = r"(, (exact_query=)?None, (exact_key=)?None, (exact_value=)?None, (scale_factor=)?None)?"
"""The tail of an ``int8_attention`` call in Inductor's code for a site compiled with plain sizes: its
exact-fallback inputs absent (Inductor may write the defaults out)."""

DEFAULT_OPTIONS_TAIL = r"(, (out_dtype=)?'float32')?(, (p_scale=)?'fixed')?(, (kv_block=)?0)?(, (launch=)?'')?"
"""The part of an ``int8_attention`` call in Inductor's code after ``window_left`` for an fp32 site under the
default kernel options (``attention_call.KernelOptions``; Inductor may write the defaults out or drop them)."""

P_STEP = 1.0 / INT8_MAX


E4M3_STEP_NEAR_ONE = 32.0 / 448.0
"""The largest gap between neighbouring e4m3 values of P·448 for P ≤ 1 (256…448 are 32 apart), in P's units: what
one P entry moves when exp2 rounds across an e4m3 midpoint (pv_format="fp8")."""


def op_call_arguments(call: str) -> list[str]:
    """The positional arguments of one ``int8_attention`` call in Inductor's code (the text between its
    parentheses), up to the output dtype: q, k, v, q_scale, k_scale, v_scale, attn_mask, is_causal, sm_scale."""
    return call.split(", ")[:9]
