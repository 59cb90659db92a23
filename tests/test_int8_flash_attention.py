"""The Triton kernel against the op's CPU implementation and against fp64 attention.

Without a GPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set in conftest), so
shapes are small. With a GPU the same tests run the compiled kernel on CUDA.

What must agree, and how closely:
- the INT32 Q·Kᵀ products and the fp32 logits built from them: exactly (same integer GEMM, same
  fp32 multiplications in the same order);
- the outputs: the kernel and the CPU implementation differ only where exp2 or a row sum rounds
  differently (a few fp32 ulps, FP32_SLACK relative); such a difference can move one entry of P by
  one INT8 level, which changes an output by at most max_j |V_jc| · (1/127) / l_i. The test allows
  one such step per element on top of the fp32 slack;
- both stay within the P-quantization bound of fp64 attention on the dequantized inputs.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from intfa_compile.kernels.int8_flash_attention import (
    _INTERPRETED,
    DECODE_BLOCK_M,
    _bias_in_base2,
    _scores,
    int8_attention_fwd,
    int8_flash_attention_triton,
    launch_arguments,
    round_to_float8,
    round_to_int8,
    tensor_descriptors_fit,
)

from intfa_compile import cpu_attention
from intfa_compile.attention_call import AttentionCall, KernelOptions, LaunchOptions
from intfa_compile.cpu_attention import int8_flash_attention_cpu
from intfa_compile.numerics import BF16_MASK_FLOOR, KV_BLOCK_AUTOTUNE, LOG2E
from intfa_compile.quantize import sequence_major
from intfa_compile.reference import reference_attention
from tests.helpers import (
    E4M3_STEP_NEAR_ONE,
    FP32_SLACK,
    P_STEP,
    half_int8_bound,
    p_quantization_bound,
    quantized_inputs,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

TMA_LOADS = KernelOptions(launch=LaunchOptions(tma_loads=True))
"""Options that load K and V through tensor descriptors (where the target and layout allow)."""


@triton.jit
def _scores_tile_kernel(Q, K, QS, KS, QK_OUT, S_OUT, M: tl.constexpr, N: tl.constexpr, D: tl.constexpr,
                        MAGIC_I2F: tl.constexpr):
    rows, cols, dims = tl.arange(0, M), tl.arange(0, N), tl.arange(0, D)
    q = tl.load(Q + rows[:, None] * D + dims[None, :])
    k = tl.load(K + cols[None, :] * D + dims[:, None])
    qk, s = _scores(q, k, tl.load(QS + rows), tl.load(KS + cols), MAGIC_I2F)
    tl.store(QK_OUT + rows[:, None] * N + cols[None, :], qk)
    tl.store(S_OUT + rows[:, None] * N + cols[None, :], s)


@pytest.mark.parametrize("head_dim", [32, 64, 128, 256])
@pytest.mark.parametrize("magic_i2f", [False, True])
def test_int32_scores_and_logits_match_the_cpu_implementation_exactly(head_dim, magic_i2f):
    """Also with the magic-number INT32 → fp32 conversion (Ampere's form): exact for |Q·Kᵀ| < 2²², which the
    largest partial sums at head dim 256 (127²·256) stay below."""
    gen = torch.Generator().manual_seed(head_dim)
    q = torch.randint(-127, 128, (32, head_dim), generator=gen, dtype=torch.int8)
    k = torch.randint(-127, 128, (64, head_dim), generator=gen, dtype=torch.int8)
    q[0] = 127
    k[0] = 127  # the largest possible partial sums
    q[1] = -127  # and the most negative
    qs = torch.rand(32, generator=gen) * (head_dim**-0.5 * LOG2E)
    ks = torch.rand(64, generator=gen)
    qk = torch.empty(32, 64, dtype=torch.int32, device=DEVICE)
    s = torch.empty(32, 64, device=DEVICE)
    _scores_tile_kernel[(1,)](q.to(DEVICE), k.to(DEVICE), qs.to(DEVICE), ks.to(DEVICE), qk, s, 32, 64, head_dim,
                              magic_i2f)
    cpu_qk = q.float() @ k.float().T  # what int8_flash_attention_cpu computes
    assert torch.equal(qk.cpu().long(), q.long() @ k.long().T)
    assert torch.equal(qk.cpu().float(), cpu_qk)
    assert torch.equal(s.cpu(), cpu_qk * qs[:, None] * ks[None, :])


@triton.jit
def _round_kernel(P, SCALE, OUT, N: tl.constexpr, EMULATE_FMA: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(OUT + offs, round_to_int8(tl.load(P + offs), tl.load(SCALE + offs), EMULATE_FMA))



def test_p_rounds_to_nearest_even_exactly_as_the_cpu_implementation():
    """The FFMA-with-magic-number rounding of P (no F2I) gives round-half-even of the exact product p·scale for
    every p·scale in [0, 127.5) — the fixed scale 127 and the per-row scales 127/max alike — equal to the CPU
    implementation's rounding; ties (p = 0.5 → 63.5) go to even, not up."""
    gen = torch.Generator().manual_seed(0)
    halves = (torch.arange(128) + 0.5) / 127  # p·127 as close to k + 1/2 as fp32 gets, and just below
    p = torch.cat([torch.rand(4000, generator=gen), torch.tensor([0.0, 0.5, 1.0, 1.5 / 127, 2.5 / 127, 1e-30]),
                   halves, torch.nextafter(halves, torch.tensor(0.0))])
    p_max = torch.rand(p.shape, generator=gen) * 0.5 + 0.5
    fixed = torch.full(p.shape, 127.0)
    row = (127.0 / p_max).float()
    for scale, values in ((fixed, p), (row, (p * p_max).float())):
        n = p.numel()
        padded = 1 << (n - 1).bit_length()
        vals = torch.nn.functional.pad(values, (0, padded - n))
        scales = torch.nn.functional.pad(scale, (0, padded - n))
        out = torch.empty(padded, dtype=torch.int8, device=DEVICE)
        _round_kernel[(1,)](vals.to(DEVICE), scales.to(DEVICE), out, padded, _INTERPRETED)
        expected = torch.round(vals.double() * scales.double())
        assert expected.max() <= 127
        assert torch.equal(out.cpu().double(), expected)
        assert torch.equal(cpu_attention.round_to_int8(vals, scales).double(), expected)
    assert cpu_attention.round_to_int8(torch.tensor([0.5]), 127.0).item() == 64.0


@triton.jit
def _float8_round_kernel(X, OUT, N: tl.constexpr, MANTISSA: tl.constexpr, BIAS: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(OUT + offs, round_to_float8(tl.load(X + offs), MANTISSA, BIAS))


@pytest.mark.skipif(not _INTERPRETED, reason="the emulated rounding runs under Triton's interpreter only")
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_the_interpreters_float8_rounding_is_torchs_cast(dtype):
    """The interpreter's stand-in for the GPU's fp32 → float8 conversion (the kernel rounds P with it, by V's
    float8 type) gives PyTorch's cast (nearest, ties to even) for every value of the type, every midpoint between
    neighbours (ties), the values just either side of them, and random values, subnormals included."""
    finite = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    grid = finite[finite.isfinite() & (finite >= 0)].unique()
    grid = grid[grid < torch.finfo(dtype).max]
    midpoints = (grid[1:] + grid[:-1]) / 2
    gen = torch.Generator().manual_seed(8)
    x = torch.cat([grid, midpoints, torch.nextafter(midpoints, torch.tensor(0.0)),
                   torch.nextafter(midpoints, torch.tensor(float("inf"))),
                   torch.rand(2000, generator=gen) * grid[-1], torch.rand(500, generator=gen) * grid[8]])
    padded = 1 << (x.numel() - 1).bit_length()
    x = torch.nn.functional.pad(x, (0, padded - x.numel()))
    out = torch.empty(padded)
    info = {torch.float8_e4m3fn: (3, 7), torch.float8_e5m2: (2, 15)}[dtype]  # mantissa bits, exponent bias
    _float8_round_kernel[(1,)](x, out, padded, *info)
    assert torch.equal(out, x.to(dtype).float())


def _both(inputs, mask, is_causal, scale, p_scale, out_dtype=torch.float32, causal_offset=0, window_left=-1,
          kv_block=0, splits=None, tma=False):
    args = [inputs[name] for name in ("q", "k", "v", "q_scale", "k_scale", "v_scale")]
    sm_scale = scale if scale is not None else inputs["q"].shape[-1] ** -0.5
    shape = inputs["q"].shape
    options = KernelOptions(p_scale=p_scale, kv_block=kv_block, launch=LaunchOptions(tma_loads=tma))
    call = AttentionCall(*args, mask, is_causal, sm_scale, causal_offset, window_left, options=options)
    cpu = int8_flash_attention_cpu(call, torch.empty(shape, dtype=out_dtype), splits)
    out = torch.empty(shape, dtype=out_dtype, device=DEVICE)
    kernel = int8_flash_attention_triton(call.to(DEVICE), out, splits=splits)
    return kernel.cpu(), cpu


def _assert_kernel_matches_cpu(kernel, cpu, v_hat, ref, extra=0.0, p_step=P_STEP):
    one_p_step = p_step * v_hat.abs().amax(dim=-2, keepdim=True).repeat_interleave(
        kernel.shape[1] // v_hat.shape[1], dim=1) / torch.where(ref.row_sum > 0, ref.row_sum, 1.0)
    allowed = one_p_step + FP32_SLACK * cpu.double().abs().amax(-1, keepdim=True) + extra
    assert ((kernel.double() - cpu.double()).abs() <= allowed).all()


@pytest.mark.parametrize("n_q,n_k", [(1, 1), (17, 130), (130, 17), (100, 100)])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 80, 96, 128, 256])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("p_scale", ["fixed", "row_block"])
def test_full_int8_kernel(n_q, n_k, head_dim, is_causal, p_scale):
    gen = torch.Generator().manual_seed(n_q + n_k * 7 + head_dim)
    q, k, v = (torch.randn(1, 2, n, head_dim, generator=gen) for n in (n_q, n_k, n_k))
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    kernel, cpu = _both(inputs, None, is_causal, None, p_scale)
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, None, is_causal)
    _assert_kernel_matches_cpu(kernel, cpu, v_hat, ref)
    bound = p_quantization_bound(q_hat, k_hat, v_hat, None, is_causal, None, P_STEP)
    assert ((kernel.double() - ref.out).abs() <= bound).all()


