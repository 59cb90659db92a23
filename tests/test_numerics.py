"""intfa_compile/numerics.py: the rules of shapes and constants the kernel and its CPU twin share."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from intfa_compile import config, numerics
from intfa_compile.numerics import (
    INT8_MAX,
    LOG2E,
    P_DEQUANT_FIXED,
    check_choice,
    chunk_width,
    folds_query_scale,
    hadamard_block,
    lazy_pv_accumulation,
    padded_head_dim,
)
from intfa_compile.pv_formats import FP8


def test_constants_are_what_they_say():
    assert LOG2E == pytest.approx(math.log2(math.e), rel=1e-15)
    assert FP8.p_log2_scale == pytest.approx(math.log2(FP8.v_max), rel=1e-15)  # the kernel's FP8 P shift
    assert FP8.v_max == torch.finfo(torch.float8_e4m3fn).max and P_DEQUANT_FIXED == 1 / INT8_MAX


@pytest.mark.parametrize("head_dim, padded", [(1, 32), (16, 32), (32, 32), (33, 64), (64, 64), (80, 128), (128, 128),
                                              (129, 256), (256, 256)])
def test_head_dims_pad_to_a_power_of_two_of_at_least_32(head_dim, padded):
    assert padded_head_dim(head_dim) == padded


def test_the_second_pv_accumulator_only_up_to_128_wide_tiles():
    assert lazy_pv_accumulation(128) and lazy_pv_accumulation(80) and not lazy_pv_accumulation(129)


def test_the_query_scale_folds_into_the_exponent_without_a_mask_and_for_a_positive_scale_only():
    assert folds_query_scale(None, 0.125)
    assert not folds_query_scale(None, -0.125) and not folds_query_scale(torch.zeros(1, 1, 1, 4), 0.125)


@pytest.mark.parametrize("head_dim, block, chunk", [(32, 32, 32), (64, 64, 64), (96, 32, 32), (128, 128, 128),
                                                    (256, 128, 128), (8, 8, 16), (80, 16, 16)])
def test_hadamard_blocks_divide_the_head_dim(head_dim, block, chunk):
    assert (hadamard_block(head_dim), chunk_width(head_dim)) == (block, chunk)
    assert head_dim % block == 0 and chunk % block == 0


def test_allowed_values_are_the_literal_types_configs_declare():
    hints = typing.get_type_hints(config)
    for name, allowed in (("p_scale", numerics.P_SCALE_MODES), ("qk_granularity", numerics.QK_GRANULARITIES),
                          ("v_granularity", numerics.V_GRANULARITIES), ("qk_rotation", numerics.QK_ROTATIONS),
                          ("qk_bits", numerics.QK_BITS)):
        assert typing.get_args(hints[name]) == allowed, name


def test_check_choice_refuses_bools_and_unknown_values_naming_them():
    check_choice("qk_bits", 8, numerics.QK_BITS)
    with pytest.raises(ValueError, match="qk_bits must be one of"):
        check_choice("qk_bits", True, (1, 8))  # True == 1, but a bool is not a bit width
    with pytest.raises(ValueError, match="'per_row'"):
        check_choice("qk_granularity", "per_row", numerics.QK_GRANULARITIES)
