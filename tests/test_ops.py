"""The ``intfa::int8_attention`` op (its CPU implementation) against fp64 attention, with derived bounds.

The fp64 reference is computed from the dequantized inputs, so the only errors left are those the
kernel adds on top of input quantization: P's quantization (or its 16-bit rounding) and fp32 rounding.
``helpers.p_quantization_bound`` derives the per-element bound; a separate test checks that input
quantization itself stays small (cosine to the unquantized fp64 attention).
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import intfa_compile  # noqa: F401  (registers the op)
from intfa_compile.attention_call import AttentionCall
from intfa_compile.ops import int8_sdpa
from intfa_compile.pv_formats import PV_FORMATS
from intfa_compile.reference import reference_attention
from tests.helpers import END_TO_END_COSINE, P_STEP, cosine, half_int8_bound, p_quantization_bound, quantized_inputs

op = torch.ops.intfa.int8_attention


def _run_op(inputs, attn_mask, is_causal, scale, p_scale, out_dtype="float32"):
    head_dim = inputs["q"].shape[-1]
    sm_scale = scale if scale is not None else head_dim**-0.5
    return op(inputs["q"], inputs["k"], inputs["v"], inputs["q_scale"], inputs["k_scale"], inputs["v_scale"],
              attn_mask, is_causal, sm_scale, out_dtype=out_dtype, p_scale=p_scale)


def _assert_within(out, ref_out, bound):
    excess = (out.double() - ref_out).abs() - bound
    assert excess.max().item() <= 0, f"bound exceeded by {excess.max().item():.3g}"


@pytest.mark.parametrize("n_q,n_k", [(1, 1), (17, 17), (130, 130), (17, 130), (130, 17)])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("p_scale", ["fixed", "row_block"])
def test_full_int8_within_p_quantization_bound(n_q, n_k, head_dim, is_causal, p_scale):
    gen = torch.Generator().manual_seed(n_q * 1000 + n_k + head_dim)
    q, k, v = (torch.randn(2, 2, n, head_dim, generator=gen) for n in (n_q, n_k, n_k))
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    out = _run_op(inputs, None, is_causal, None, p_scale)
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, None, is_causal)
    _assert_within(out, ref.out, p_quantization_bound(q_hat, k_hat, v_hat, None, is_causal, None, P_STEP))


@pytest.mark.parametrize("n_q,n_k", [(1, 1), (17, 130), (130, 17), (200, 200)])
@pytest.mark.parametrize("head_dim", [32, 64, 128, 256])
@pytest.mark.parametrize("is_causal", [False, True])
def test_fp8_pv_within_e4m3_rounding_bound(n_q, n_k, head_dim, is_causal):
    """pv_format="fp8": P·448 rounded to e4m3 (unit roundoff 2**-4, subnormals below 2**-6) against fp64 attention
    of the same dequantized inputs (V in e4m3 with per-channel scales): the half-INT8 bound with e4m3's rounding.
    Head dim 256 takes the block-by-block path (no second accumulator)."""
    gen = torch.Generator().manual_seed(n_q * 7 + n_k + head_dim)
    q, k, v = (torch.randn(2, 2, n, head_dim, generator=gen) for n in (n_q, n_k, n_k))
    inputs = quantized_inputs(q, k, v, pv_format="fp8")
    out = _run_op(inputs, None, is_causal, None, "fixed")
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, None, is_causal)
    _assert_within(out, ref.out, half_int8_bound(q_hat, k_hat, v_hat, None, is_causal, None, torch.float8_e4m3fn))


def test_fp8_pv_refuses_the_row_block_p_scale():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 8, 32, generator=gen) for _ in range(3))
    inputs = quantized_inputs(q, k, v, pv_format="fp8")
    with pytest.raises(ValueError, match="fixed scale only"):
        _run_op(inputs, None, False, None, "row_block")


@pytest.mark.parametrize("name", ["int4", True, False, None])
def test_pv_format_takes_a_format_name_only(name):
    """An unknown name, or the boolean of 0.1's removed ``quantize_pv``, is an error naming the formats, never
    some default format."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 40, 32, generator=gen) for _ in range(3))
    with pytest.raises(ValueError, match="pv_format must be one of .'int8', 'fp8', 'fp16'."):
        int8_sdpa(q, k, v, pv_format=name)