@pytest.mark.parametrize("n_q,n_k", [(1, 1), (17, 130), (130, 17), (100, 300)])
@pytest.mark.parametrize("head_dim", [32, 64, 128, 256])
@pytest.mark.parametrize("is_causal", [False, True])
def test_fp8_pv_kernel(n_q, n_k, head_dim, is_causal):
    """pv_format="fp8": e4m3 P (×448, folded into the exponent) and V, an FP8 P·V GEMM. Kernel and CPU implementation
    agree to fp32 slack plus one e4m3 step of one P entry; both stay within e4m3's rounding bound of fp64."""
    gen = torch.Generator().manual_seed(n_q + 3 * n_k + head_dim)
    q, k, v = (torch.randn(1, 2, n, head_dim, generator=gen) for n in (n_q, n_k, n_k))
    inputs = quantized_inputs(q, k, v, pv_format="fp8")
    kernel, cpu = _both(inputs, None, is_causal, None, "fixed")
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, None, is_causal)
    _assert_kernel_matches_cpu(kernel, cpu, v_hat, ref, p_step=E4M3_STEP_NEAR_ONE)
    bound = half_int8_bound(q_hat, k_hat, v_hat, None, is_causal, None, torch.float8_e4m3fn)
    assert ((kernel.double() - ref.out).abs() <= bound).all()
    assert ((cpu.double() - ref.out).abs() <= bound).all()


