"""intfa_compile/cpu_softmax_rows.py: the native pass between the CPU path's two GEMMs.

Its results as a whole are held to the twin by ``tests/test_cpu_fast_attention.py`` (every test there runs with
this pass and with the PyTorch passes it replaces). Here: that it builds wherever the suite runs (``torch.compile``
on CPU needs the same compiler), its pieces (exp2 to a bound derived from its polynomial; P's roundings equal to
torch's casts bit for bit, at every midpoint), and the logged fallback where it cannot be built."""

from __future__ import annotations

import ctypes

import pytest
import torch

import intfa_compile.cpu_fast_attention as fast
import intfa_compile.cpu_softmax_rows as rows
from intfa_compile.attention_call import AttentionCall
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


def test_exp2_is_within_two_ulps_of_the_exact_value():
    """2^n·poly(f), f in [−½, ½]: the degree-7 Taylor polynomial's truncation is below (ln 2 / 2)^8 / 8! < 6e-9
    relative (0.1 ulp); Horner's 14 fp32 roundings add at most about 1.5 ulps, since each earlier one is scaled by
    |f| ≤ ½ (measured: 1.1). Below fp32's normal range the pass gives 0, which is what P and the row sums can
    resolve (each row's sum is at least 1)."""
    x = torch.cat([torch.linspace(-126, 0, 1 << 21), -torch.rand(1 << 16) * 126, torch.arange(-126.0, 1.0)])
    exact = torch.exp2(x.double())
    ulp = (exact.float().nextafter(torch.tensor(_INF)) - exact.float()).double()
    error_in_ulps = ((_apply("intfa_exp2", x).double() - exact).abs() / ulp)
    assert error_in_ulps.max() <= 2.0
    assert torch.equal(_apply("intfa_exp2", torch.arange(-126.0, 1.0)), torch.exp2(torch.arange(-126.0, 1.0)))
    special = _apply("intfa_exp2", torch.tensor([-126.5, -127.0, -1e30, -_INF, float("nan"), 0.0]))
    assert special[:4].eq(0).all() and special[4].isnan() and special[5] == 1


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
