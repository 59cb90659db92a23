"""intfa_compile/pv_formats.py: each P·V format is one record, and what config, the op, the guards, the sites and
the key-block rule do with a format is what its record says."""

from __future__ import annotations

import typing

import pytest
import torch

from intfa_compile import config
from intfa_compile.numerics import KV_BLOCK_SIZE, default_kv_block
from intfa_compile.ops import int8_sdpa
from intfa_compile.pv_formats import DEFAULT_PV_FORMAT, PV_FORMATS, PVFormat, pv_format, pv_format_of_value
from intfa_compile.quantize import quantize_value, quantize_value_static
from intfa_compile.sites import rewritten_sites


def test_config_offers_exactly_the_formats_there_are():
    assert typing.get_args(typing.get_type_hints(config)["pv_format"]) == tuple(PV_FORMATS)
    assert config.pv_format == DEFAULT_PV_FORMAT in PV_FORMATS


def test_each_format_has_its_own_v_dtype_counter_and_outcome():
    formats = list(PV_FORMATS.values())
    for field in ("v_dtype", "counter", "outcome"):
        values = [getattr(fmt, field) for fmt in formats]
        assert len(set(values)) == len(values), field
    assert [fmt.name for fmt in formats] == list(PV_FORMATS)


@pytest.mark.parametrize("fmt", list(PV_FORMATS.values()), ids=list(PV_FORMATS))
def test_the_op_input_of_each_format_maps_back_to_it(fmt: PVFormat):
    gen = torch.Generator().manual_seed(3)
    value = torch.randn(2, 3, 40, 32, generator=gen, dtype=torch.float16)
    v_in, v_scale = quantize_value(value, fmt)
    assert pv_format_of_value(v_in.dtype) is fmt
    assert (v_scale is not None) == fmt.quantized
    static, static_scale = quantize_value_static(value, fmt, value.abs().amax(dim=(0, 2)).float())
    assert static.dtype == v_in.dtype and (static_scale is not None) == fmt.quantized
    if fmt.quantized:
        assert v_scale.shape == static_scale.shape == (2, 3, 32)
        assert v_in.stride(-2) == 1 and static.stride(-2) == 1  # sequence-major, as the kernel reads V


_QUANTIZED = [fmt for fmt in PV_FORMATS.values() if fmt.quantized]


@pytest.mark.parametrize("fmt", _QUANTIZED, ids=[fmt.name for fmt in _QUANTIZED])
def test_v_is_quantized_onto_the_range_of_the_records_dtype(fmt: PVFormat):
    """V's quantizers read the format from its record: each channel's max|v| lands on the dtype's largest value
    (127 for INT8, 448 for e4m3: ``v_max``), every entry within half a step (INT8) or half an e4m3 ulp of its
    value; calibrated ranges equal to the dynamic ones give the same integers and scales."""
    gen = torch.Generator().manual_seed(11)
    value = torch.randn(1, 3, 40, 16, generator=gen) * torch.logspace(-2, 2, 16)
    v_in, v_scale = quantize_value(value, fmt)
    assert fmt.v_max == {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}[fmt.v_dtype]
    assert torch.equal(v_in.float().abs().amax(dim=-2), torch.full((1, 3, 16), fmt.v_max))
    dequantized = v_in.float() * v_scale.unsqueeze(-2)
    relative = 2.0**-4 if fmt.v_dtype.is_floating_point else 0.0  # e4m3: 3 mantissa bits, half an ulp 2^-4
    assert ((dequantized - value).abs() <= v_scale.unsqueeze(-2) * 0.5 + relative * value.abs()).all()
    static, static_scale = quantize_value_static(value, fmt, value.abs().amax(dim=(0, 2)))
    assert torch.equal(static, v_in) and torch.equal(static_scale, v_scale)


def test_the_p_factor_is_the_float8_range_and_none_elsewhere():
    assert PV_FORMATS["fp8"].p_log2_scale == 8.807354922057604  # log2(448): P·448 in e4m3
    assert PV_FORMATS["int8"].p_log2_scale == PV_FORMATS["fp16"].p_log2_scale == 0.0
    with pytest.raises(ValueError, match="no quantized range"):
        _ = PV_FORMATS["fp16"].v_max


@pytest.mark.parametrize("fmt", list(PV_FORMATS.values()), ids=list(PV_FORMATS))
def test_p_scales_a_format_does_not_take_are_refused_by_config_and_the_op(fmt: PVFormat):
    refused = [scale for scale in ("fixed", "row_block") if scale not in fmt.p_scales]
    for scale in refused:
        with pytest.raises(ValueError, match="scale only"):
            config.resolve({"pv_format": fmt.name, "p_scale": scale})
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 24, 32, generator=gen) for _ in range(3))
    for scale in ("fixed", "row_block"):
        if scale in fmt.p_scales:
            assert int8_sdpa(q, k, v, pv_format=fmt.name, kernel_options={"p_scale": scale}).isfinite().all()
        else:
            with pytest.raises(ValueError, match="scale only"):
                int8_sdpa(q, k, v, pv_format=fmt.name, kernel_options={"p_scale": scale})


@pytest.mark.parametrize("fmt", list(PV_FORMATS.values()), ids=list(PV_FORMATS))
def test_the_key_block_rule_reads_the_record(fmt: PVFormat):
    assert default_kv_block(fmt.widest_128_key_head_dim, fmt) == 128
    assert default_kv_block(2 * fmt.widest_128_key_head_dim, fmt) == KV_BLOCK_SIZE
    assert config.resolve({"pv_format": fmt.name}).pv is fmt


def test_rewritten_sites_counts_every_format():
    assert rewritten_sites({fmt.counter: 1 for fmt in PV_FORMATS.values()} | {"left_alone": 5}) == len(PV_FORMATS)


@pytest.mark.parametrize("name", ["int4", "FP8", True, None])
def test_unknown_names_are_refused_naming_the_formats(name):
    with pytest.raises(ValueError, match="pv_format must be one of"):
        pv_format(name)
    with pytest.raises(ValueError):
        config.resolve({"pv_format": name})