@pytest.mark.parametrize("kv_block", [16, 32, 64])
@pytest.mark.parametrize("pv_format", ["int8", "fp8", "fp16"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_key_block_size_is_a_parameter_kernel_and_cpu_share(kv_block, pv_format, is_causal):
    """BLOCK_N is free (a caller, or the autotuner on a GPU, may choose it); kernel and CPU implementation at the
    same key block size agree as at the default one (128 keys at this head dim), and the block size does change
    the result (P is quantized against the
    running maximum of the blocks so far), so a comparison at different sizes would be no comparison."""
    gen = torch.Generator().manual_seed(kv_block + len(pv_format) + is_causal)
    q, k, v = (torch.randn(1, 2, n, 32, generator=gen) for n in (40, 300, 300))
    inputs = quantized_inputs(q, k, v, pv_format=pv_format)
    offset = 260 if is_causal else 0  # bottom-right: the 40 queries see most of the 300 keys
    kernel, cpu = _both(inputs, None, is_causal, None, "fixed", causal_offset=offset, kv_block=kv_block)
    q_hat, k_hat, v_hat = inputs["dequantized"]
    keep = torch.ones(40, 300, dtype=torch.bool).tril(offset) if is_causal else None
    ref = reference_attention(q_hat, k_hat, v_hat, keep, False)
    if pv_format == "fp16":
        bound = half_int8_bound(q_hat, k_hat, v_hat, keep, False, None, inputs["v"].dtype)  # as the op saw V
        assert ((cpu.double() - ref.out).abs() <= bound).all()
    else:
        step = P_STEP if pv_format == "int8" else E4M3_STEP_NEAR_ONE
        _assert_kernel_matches_cpu(kernel, cpu, v_hat, ref, p_step=step)
        bound = (p_quantization_bound(q_hat, k_hat, v_hat, keep, False, None, P_STEP) if pv_format == "int8"
                 else half_int8_bound(q_hat, k_hat, v_hat, keep, False, None, torch.float8_e4m3fn))
    assert ((kernel.double() - ref.out).abs() <= bound).all()
    if pv_format != "fp16":
        _, cpu_default = _both(inputs, None, is_causal, None, "fixed", causal_offset=offset)
        assert not torch.equal(cpu, cpu_default)


@pytest.mark.skipif(not _INTERPRETED, reason="on CUDA the autotuner chooses the key block by timing")
@pytest.mark.parametrize("pv_format", ["int8", "fp8"])
def test_autotuned_key_block_follows_the_rule_under_the_interpreter(pv_format):
    """With nothing to time, ``KV_BLOCK_AUTOTUNE`` runs the rule the CPU implementation follows: the same result,
    bit for bit, as the default key block, which differs from a 16-key one on these inputs."""
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 1, n, 32, generator=gen) for n in (20, 300, 300))
    inputs = quantized_inputs(q, k, v, pv_format=pv_format)
    tuned, cpu = _both(inputs, None, False, None, "fixed", kv_block=KV_BLOCK_AUTOTUNE)
    default, _ = _both(inputs, None, False, None, "fixed")
    small, _ = _both(inputs, None, False, None, "fixed", kv_block=16)
    assert torch.equal(tuned, default)
    assert not torch.equal(tuned, small)


