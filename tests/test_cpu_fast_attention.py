"""intfa_compile/cpu_fast_attention.py: the op's CPU implementation against its oracle, the step-by-step twin
(``cpu_attention.int8_flash_attention_cpu``, itself the oracle of the Triton kernel).

Both form the same integers (exact Q·Kᵀ products, the same P roundings) and differ by fp32 rounding only: of the
scores' scalings, of the online softmax's rescalings (one exp2 per block here, a chain of α's there) and of the
P·V sums. A rounding difference can move a P entry across a rounding midpoint, by one step of P's format; so the
two may differ by one such step of one entry (``one_p_step``: the step times the largest |V| of the channel over
the row sum) plus fp32 slack on the output, the same allowance the kernel gets against the twin
(``test_int8_flash_attention._assert_kernel_matches_cpu``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import intfa_compile.cpu_fast_attention as fast
from intfa_compile.attention_call import AttentionCall, KernelOptions
from intfa_compile.cpu_attention import int8_flash_attention_cpu
from intfa_compile.cpu_fast_attention import exact_int8_gemm, fast_int8_attention_cpu
from tests.helpers import E4M3_STEP_NEAR_ONE, P_STEP, fp32_slack, quantized_inputs, unit_roundoff


@pytest.fixture(autouse=True, params=["native", "pytorch"])
def row_pass(request, monkeypatch) -> str:
    """Every test runs twice: with the native pass between the GEMMs (``cpu_softmax_rows``, built wherever the suite
    runs: ``test_cpu_softmax_rows``) and with the PyTorch passes it replaces (formats and masks it leaves, machines
    where it cannot be built)."""
    if request.param == "pytorch":
        monkeypatch.setattr(fast, "native_softmax_rows", lambda: None)
    return request.param


GEMMS = [False, True] if exact_int8_gemm() else [False]
"""Q·Kᵀ as fp32 GEMMs of the integers everywhere; with ``torch._int_mm`` too where this CPU computes it exactly."""


def _p_step(inputs: dict, pv_format: str) -> float:
    """One step of P in its format near P = 1 (the largest spacing P's values can have)."""
    if pv_format == "int8":
        return P_STEP
    if pv_format == "fp8":
        return E4M3_STEP_NEAR_ONE
    return 2 * unit_roundoff(inputs["v"].dtype)


def _row_sums(q_hat: torch.Tensor, k_hat: torch.Tensor, mask, sm_scale: float, is_causal: bool = False,
              causal_offset: int = 0, window_left: int = -1, **_) -> torch.Tensor:
    """Σ_j exp(S_ij − max_j S_ij) over the keys row i sees, in fp64 (B, Hq, Nq, 1): the denominator the output's
    error is divided by."""
    group = q_hat.shape[1] // k_hat.shape[1]
    scores = q_hat @ k_hat.repeat_interleave(group, 1).transpose(-1, -2) * sm_scale
    n_q, n_k = scores.shape[-2:]
    if mask is not None:
        scores = (scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                  else scores + mask.double().clamp(min=torch.finfo(torch.float64).min))
    if is_causal:
        rows, cols = torch.arange(n_q).unsqueeze(-1), torch.arange(n_k)
        dropped = (cols > rows + causal_offset) | ((cols < rows + causal_offset - window_left) & (window_left >= 0))
        scores = scores.masked_fill(dropped, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    return torch.exp(scores - torch.where(top == float("-inf"), 0.0, top)).nan_to_num(0.0).sum(-1, keepdim=True)


def _compare(inputs: dict, pv_format: str, mask=None, scale: float | None = None, splits: int | None = None,
             int8_gemm: bool = False, **call_options) -> tuple[torch.Tensor, torch.Tensor]:
    """(fast, twin) for the same call; asserts they agree within one P step of one entry plus fp32 slack."""
    q8 = inputs["q"]
    sm_scale = scale if scale is not None else q8.shape[-1] ** -0.5
    option_names = [field.name for field in dataclasses.fields(KernelOptions)]
    options = KernelOptions(**{name: call_options.pop(name) for name in option_names if name in call_options})
    call = AttentionCall(q8, inputs["k"], inputs["v"], inputs["q_scale"], inputs["k_scale"], inputs["v_scale"], mask,
                         sm_scale=sm_scale, options=options, **call_options)
    twin = int8_flash_attention_cpu(call, torch.empty(q8.shape), splits)
    out = fast_int8_attention_cpu(call, torch.empty(q8.shape), splits, int8_gemm=int8_gemm)
    q_hat, k_hat, v_hat = inputs["dequantized"]
    group = q8.shape[1] // inputs["k"].shape[1]
    # One entry's step times the channel's largest |V|, over the row sum.
    row_sum = _row_sums(q_hat, k_hat, mask, sm_scale, **call_options)
    one_p_step = (_p_step(inputs, pv_format) * v_hat.abs().amax(dim=-2, keepdim=True).repeat_interleave(group, 1)
                  / torch.where(row_sum > 0, row_sum, 1.0))
    slack = fp32_slack(q_hat, k_hat, mask if mask is not None and mask.dtype != torch.bool else None, sm_scale)
    allowed = one_p_step + slack * twin.double().abs().amax(-1, keepdim=True)
    difference = (out.double() - twin.double()).abs()
    both_nan = out.isnan() & twin.isnan()
    assert (both_nan | (difference <= allowed)).all(), f"largest difference {difference.max():.3g}"
    return out, twin


def _inputs(shape_q, shape_kv, pv_format, seed, v_dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape_q, generator=gen)
    k, v = torch.randn(*shape_kv, generator=gen), torch.randn(*shape_kv, generator=gen).to(v_dtype)
    return quantized_inputs(q, k, v.float() if pv_format != "fp16" else v, pv_format)


FORMATS = [("int8", "fixed"), ("int8", "row_block"), ("fp8", "fixed"), ("fp16", "fixed")]


@pytest.mark.parametrize("int8_gemm", GEMMS)
@pytest.mark.parametrize(("pv_format", "p_scale"), FORMATS)
@pytest.mark.parametrize("n_q,n_k", [(1, 1), (17, 130), (130, 17), (100, 300)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_every_pv_format_matches_the_twin(pv_format, p_scale, n_q, n_k, is_causal, int8_gemm):
    inputs = _inputs((1, 4, n_q, 64), (1, 2, n_k, 64), pv_format, n_q + 7 * n_k)
    _compare(inputs, pv_format, p_scale=p_scale, is_causal=is_causal, int8_gemm=int8_gemm)


@pytest.mark.parametrize("v_dtype", [torch.float16, torch.bfloat16])
def test_half_int8_rounds_p_to_the_values_type(v_dtype):
    inputs = _inputs((2, 2, 40, 32), (2, 2, 200, 32), "fp16", 3, v_dtype)
    assert inputs["v"].dtype == v_dtype
    _compare(inputs, "fp16")


@pytest.mark.parametrize("pv_format", ["int8", "fp16"])
@pytest.mark.parametrize("mask_shape", [(2, 1, 1, 150), (2, 4, 33, 150), (33, 150)])
@pytest.mark.parametrize("kind", ["bool", "additive", "finfo_min_rows"])
def test_masks_broadcast_as_the_twin_takes_them(pv_format, mask_shape, kind):
    inputs = _inputs((2, 4, 33, 32), (2, 2, 150, 32), pv_format, len(mask_shape))
    gen = torch.Generator().manual_seed(9)
    if kind == "bool":
        mask = torch.rand(*mask_shape, generator=gen) > 0.4
    else:
        mask = torch.randn(*mask_shape, generator=gen) * 3
        if kind == "finfo_min_rows":  # Hugging Face's masking: finfo.min, a whole row of it where a query sees nothing
            mask = mask.masked_fill(torch.rand(*mask_shape, generator=gen) > 0.5, torch.finfo(torch.float32).min)
            mask[..., 0, :] = torch.finfo(torch.float32).min
    _compare(inputs, pv_format, mask)


@pytest.mark.parametrize("n_k", [150, 256])
def test_a_bias_whose_keys_are_not_contiguous_matches_the_twin(n_k):
    """A relative-position bias built as (queries, keys, heads) and permuted (T5's layout), with keys padded to a
    whole block or not: the rows read it with keys contiguous (``F.pad`` keeps the permuted strides)."""
    inputs = _inputs((1, 4, 33, 32), (1, 4, n_k, 32), "fp16", n_k)
    bias = torch.randn(33, n_k, 4, generator=torch.Generator().manual_seed(2)).permute(2, 0, 1).unsqueeze(0)
    assert bias.stride(-1) != 1
    _compare(inputs, "fp16", bias)


@pytest.mark.parametrize("pv_format", ["int8", "fp8", "fp16"])
@pytest.mark.parametrize(("offset", "window"), [(0, -1), (260, -1), (260, 50), (0, 7), (-5, -1)])
@pytest.mark.parametrize("kv_block", [16, 64, 128])
def test_causal_bands_and_key_blocks(pv_format, offset, window, kv_block):
    """Top-left and bottom-right diagonals, sliding windows (which skip whole blocks left of every row's window) and
    a diagonal that leaves the first rows without keys, at several key blocks (the result depends on the block)."""
    inputs = _inputs((1, 4, 40, 32), (1, 2, 300, 32), pv_format, offset + window + kv_block)
    _compare(inputs, pv_format, is_causal=True, causal_offset=offset, window_left=window, kv_block=kv_block)


@pytest.mark.parametrize("splits", [None, 1, 3])
def test_decode_key_splits_restart_the_running_maximum_as_the_twin(splits):
    """One query over 2,048 keys: by default the shared rule splits the keys in four ranges (each quantizes P
    against its own running maximum, as the CUDA launcher's programs); forced splits are followed too. The keys
    are laid out so that the running maximum decides P: one spike key at the start of every 128 keys, the others
    2^-9 below it (so against a spike they round to P = 0 of 127, against their own block's maximum they would
    not)."""
    gen = torch.Generator().manual_seed(11)
    q8 = torch.full((1, 2, 1, 64), 127, dtype=torch.int8)
    k8 = torch.full((1, 2, 2048, 64), 100, dtype=torch.int8)
    k8[..., ::128, :] = 127
    v8 = torch.randint(-127, 128, (1, 2, 2048, 64), generator=gen, dtype=torch.int8)
    scales = torch.ones(1, 2, 1), torch.ones(1, 2, 2048), torch.rand(1, 2, 64, generator=gen)
    sm_scale = 9 / (127 * 27 * 64 * 1.4426950408889634)  # 27·64·127 between the spike's and the others' Q·Kᵀ
    # Increasing spikes: every range's maximum moves at its first block, and a block's own maximum is below it.
    k_scale = scales[1].clone()
    k_scale[..., ::128] = torch.linspace(1.0, 1.02, 16)
    inputs = {"q": q8, "k": k8, "v": v8, "q_scale": scales[0], "k_scale": k_scale, "v_scale": scales[2],
              "dequantized": (q8.double(), k8.double() * k_scale.double().unsqueeze(-1),
                              v8.double() * scales[2].double().unsqueeze(-2))}
    _compare(inputs, "int8", scale=sm_scale, splits=splits, kv_block=64)


@pytest.mark.parametrize("budget", [1, 2000, 50_000, 1 << 20])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "padding", "additive"])
def test_any_chunking_of_the_rows_computes_the_same(monkeypatch, budget, is_causal, mask_kind):
    """Rows are independent: a chunk of one query position of one head, of several heads, of one batch entry or of
    all of them (``SCORES_PER_CHUNK``) gives the same result within the allowance, with a mask broadcast over heads
    and queries or a mask of every row."""
    monkeypatch.setattr(fast, "SCORES_PER_CHUNK", budget)
    inputs = _inputs((2, 6, 50, 32), (2, 3, 90, 32), "int8", budget)
    gen = torch.Generator().manual_seed(budget)
    mask = None
    if mask_kind == "padding":
        mask = torch.ones(2, 1, 1, 90, dtype=torch.bool)
        mask[1, ..., 70:] = False
    elif mask_kind == "additive":
        mask = torch.randn(2, 6, 50, 90, generator=gen)
    _compare(inputs, "int8", mask, is_causal=is_causal, causal_offset=40 if is_causal else 0)


@pytest.mark.parametrize("budget", [2000, 1 << 20])
def test_an_output_of_any_layout_gets_the_same_values(monkeypatch, budget):
    """The op writes into the output it is given, which Inductor may lay out as (B, N, H, D): the same bits as into
    a contiguous one, whether a chunk is part of a batch entry or several entries."""
    monkeypatch.setattr(fast, "SCORES_PER_CHUNK", budget)
    inputs = _inputs((3, 4, 20, 32), (3, 2, 40, 32), "fp16", 1)
    call = AttentionCall(*(inputs[name] for name in ("q", "k", "v", "q_scale", "k_scale", "v_scale")),
                         sm_scale=0.2)
    transposed = fast_int8_attention_cpu(call, torch.empty(3, 20, 4, 32).transpose(1, 2))
    assert torch.equal(transposed, fast_int8_attention_cpu(call, torch.empty(3, 4, 20, 32)))


@pytest.mark.skipif(not exact_int8_gemm(), reason="this CPU has no exact torch._int_mm (no INT8 dot products)")
@pytest.mark.parametrize("pv_format", ["int8", "fp16"])
def test_int8_and_fp32_gemms_give_identical_results(pv_format):
    """Both compute the Q·Kᵀ integers exactly, so everything after them is the same arithmetic: equal bit for bit."""
    inputs = _inputs((1, 4, 70, 64), (1, 2, 200, 64), pv_format, 5)
    call = AttentionCall(inputs["q"], inputs["k"], inputs["v"], inputs["q_scale"], inputs["k_scale"],
                         inputs["v_scale"], sm_scale=0.125, is_causal=True)
    outputs = [fast_int8_attention_cpu(call, torch.empty(1, 4, 70, 64), int8_gemm=flag) for flag in (True, False)]
    assert torch.equal(*outputs)


def test_an_int8_gemm_that_saturates_is_not_used(monkeypatch):
    """Without INT8 dot products oneDNN's s8·s8 GEMM sums pairs in 16 bits and saturates; the probe sees it."""
    def saturating(a, b):
        return (a.int() @ b.int()).clamp(-2**15, 2**15 - 1)

    monkeypatch.setattr(torch, "_int_mm", saturating)
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True, raising=False)
    exact_int8_gemm.cache_clear()
    try:
        assert not exact_int8_gemm()
    finally:
        exact_int8_gemm.cache_clear()


@pytest.mark.parametrize("pv_format", ["int8", "fp16"])
def test_rows_that_see_no_key_give_zeros(pv_format):
    inputs = _inputs((1, 2, 20, 32), (1, 2, 64, 32), pv_format, 2)
    keep = torch.rand(20, 64, generator=torch.Generator().manual_seed(1)) > 0.5
    keep[3] = False
    out, twin = _compare(inputs, pv_format, keep)
    assert (out[:, :, 3] == 0).all() and (twin[:, :, 3] == 0).all()
    causal, _ = _compare(inputs, pv_format, is_causal=True, causal_offset=-4)  # rows 0..3 see no key
    assert (causal[:, :, :4] == 0).all() and (causal[:, :, 4:] != 0).any(-1).all()


@pytest.mark.parametrize("mask_kind", ["bool", "additive", None])
@pytest.mark.parametrize("pv_format", ["int8", "fp16"])
def test_nan_stays_in_its_row(mask_kind, pv_format):
    """A NaN query scale makes its row NaN and no other: with a boolean mask (the scores may then not be finite), an
    additive one, or none (the query scale in the exponent)."""
    inputs = _inputs((1, 2, 20, 32), (1, 2, 64, 32), pv_format, 2)
    inputs["q_scale"][0, 1, 7] = float("nan")
    keep = torch.rand(20, 64, generator=torch.Generator().manual_seed(1)) > 0.5
    mask = {"bool": keep, "additive": torch.zeros(20, 64).masked_fill(~keep, float("-inf")), None: None}[mask_kind]
    out, _ = _compare(inputs, pv_format, mask)
    assert out[0, 1, 7].isnan().all() and not out[0, 0].isnan().any() and not out[0, 1, 8:].isnan().any()


def test_a_nan_key_outside_the_mask_does_not_reach_the_row():
    """A dropped key whose scale is NaN (garbage in a padded position) changes nothing, as in the twin: with a
    non-finite scale the mask is applied by ``masked_fill_``, not by adding −inf (NaN + −inf is NaN)."""
    inputs = _inputs((1, 2, 8, 32), (1, 2, 40, 32), "fp16", 4)
    inputs["k_scale"][..., 30:] = float("nan")
    keep = torch.ones(1, 1, 1, 40, dtype=torch.bool)
    keep[..., 30:] = False
    out, _ = _compare(inputs, "fp16", keep)
    assert not out.isnan().any()
    causal, _ = _compare(inputs, "fp16", is_causal=True, causal_offset=20)  # rows see keys up to 20..27 only
    assert not causal.isnan().any()


def test_an_option_the_fast_path_does_not_compute_with_runs_the_twin(monkeypatch, caplog):
    """A kernel option left out of ``FAST_PATH_OPTIONS`` (as a new one is until the fast path learns it) is never
    ignored: a call that sets it gets the twin's result, bit for bit, and the log says why; calls at its default
    keep the fast path."""
    inputs = _inputs((1, 2, 40, 32), (1, 2, 90, 32), "int8", 11)
    tensors = [inputs[name] for name in ("q", "k", "v", "q_scale", "k_scale", "v_scale")]
    row_block = AttentionCall(*tensors, sm_scale=0.2, options=KernelOptions(p_scale="row_block"))
    fixed = dataclasses.replace(row_block, options=KernelOptions())
    twin_calls = []

    def twin(call, out, splits=None):
        twin_calls.append(call.options)
        return int8_flash_attention_cpu(call, out, splits)

    monkeypatch.setattr(fast, "int8_flash_attention_cpu", twin)
    monkeypatch.setattr(fast, "FAST_PATH_OPTIONS", fast.FAST_PATH_OPTIONS - {"p_scale"})
    fast._log_twin_once.cache_clear()
    with caplog.at_level("INFO", logger="intfa_compile"):
        out = fast_int8_attention_cpu(row_block, torch.empty(1, 2, 40, 32))
        fast_int8_attention_cpu(fixed, torch.empty(1, 2, 40, 32))
    assert twin_calls == [row_block.options]  # the default-valued call stayed on the fast path
    assert torch.equal(out, int8_flash_attention_cpu(row_block, torch.empty(1, 2, 40, 32)))
    assert "does not compute with the kernel option(s) p_scale" in caplog.text
    fast._log_twin_once.cache_clear()