@pytest.mark.parametrize("v_dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("is_causal", [False, True])
def test_half_int8_within_rounding_bound(v_dtype, is_causal):
    gen = torch.Generator().manual_seed(7)
    q, k = (torch.randn(1, 4, 130, 64, generator=gen) for _ in range(2))
    v = torch.randn(1, 4, 130, 64, generator=gen).to(v_dtype)
    inputs = quantized_inputs(q, k, v, pv_format="fp16")
    out = _run_op(inputs, None, is_causal, None, "fixed")
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, None, is_causal)
    # An fp32 V is rounded to bf16 (value_16bit): P is rounded to the dtype the op saw.
    _assert_within(out, ref.out, half_int8_bound(q_hat, k_hat, v_hat, None, is_causal, None, inputs["v"].dtype))


def test_gqa_bool_and_additive_masks_and_scale():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 6, 33, 32, generator=gen)
    k, v = (torch.randn(2, 2, 70, 32, generator=gen) for _ in range(2))
    keep = torch.rand(2, 1, 33, 70, generator=gen) > 0.3
    keep[..., 0] = True
    additive = torch.randn(1, 6, 1, 70, generator=gen)
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    q_hat, k_hat, v_hat = inputs["dequantized"]
    for mask in (keep, additive):
        out = _run_op(inputs, mask, False, 0.3, "fixed")
        ref = reference_attention(q_hat, k_hat, v_hat, mask, False, 0.3)
        _assert_within(out, ref.out, p_quantization_bound(q_hat, k_hat, v_hat, mask, False, 0.3, P_STEP))


def test_fully_masked_rows_give_zeros_and_no_nan():
    q, k, v = (torch.randn(1, 1, 8, 32) for _ in range(3))
    keep = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    keep[..., 3, :] = False
    out = int8_sdpa(q, k, v, attn_mask=keep)
    assert not out.isnan().any()
    assert (out[..., 3, :] == 0).all()