@pytest.mark.parametrize("pv_format", ["int8", "fp8", "fp16"])
@pytest.mark.parametrize("n_q,n_k,head_dim,is_causal,splits", [
    (40, 320, 80, True, None),   # padded head dim, bottom-right causal, a partial last block
    (70, 144, 32, False, None),  # keys past N_K in the last 128-key block
    (1, 1536, 64, True, 3),      # decode tile, split-K
])
def test_tma_loads_give_the_pointer_loads_result(pv_format, n_q, n_k, head_dim, is_causal, splits):
    """K and V through tensor descriptors (``tma``): zeros past N_K and HEAD_DIM as the masked loads give, V read
    sequence-major (INT8, e4m3) or head-dim-major (16-bit), so the kernel's result is the pointer loads' result."""
    gen = torch.Generator().manual_seed(n_q + n_k + head_dim + len(pv_format))
    q, k, v = (torch.randn(1, 2, n, head_dim, generator=gen) for n in (n_q, n_k, n_k))
    inputs = quantized_inputs(q, k, v, pv_format=pv_format)
    if pv_format != "fp16":
        inputs["v"] = sequence_major(inputs["v"])
    offset = n_k - n_q if is_causal else 0
    args = [inputs[name].to(DEVICE) for name in ("q", "k", "v", "q_scale", "k_scale")]
    v_scale = inputs["v_scale"].to(DEVICE) if inputs["v_scale"] is not None else None
    call = AttentionCall(*args, v_scale, None, is_causal, 0.1, causal_offset=offset, options=TMA_LOADS)
    _, constexprs = launch_arguments(call, torch.empty(q.shape), target_arch=90)
    assert constexprs["TMA"] and constexprs["V_SEQUENCE_MAJOR"] == (pv_format != "fp16")
    with_tma, cpu = _both(inputs, None, is_causal, None, "fixed", causal_offset=offset, splits=splits, tma=True)
    pointers, _ = _both(inputs, None, is_causal, None, "fixed", causal_offset=offset, splits=splits)
    if _INTERPRETED:
        assert torch.equal(with_tma, pointers)
    else:  # the autotuner may pick other tiles for either (rows and reduction order differ: fp32 rounding)
        assert torch.allclose(with_tma, pointers, rtol=1e-5, atol=1e-6)
    if pv_format == "fp16":
        assert torch.allclose(with_tma, cpu, rtol=1e-5, atol=1e-6)


def test_tensor_descriptors_need_sixteen_byte_strides():
    """Where TMA's alignment fails, the launch keeps pointer loads: a sequence-major INT8 V of 300 keys (rows of
    300 bytes), an 8-wide INT8 head (rows of 8 bytes), a V with no unit stride."""
    k = torch.zeros(1, 2, 320, 64, dtype=torch.int8)
    assert tensor_descriptors_fit(k, sequence_major(k))
    assert tensor_descriptors_fit(k, k.half())
    assert not tensor_descriptors_fit(k, sequence_major(k[:, :, :300]))
    narrow = torch.zeros(1, 2, 320, 8, dtype=torch.int8)
    assert not tensor_descriptors_fit(narrow, sequence_major(narrow))
    assert not tensor_descriptors_fit(k, torch.zeros(1, 2, 320, 128, dtype=torch.half)[..., ::2])
    assert not tensor_descriptors_fit(k[..., 1:], sequence_major(k))  # K rows start off a 16-byte boundary
    scales = torch.ones(1, 2, 40), torch.ones(1, 2, 300), torch.ones(1, 2, 64)
    call = AttentionCall(k[:, :, :40], k[:, :, :300], sequence_major(k[:, :, :300]), *scales, sm_scale=0.1,
                         options=TMA_LOADS)
    _, constexprs = launch_arguments(call, torch.empty(1, 2, 40, 64), target_arch=90)
    assert not constexprs["TMA"]
    call = AttentionCall(k[:, :, :40], k, sequence_major(k), scales[0], torch.ones(1, 2, 320), scales[2], sm_scale=0.1,
                         options=TMA_LOADS)
    _, constexprs = launch_arguments(call, torch.empty(1, 2, 40, 64), target_arch=80)
    assert constexprs["TMA"] == _INTERPRETED  # no TMA before Hopper (the interpreter runs it anywhere)


