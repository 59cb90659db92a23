"""intfa_compile/cpu_softmax_rows.py: the native pass between the CPU path's two GEMMs.

Its results as a whole are held to the twin by ``tests/test_cpu_fast_attention.py`` (every test there runs with
this pass and with the PyTorch passes it replaces). Here: that it builds wherever the suite runs (``torch.compile``
on CPU needs the same compiler); that on x86 its P is the PyTorch passes' bit for bit (ATen's exp2 and addcmul
arithmetic) and its row sums differ only by summation order; its pieces (exp2 within 2 ulps, the polynomial used
off x86 to a bound derived from it; P's roundings equal to torch's casts at every midpoint); and the logged
fallback where it cannot be built."""

from __future__ import annotations

import ctypes
import platform

import pytest
import torch

import intfa_compile.cpu_fast_attention as fast
import intfa_compile.cpu_softmax_rows as rows
from intfa_compile.attention_call import AttentionCall, KernelOptions
from tests.helpers import quantized_inputs

_INF = float("inf")


def _apply(function_name: str, x: torch.Tensor, *extra: int) -> torch.Tensor:
    """One of the source's elementwise test entries on ``x`` (padded to whole vectors)."""
    n = -(-x.numel() // rows.LANES) * rows.LANES
    padded, y = torch.zeros(n), torch.empty(n)
    padded[: x.numel()] = x
    getattr(rows.native_library(), function_name)(ctypes.c_void_p(padded.data_ptr()), ctypes.c_void_p(y.data_ptr()),
                                                  ctypes.c_int64(n), *(ctypes.c_int64(e) for e in extra))
    return y[: x.numel()]


def test_the_native_pass_builds_here():
    """Wherever ``torch.compile`` runs on CPU (which the suite needs) Inductor's compiler builds the pass; a failure
    here is a regression, not a machine to skip."""
    assert rows.native_softmax_rows() is not None


@pytest.mark.parametrize("function_name", ["intfa_exp2", "intfa_exp2_polynomial"])
def test_exp2_is_within_two_ulps_of_the_exact_value(function_name):
    """The pass's exp2 (ATen's SLEEF function on x86, below) and the polynomial it uses elsewhere. The polynomial,
    2^n·poly(f) with f in [−½, ½]: the degree-7 Taylor truncation is below (ln 2 / 2)^8 / 8! < 6e-9 relative (0.1
    ulp); Horner's 14 fp32 roundings add at most about 1.5 ulps, each earlier one scaled by |f| ≤ ½ (measured: 1.1).
    Below fp32's normal range the polynomial gives 0, which is what P and the row sums can resolve (each row's sum
    is at least 1)."""
    x = torch.cat([torch.linspace(-126, 0, 1 << 21), -torch.rand(1 << 16) * 126, torch.arange(-126.0, 1.0)])
    exact = torch.exp2(x.double())
    ulp = (exact.float().nextafter(torch.tensor(_INF)) - exact.float()).double()
    error_in_ulps = ((_apply(function_name, x).double() - exact).abs() / ulp)
    assert error_in_ulps.max() <= 2.0
    assert torch.equal(_apply(function_name, torch.arange(-126.0, 1.0)), torch.exp2(torch.arange(-126.0, 1.0)))
    special = _apply(function_name, torch.tensor([-1e30, -_INF, float("nan"), 0.0, -127.0, -140.0]))
    assert special[:2].eq(0).all() and special[2].isnan() and special[3] == 1
    assert (special[4:] <= 2.0**-126).all()  # 0 from the polynomial, subnormal from SLEEF


def test_exp2_is_atens_on_x86():
    """Where ATen's vectorized exp2 is SLEEF's (x86 with AVX2 or AVX-512) the pass calls the same function, so P is
    the PyTorch passes' bit for bit (``test_the_pass_computes_the_pytorch_passes_p``)."""
    if platform.machine() not in ("x86_64", "AMD64") or torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip(f"ATen's exp2 here is not SLEEF's AVX2/AVX-512 one ({platform.machine()})")
    assert rows.native_library().intfa_exp2_is_atens() == 1
    x = torch.cat([torch.linspace(-130, 1, 1 << 20), -torch.rand(1 << 16) * 30, torch.tensor([-_INF, 0.0])])
    assert torch.equal(_apply("intfa_exp2", x), torch.exp2(x))


CHUNK_CASES = {
    "no mask, INT8 fixed": dict(pv_format="int8"),
    "no mask, INT8 per row block": dict(pv_format="int8", p_scale="row_block"),
    "no mask, fp16 P": dict(pv_format="fp16"),
    "no mask, bf16 P": dict(pv_format="fp16", v_dtype=torch.bfloat16),
    "additive mask, fp16 P": dict(pv_format="fp16", mask=True),
    "causal window, INT8 fixed": dict(pv_format="int8", is_causal=True, causal_offset=30, window_left=40),
}


@pytest.mark.parametrize("case", CHUNK_CASES)
def test_the_pass_computes_the_pytorch_passes_p(case):
    """One chunk (two batch entries, GQA, two split-K ranges of two key blocks) through the native pass and through
    the PyTorch ops it replaces: where its exp2 is ATen's (x86), P is the same bit for bit, and the row sums, added
    in another order, differ by at most 2·(n − 1) roundings of n nonnegative terms (n: keys per row)."""
    options = dict(CHUNK_CASES[case])
    pv_format, p_scale = options.pop("pv_format"), options.pop("p_scale", "fixed")
    v_dtype, with_mask = options.pop("v_dtype", torch.float16), options.pop("mask", False)
    gen = torch.Generator().manual_seed(len(case))
    q, k = torch.randn(2, 4, 24, 32, generator=gen) * 2, torch.randn(2, 2, 200, 32, generator=gen) * 2
    v = torch.randn(2, 2, 200, 32, generator=gen)
    inputs = quantized_inputs(q, k, v.to(v_dtype) if pv_format == "fp16" else v, pv_format)
    mask = torch.randn(2, 1, 24, 200, generator=gen) * 3 if with_mask else None
    call = AttentionCall(*(inputs[name] for name in ("q", "k", "v", "q_scale", "k_scale", "v_scale")), mask,
                         sm_scale=0.2, options=KernelOptions(p_scale=p_scale, kv_block=64), **options)
    ops = fast._operands(call, 64, int8_gemm=False)
    native = fast._native_p_format(call, ops, 64)
    assert native is not None
    chunk = fast._Chunk(0, 4, 0, 24, 0, ops.v.shape[1], heads_k=2, group=2)
    products = fast._products(ops, chunk)
    p_native, sums_native = fast._chunk_softmax_rows(products.clone(), ops, call, chunk, 64, 2, native)
    p_torch, sums_torch = fast._chunk_softmax_rows(products.clone(), ops, call, chunk, 64, 2, None)
    if rows.native_library().intfa_exp2_is_atens():
        assert torch.equal(p_native, p_torch)
    keys = products.shape[-1]
    assert ((sums_native - sums_torch).abs() <= 2 * (keys - 1) * 2.0**-24 * sums_torch).all()
    assert (sums_torch > 0).all()

def _values_and_midpoints(dtype: torch.dtype, one_bits: int) -> torch.Tensor:
    """Every value of ``dtype`` in [0, 1], the midpoints between neighbours and the fp32 numbers either side of
    each midpoint: where a rounding to nearest, ties to even, can go wrong."""
    values = torch.arange(0, one_bits + 1, dtype=torch.int16).view(dtype).float()
    midpoints = ((values[1:].double() + values[:-1].double()) / 2).float()  # exact in fp32
    return torch.cat([values, midpoints, midpoints.nextafter(torch.tensor(_INF)),
                      midpoints.nextafter(torch.tensor(-_INF))]).clamp(0, 1)


@pytest.mark.parametrize(("dtype", "one_bits"), [(torch.float16, 0x3C00), (torch.bfloat16, 0x3F80)])
def test_16bit_p_rounds_as_torch_casts(dtype, one_bits):
    """P in [0, 1] rounded to V's 16-bit type: fp16's subnormals included, bit for bit torch's ``.to(dtype)``."""
    x = _values_and_midpoints(dtype, one_bits)
    assert torch.equal(_apply("intfa_round_p", x, rows.P_FORMATS[dtype]), x.to(dtype).float())


def test_int8_p_rounds_as_torch_round():
    """round(127·P), ties to even, from the fp32 product: every level, every midpoint and their neighbours."""
    levels = torch.arange(0, 2 * 127 + 1).float() / 254  # the levels and the midpoints between them
    x = torch.cat([levels, levels.nextafter(torch.tensor(_INF)), levels.nextafter(torch.tensor(-_INF)),
                   torch.rand(1 << 16, generator=torch.Generator().manual_seed(0))]).clamp(0, 1)
    assert torch.equal(_apply("intfa_round_p", x, rows.P_FORMATS["int8_fixed"]), torch.round(x * 127))


def test_a_pass_that_cannot_be_built_leaves_the_pytorch_passes_and_says_why(monkeypatch, caplog):
    """No compiler (or an Inductor whose cache API moved): the CPU path still answers, through the PyTorch passes,
    and the log says why once."""
    from torch._inductor import codecache

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(codecache.CppCodeCache, "load", no_compiler)
    rows.native_library.cache_clear()
    gen = torch.Generator().manual_seed(3)
    inputs = quantized_inputs(*(torch.randn(1, 2, 40, 32, generator=gen) for _ in range(3)), "int8")
    call = AttentionCall(*(inputs[name] for name in ("q", "k", "v", "q_scale", "k_scale", "v_scale")),
                         is_causal=True, sm_scale=0.2)
    try:
        with caplog.at_level("WARNING", logger="intfa_compile"):
            assert rows.native_softmax_rows() is None
            out = fast.fast_int8_attention_cpu(call, torch.empty(1, 2, 40, 32))
    finally:
        rows.native_library.cache_clear()
    assert "could not be built (RuntimeError: no C++ compiler)" in caplog.text
    monkeypatch.setattr(fast, "native_softmax_rows", lambda: None)  # the PyTorch passes, chosen
    assert torch.equal(out, fast.fast_int8_attention_cpu(call, torch.empty(1, 2, 40, 32)))