def test_input_quantization_keeps_attention_close_to_unquantized():
    """End to end, with Q/K/V quantization included: the issue's bar of cosine ≥ 0.999 (N=384, d=64)."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 384, 64, generator=gen) for _ in range(3))
    ref = reference_attention(q, k, v, None, True).out
    for pv_format in ("int8", "fp16"):
        out = int8_sdpa(q, k, v, is_causal=True, pv_format=pv_format)
        assert cosine(out, ref) >= END_TO_END_COSINE


def test_output_dtype_and_layout_follow_the_query():
    q = torch.randn(1, 16, 2, 32).transpose(1, 2).half()  # (B, H, N, D) view of a (B, N, H, D) tensor
    out = int8_sdpa(q, q, q)
    assert out.dtype == torch.float16
    assert out.stride() == q.stride()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(q=torch.zeros(1, 1, 4, 8)), "int8"),
        (dict(v_scale=None), "v_scale"),
        (dict(p_scale="per_tensor"), "p_scale"),
        (dict(attn_mask=torch.ones(3, 1, 4, 4, dtype=torch.bool)), "broadcast"),
        (dict(k=torch.zeros(1, 3, 4, 8, dtype=torch.int8)), "shapes"),
        (dict(kv_block=48), "kv_block"),
    ],
)
def test_bad_arguments_raise_with_a_message(change, message):
    q8 = torch.zeros(1, 2, 4, 8, dtype=torch.int8)
    args = dict(q=q8, k=q8[:, :1], v=q8[:, :1], q_scale=torch.ones(1, 2, 4), k_scale=torch.ones(1, 1, 4),
                v_scale=torch.ones(1, 1, 8), attn_mask=None, is_causal=False, sm_scale=1.0, p_scale="fixed",
                out_dtype="float32")
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        op(**args)


@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("pv_format", list(PV_FORMATS))
def test_nan_reaches_the_outputs_eager_attention_poisons(where, pv_format):
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 2, 20, 32, generator=gen) for _ in range(3))
    {"q": q, "k": k, "v": v}[where][0, 1, 7, 3] = float("nan")
    eager = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = int8_sdpa(q, k, v, pv_format=pv_format)
    assert torch.equal(out.isnan(), eager.isnan())
    assert eager.isnan().any()


@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_inf_makes_the_outputs_eager_makes_non_finite_non_finite(where, value):
    """Eager's non-finite outputs are ours too. One deliberate difference: with ±inf in K at channel c, a
    query row whose INT8 value at c rounds to 0 meets 0·inf = NaN, where eager's tiny q_c·inf may be a
    harmless -inf score; those rows, and only those, may be non-finite for us and finite for eager."""
    from intfa_compile.quantize import quantize_per_token

    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 2, 20, 32, generator=gen) for _ in range(3))
    {"q": q, "k": k, "v": v}[where][0, 1, 7, 3] = value
    eager = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = int8_sdpa(q, k, v)
    assert not eager.isfinite().all()
    assert (out.isfinite() <= eager.isfinite()).all()  # eager non-finite ⇒ ours non-finite
    extra_rows = (out.isfinite() != eager.isfinite()).any(dim=-1)
    if where == "k":
        q_rounds_to_zero = quantize_per_token(q)[0][..., 3] == 0
        assert (extra_rows <= (q_rounds_to_zero & (torch.arange(2) == 1)[None, :, None])).all()
    else:
        assert not extra_rows.any()


@pytest.mark.parametrize("pv_format", ["int8", "fp8", "fp16"])
def test_static_scales_take_every_pv_format(pv_format):
    """Calibrated ranges (Q, K per head; V per head and channel) with each P·V format. With the calibrated V range
    equal to V's own per-channel maximum, the static e4m3 V is the dynamic one; against fp64 attention of the
    original inputs each of Q, K, V, P carries at most one rounding of its format (≤ 2**-4 relative for e4m3), so the
    cosine stays within 1 − (4·2**-4)²/2."""
    from intfa_compile.quantize import quantize_v_fp8

    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 3, 48, 32, generator=gen) for _ in range(3))
    q_amax, k_amax = q.abs().amax(dim=(0, 2, 3)), k.abs().amax(dim=(0, 2, 3))
    v_amax = v.abs().amax(dim=(0, 2))
    out = int8_sdpa(q, k, v, None, False, None, pv_format, static_amax=(q_amax, k_amax, v_amax))
    exact = reference_attention(q.double(), k.double(), v.double(), None, False).out
    assert cosine(out, exact) >= 1 - (4 * 2.0**-4) ** 2 / 2
    if pv_format == "fp8":
        dynamic, dynamic_scale = quantize_v_fp8(v)
        static, static_scale = quantize_v_fp8(v, amax=v_amax[:, None, :].expand(1, -1, 1, -1))
        assert torch.equal(static.float(), dynamic.float()) and torch.equal(static_scale, dynamic_scale)


def test_decode_splits_the_keys_by_the_shared_rule_and_stays_within_the_bound():
    """One query over 2,048 keys in two heads: the op splits the keys (``key_splits``: four ranges of 512) as the
    CUDA launcher would, so CPU and GPU quantize P against the same per-range maxima; the merged result stays
    within the P-quantization bound of fp64 attention; a prefill-shaped call is not split."""
    from intfa_compile.cpu_fast_attention import fast_int8_attention_cpu
    from intfa_compile.key_splits import key_splits

    assert key_splits(1, 2048, 2) == (4, 512)
    assert key_splits(17, 2048, 2) == (1, 2048) and key_splits(1, 2048, 264) == (1, 2048)
    ranges, per_range = key_splits(3, 5000, 8)
    assert per_range % 128 == 0 and (ranges - 1) * per_range < 5000 <= ranges * per_range
    gen = torch.Generator().manual_seed(41)
    q, k, v = (torch.randn(1, 2, n, 64, generator=gen) for n in (1, 2048, 2048))
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    out = _run_op(inputs, None, False, None, "fixed")
    args = [inputs[name] for name in ("q", "k", "v", "q_scale", "k_scale", "v_scale")]

    def cpu(splits):
        return fast_int8_attention_cpu(AttentionCall(*args, None, False, 64**-0.5), torch.empty(q.shape), splits)

    assert torch.equal(out, cpu(4))
    assert not torch.equal(out, cpu(1))
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, None, False)
    _assert_within(out, ref.out, p_quantization_bound(q_hat, k_hat, v_hat, None, False, None, P_STEP))


def _op_arguments(**changes):
    q, k = torch.zeros(1, 2, 8, 16, dtype=torch.int8), torch.zeros(1, 2, 8, 16, dtype=torch.int8)
    arguments = {"q": q, "k": k, "v": torch.zeros(1, 2, 8, 16), "q_scale": torch.ones(1, 2, 8),
                 "k_scale": torch.ones(1, 2, 8), "v_scale": None, "attn_mask": None, "is_causal": False,
                 "sm_scale": 0.25, "p_scale": "fixed", "out_dtype": "float32", "causal_offset": 0,
                 "window_left": -1, "kv_block": 0}
    return {**arguments, **changes}


REFUSED = [
    ({"q": torch.zeros(1, 2, 8, 16)}, TypeError, "q must be int8"),
    ({"k": torch.zeros(2, 8, 16, dtype=torch.int8)}, ValueError, "k must be 4-D"),
    ({"v": torch.zeros(1, 2, 8, 16, dtype=torch.int8)}, ValueError, "needs its per-channel v_scale"),
    ({"v": torch.zeros(1, 2, 8, 16, dtype=torch.int32)}, TypeError, "v must be int8, float8_e4m3fn"),
    ({"q_scale": torch.ones(1, 2, 8, dtype=torch.float16)}, TypeError, "q_scale must be float32"),
    ({"p_scale": "per_row"}, ValueError, "p_scale must be one of"),
    ({"kv_block": 48}, ValueError, "kv_block must be"),
    ({"out_dtype": "int32"}, TypeError, "out_dtype must be one of"),
    ({"attn_mask": torch.zeros(1, 1, 8, 8, dtype=torch.int64)}, TypeError, "attn_mask must be boolean"),
    ({"window_left": 4}, ValueError, "window_left is a sliding window"),
    ({"k": torch.zeros(1, 2, 8, 32, dtype=torch.int8)}, ValueError, "incompatible shapes"),
    ({"q": torch.zeros(1, 3, 8, 16, dtype=torch.int8), "q_scale": torch.ones(1, 3, 8)}, ValueError,
     "query heads 3 must be a multiple of KV heads 2"),
    ({"k_scale": torch.ones(1, 2, 16)}, ValueError, "q_scale and k_scale must be per token"),
    ({"attn_mask": torch.zeros(1, 1, 8, 5, dtype=torch.bool)}, ValueError, "does not broadcast"),
]


@pytest.mark.parametrize(("changes", "error", "message"), REFUSED)
def test_the_fake_refuses_what_the_real_op_refuses(changes, error, message):
    """torch.compile traces the op with its fake implementation: a call the real one refuses must fail there too,
    with the same error, rather than compile and fail (or not) at run time."""
    arguments = _op_arguments(**changes)
    with pytest.raises(error, match=message):
        op(**arguments)
    with FakeTensorMode() as mode, pytest.raises(error, match=message):
        op(**{name: mode.from_tensor(value) if isinstance(value, torch.Tensor) else value
              for name, value in arguments.items()})


SDPA_REFUSED = [
    ({"query": [[1.0]]}, TypeError, "query must be a Tensor"),
    ({"key": torch.zeros(2, 8, 16)}, ValueError, "key must be 4-D"),
    ({"value": torch.zeros(1, 2, 8, 16, dtype=torch.float64)}, TypeError, "value must be float16, bfloat16 or float32"),
    ({"attn_mask": torch.zeros(1, 1, 8, 8, dtype=torch.int32)}, TypeError, "attn_mask must be boolean"),
    ({"attn_mask": "causal"}, TypeError, "attn_mask must be a Tensor or None"),
    ({"is_causal": 1}, TypeError, "is_causal must be a bool"),
    ({"scale": "0.5"}, TypeError, "scale must be None, a number or a one-element tensor"),
    ({"scale": torch.ones(2)}, TypeError, "scale must be None"),
    ({"pv_format": "int6"}, ValueError, "pv_format must be one of"),
    ({"qk_granularity": "per_row"}, ValueError, "qk_granularity must be one of"),
]


@pytest.mark.parametrize(("changes", "error", "message"), SDPA_REFUSED)
def test_int8_sdpa_names_the_argument_it_refuses(changes, error, message):
    arguments = {"query": torch.randn(1, 2, 8, 16), "key": torch.randn(1, 2, 8, 16), "value": torch.randn(1, 2, 8, 16),
                 **changes}
    with pytest.raises(error, match=message):
        int8_sdpa(**arguments)