@pytest.mark.parametrize("splits", [2, 3])
@pytest.mark.parametrize("pv_format", ["int8", "fp8", "fp16"])
@pytest.mark.parametrize("n_q,window_left", [(1, -1), (5, -1), (5, 60)])
def test_split_keys_decode(splits, pv_format, n_q, window_left):
    """Split-K for decode shapes (the 16-row decode tile; one program per key range, merged as FlashDecoding):
    kernel and CPU implementation split alike and agree as unsplit; both stay within the method's bound of fp64
    attention (each range quantizes P against its own maximum, never above the row's, so one INT8 step of P is
    still at most 1/127 of the largest P). With a sliding window, the first ranges see no key at all."""
    gen = torch.Generator().manual_seed(splits * 10 + n_q + len(pv_format))
    n_k = 300
    q, k, v = (torch.randn(1, 2, n, 32, generator=gen) for n in (n_q, n_k, n_k))
    inputs = quantized_inputs(q, k, v, pv_format=pv_format)
    offset = n_k - n_q
    kernel, cpu = _both(inputs, None, True, None, "fixed", causal_offset=offset, window_left=window_left,
                        kv_block=32, splits=splits)
    assert int8_attention_fwd.best_config.kwargs == {"BLOCK_M": DECODE_BLOCK_M, "BLOCK_N": 32}
    keep = torch.ones(n_q, n_k, dtype=torch.bool).tril(offset)
    if window_left >= 0:
        keep = keep.triu(offset - window_left)
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, keep, False)
    if pv_format == "fp16":
        bound = half_int8_bound(q_hat, k_hat, v_hat, keep, False, None, inputs["v"].dtype)  # as the op saw V
        assert ((cpu.double() - ref.out).abs() <= bound).all()
        assert torch.allclose(kernel, cpu, rtol=1e-5, atol=1e-6)
    else:
        step = P_STEP if pv_format == "int8" else E4M3_STEP_NEAR_ONE
        _assert_kernel_matches_cpu(kernel, cpu, v_hat, ref, p_step=step)
        bound = (p_quantization_bound(q_hat, k_hat, v_hat, keep, False, None, P_STEP) if pv_format == "int8"
                 else half_int8_bound(q_hat, k_hat, v_hat, keep, False, None, torch.float8_e4m3fn))
        _, unsplit = _both(inputs, None, True, None, "fixed", causal_offset=offset, window_left=window_left,
                           kv_block=32, splits=1)
        assert not torch.equal(cpu, unsplit)  # the ranges really ran apart
    assert ((kernel.double() - ref.out).abs() <= bound).all()


def test_split_keys_propagate_nan_and_fully_masked_rows_give_zeros():
    """A NaN key reaches its query's output through the merge, as in eager attention; a query that sees no key in
    any range gives zeros, as unsplit."""
    gen = torch.Generator().manual_seed(31)
    q, k, v = (torch.randn(1, 2, n, 32, generator=gen) for n in (3, 300, 300))
    k[0, 1, 200, 3] = float("nan")
    keep = torch.ones(1, 1, 3, 300, dtype=torch.bool)
    keep[..., 2, :] = False
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    kernel, cpu = _both(inputs, keep, False, None, "fixed", splits=3)
    eager = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    for out in (kernel, cpu):
        assert torch.equal(out[:, :, :2].isnan(), eager[:, :, :2].isnan())
        assert (out[:, :, 2] == 0).all()


@pytest.mark.parametrize("trend", ["rising", "falling"])
def test_int32_pv_sums_fold_when_a_maximum_grows(trend):
    """P·V accumulates in INT32 across key blocks while no row's maximum grows and is folded into the fp32
    accumulator when one does: scores rising along the keys make every block raise the maxima (a fold per
    block), falling scores never do after the first (one INT32 sum over all six blocks). Both agree with the CPU
    implementation and with fp64 attention within the P-quantization bound."""
    gen = torch.Generator().manual_seed(3)
    n_k, head_dim = 6 * 64, 64
    q = torch.randn(1, 2, 40, head_dim, generator=gen)
    direction = q.mean(dim=-2, keepdim=True)
    ramp = torch.linspace(0, 3, n_k)[:, None] if trend == "rising" else torch.linspace(3, 0, n_k)[:, None]
    k = ramp * direction / direction.norm(dim=-1, keepdim=True) + 0.3 * torch.randn(1, 2, n_k, head_dim, generator=gen)
    v = torch.randn(1, 2, n_k, head_dim, generator=gen)
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    kernel, cpu = _both(inputs, None, False, None, "fixed", kv_block=64)
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, None, False)
    _assert_kernel_matches_cpu(kernel, cpu, v_hat, ref)
    bound = p_quantization_bound(q_hat, k_hat, v_hat, None, False, None, P_STEP)
    assert ((kernel.double() - ref.out).abs() <= bound).all()


@pytest.mark.parametrize("n_q,n_k", [(17, 130), (130, 17), (64, 200), (1, 100), (100, 1)])
@pytest.mark.parametrize("p_scale", ["fixed", "row_block"])
def test_bottom_right_causal(n_q, n_k, p_scale):
    """causal_offset = Nk − Nq: query i sees keys j <= i + Nk − Nq, as ``causal_lower_right`` (KV-cache decoding
    and chunked prefill); queries that see no key give what SDPA gives for that mask."""
    from torch.nn.attention.bias import causal_lower_right

    gen = torch.Generator().manual_seed(n_q * 5 + n_k)
    q, k, v = (torch.randn(1, 2, n, 64, generator=gen) for n in (n_q, n_k, n_k))
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    kernel, cpu = _both(inputs, None, True, None, p_scale, causal_offset=n_k - n_q)
    keep = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, keep, False)
    _assert_kernel_matches_cpu(kernel, cpu, v_hat, ref)
    bound = p_quantization_bound(q_hat, k_hat, v_hat, keep, False, None, P_STEP)
    assert ((kernel.double() - ref.out).abs() <= bound).all()
    blind = ~keep.any(dim=-1)  # queries before the first key's diagonal
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(n_q, n_k))
    assert torch.equal(kernel[..., blind, :], sdpa[..., blind, :])


@pytest.mark.parametrize("n_q,n_k,causal_offset", [(130, 130, 0), (40, 200, 160), (200, 40, -160)])
@pytest.mark.parametrize("window_left", [0, 37, 64, 100])
def test_sliding_window(n_q, n_k, causal_offset, window_left):
    """window_left: query i sees keys i + offset − window_left <= j <= i + offset (Mistral's sliding window)."""
    gen = torch.Generator().manual_seed(n_q + window_left)
    q, k, v = (torch.randn(1, 2, n, 32, generator=gen) for n in (n_q, n_k, n_k))
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    kernel, cpu = _both(inputs, None, True, None, "fixed", causal_offset=causal_offset, window_left=window_left)
    keep = torch.ones(n_q, n_k, dtype=torch.bool).tril(causal_offset).triu(causal_offset - window_left)
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, keep, False)
    _assert_kernel_matches_cpu(kernel, cpu, v_hat, ref)
    bound = p_quantization_bound(q_hat, k_hat, v_hat, keep, False, None, P_STEP)
    assert ((kernel.double() - ref.out).abs() <= bound).all()
    assert (kernel[..., ~keep.any(-1), :] == 0).all()  # queries whose window holds no key


@pytest.mark.parametrize("v_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_int8_kernel(v_dtype):
    gen = torch.Generator().manual_seed(11)
    q, k = (torch.randn(1, 2, 80, 64, generator=gen) for _ in range(2))
    v = torch.randn(1, 2, 80, 64, generator=gen).to(v_dtype)
    inputs = quantized_inputs(q, k, v, pv_format="fp16")
    kernel, cpu = _both(inputs, None, True, None, "fixed")
    q_hat, k_hat, v_hat = inputs["dequantized"]
    bound = half_int8_bound(q_hat, k_hat, v_hat, None, True, None, inputs["v"].dtype)  # fp32 V: bf16
    ref = reference_attention(q_hat, k_hat, v_hat, None, True)
    assert ((kernel.double() - ref.out).abs() <= bound).all()
    assert ((cpu.double() - ref.out).abs() <= bound).all()


@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
def test_gqa_masks_and_strided_layout(mask_kind):
    gen = torch.Generator().manual_seed(5)
    # (B, N, H, D) storage seen as (B, H, N, D), as attention inputs usually arrive.
    q = torch.randn(2, 40, 4, 32, generator=gen).transpose(1, 2)
    k, v = (torch.randn(2, 90, 2, 32, generator=gen).transpose(1, 2) for _ in range(2))
    if mask_kind == "bool":
        mask = torch.rand(2, 1, 40, 90, generator=gen) > 0.4
        mask[..., 0] = True
    else:
        mask = torch.randn(1, 4, 1, 90, generator=gen)
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    kernel, cpu = _both(inputs, mask, False, 0.2, "fixed", out_dtype=torch.float16)
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, mask, False, 0.2)
    half_out_rounding = torch.finfo(torch.float16).eps / 2 * ref.out.abs()
    # Both round their fp32 result to fp16 once: one fp16 rounding step apart at most.
    _assert_kernel_matches_cpu(kernel.float(), cpu.float(), v_hat, ref, extra=2 * half_out_rounding)
    bound = p_quantization_bound(q_hat, k_hat, v_hat, mask, False, 0.2, P_STEP) + half_out_rounding
    assert ((kernel.double() - ref.out).abs() <= bound).all()


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_mqa_output_dtypes(out_dtype):
    gen = torch.Generator().manual_seed(13)
    q = torch.randn(1, 4, 70, 64, generator=gen)
    k, v = (torch.randn(1, 1, 70, 64, generator=gen) for _ in range(2))
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    kernel, cpu = _both(inputs, None, True, None, "fixed", out_dtype=out_dtype)
    assert kernel.dtype == out_dtype
    q_hat, k_hat, v_hat = inputs["dequantized"]
    ref = reference_attention(q_hat, k_hat, v_hat, None, True)
    bound = p_quantization_bound(q_hat, k_hat, v_hat, None, True, None, P_STEP)
    out_rounding = torch.finfo(out_dtype).eps / 2 * (ref.out.abs() + bound)  # as in the masks test above
    _assert_kernel_matches_cpu(kernel.float(), cpu.float(), v_hat, ref, extra=2 * out_rounding)
    bound = bound + out_rounding
    assert ((kernel.double() - ref.out).abs() <= bound).all()


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_16bit_outputs_are_the_fp32_result_rounded_to_nearest(out_dtype):
    """The kernel's 16-bit output is its fp32 result rounded to nearest even, as a GPU's conversion and torch's
    ``.to`` round (Triton's interpreter truncates fp32 → bf16 unless the kernel rounds first: then a result
    could sit a bf16 step off the twin's and the method's bound)."""
    gen = torch.Generator().manual_seed(14)
    q, k, v = (torch.randn(2, 3, 70, 64, generator=gen) for _ in range(3))
    inputs = quantized_inputs(q, k, v)
    rounded, _ = _both(inputs, None, False, None, "fixed", out_dtype=out_dtype)
    exact, _ = _both(inputs, None, False, None, "fixed", out_dtype=torch.float32)
    assert torch.equal(rounded, exact.to(out_dtype))
    assert not torch.equal(rounded.float(), exact)  # the fp32 results did need rounding


def test_fully_masked_rows_give_zeros_as_sdpa():
    gen = torch.Generator().manual_seed(17)
    q, k, v = (torch.randn(1, 2, 40, 32, generator=gen) for _ in range(3))
    keep = torch.rand(1, 1, 40, 40, generator=gen) > 0.5
    keep[..., 5, :] = False
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    kernel, cpu = _both(inputs, keep, False, None, "fixed")
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    assert not kernel.isnan().any()
    assert torch.equal(kernel[..., 5, :], expected[..., 5, :])
    assert (kernel[..., 5, :] == 0).all()


@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_kernel_propagates_nan_like_eager(where):
    gen = torch.Generator().manual_seed(21)
    q, k, v = (torch.randn(1, 2, 40, 32, generator=gen) for _ in range(3))
    {"q": q, "k": k, "v": v}[where][0, 0, 11, 5] = float("nan")
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    kernel, cpu = _both(inputs, None, False, None, "fixed")
    eager = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.equal(kernel.isnan(), eager.isnan())
    assert torch.equal(cpu.isnan(), eager.isnan())


@triton.jit
def _bias_kernel(BIAS, OUT, N: tl.constexpr):
    cols = tl.arange(0, N)
    tl.store(OUT + cols, _bias_in_base2(tl.load(BIAS + cols)))


_EDGE_BIASES = [float("-inf"), "lowest", -3.0e38, BF16_MASK_FLOOR, -2.0e38, -70000.0, -1.0, -0.0, 0.0, 0.5, 65504.0,
                1.0e38, "highest", float("nan"), float("inf"), -1.0e38]


def _edge_biases(dtype: torch.dtype) -> torch.Tensor:
    """Additive mask entries at the edges of ``dtype``'s range (cast to it: beyond fp16's they become ±inf)."""
    finfo = torch.finfo(dtype)
    values = [finfo.min if v == "lowest" else finfo.max if v == "highest" else v for v in _EDGE_BIASES]
    return torch.tensor(values, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_kernels_mask_in_base2_is_the_twins(dtype):
    """The kernel's per-dtype forms of an additive mask in base 2 (fp16: no clamp, bfloat16: a floor on the bits,
    fp32: the clamp of the product) give the twin's values bit for bit, −inf, NaN and both infinities included."""
    bias = _edge_biases(dtype)
    out = torch.empty(bias.numel(), dtype=torch.float32, device=DEVICE)
    _bias_kernel[(1,)](bias.to(DEVICE), out, bias.numel())
    expected = cpu_attention.additive_mask_in_base2(bias)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0, equal_nan=True)
    negative = bias.isfinite() & (bias < 0)
    assert expected[negative].isfinite().all()  # no finite entry overflows to −inf in base 2


def test_bfloat16_mask_entries_below_the_floor_count_as_the_floor():
    bias = _edge_biases(torch.bfloat16)
    got = cpu_attention.additive_mask_in_base2(bias)
    floor = torch.tensor(BF16_MASK_FLOOR).float() * LOG2E
    below = (bias < BF16_MASK_FLOOR) & (bias != float("-inf"))
    assert below.sum() == 2  # finfo(bfloat16).min and -3e38
    assert (got[below] == floor).all() and got[below].isfinite().all()
    rest = ~below & ~bias.isnan()
    assert torch.equal(got[rest], torch.where(bias[rest] == float("-inf"), bias[rest].float(),
                                              bias[rest].float() * LOG2E))
    assert got[bias.isnan()].isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", ["per_key", "per_query"])
def test_additive_masks_of_every_dtype_and_layout_match_the_twin(dtype, rows):
    """An additive mask in each float dtype, either one row for every query (key padding, (B, 1, 1, Nk), stride 0
    along the queries) or a row per query ((B, 1, Nq, Nk), whose rows past Nq the kernel's last tile must not read),
    with −inf, ``finfo.min`` and (bfloat16) entries below the floor: the kernel adds what the twin adds.
    Batch entry 1 is masked with ``finfo.min`` everywhere: with fp32 and bfloat16 every row a uniform average, as
    eager softmax gives."""
    gen = torch.Generator().manual_seed(29)
    q, k, v = (torch.randn(2, 2, 37, 32, generator=gen) for _ in range(3))
    bias = 3 * torch.randn(2, 1, 1 if rows == "per_key" else 37, 37, generator=gen)
    bias[0, ..., 3] = float("-inf")
    bias[0, ..., 5] = torch.finfo(dtype).min
    bias[0, ..., 7] = -3.0e38 if dtype != torch.float16 else -60000.0
    bias[1] = torch.finfo(dtype).min
    bias = bias.to(dtype)
    inputs = quantized_inputs(q, k, v, pv_format="int8")
    kernel, cpu = _both(inputs, bias, False, None, "fixed")
    q_hat, k_hat, v_hat = inputs["dequantized"]
    assert not kernel.isnan().any() and not cpu.isnan().any()
    ref = reference_attention(q_hat, k_hat, v_hat, bias.double(), False, None)
    _assert_kernel_matches_cpu(kernel, cpu, v_hat, ref)
    if dtype != torch.float16:  # fp16's finfo.min (-65504) is a constant shift of every score: no mask at all
        uniform = v_hat[1].float().mean(dim=-2, keepdim=True).expand(2, 37, 32)
        for out in (kernel, cpu):
            assert torch.allclose(out[1], uniform, atol=1e-5)


def test_rows_masked_with_finfo_min_average_uniformly_like_eager():
    """Hugging Face masks with finfo(float32).min, not -inf: a fully masked row is a uniform average."""
    gen = torch.Generator().manual_seed(23)
    q, k, v = (torch.randn(1, 1, 30, 32, generator=gen) for _ in range(3))
    bias = torch.zeros(1, 1, 30, 30)
    bias[..., 4, :] = torch.finfo(torch.float32).min
    bias[..., :, 20:] = torch.finfo(torch.float32).min
    inputs = quantized_inputs(q, k, v, pv_format="fp16")
    kernel, cpu = _both(inputs, bias, False, None, "fixed")
    v_seen = inputs["dequantized"][2].float()  # half-INT8 rounds an fp32 V to bf16
    eager = torch.nn.functional.scaled_dot_product_attention(q, k, v_seen, attn_mask=bias)
    uniform = v_seen.mean(dim=-2)
    for out in (kernel, cpu):
        assert torch.allclose(out[..., 4, :], uniform, atol=1e-5)
        assert torch.allclose(out[..., 4, :], eager[..., 4, :], atol=1e-5)
