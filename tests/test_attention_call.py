"""intfa_compile/attention_call.py: the op's call described whole, and the contract it is checked against."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import intfa_compile  # noqa: F401  (registers the op)
from intfa_compile.attention_call import (
    DEFAULT_LAUNCH,
    AttentionCall,
    LaunchOptions,
    check_call,
    empty_output,
    mask_broadcasts_to,
    out_dtype_of,
)
from intfa_compile.numerics import KV_BLOCK_AUTOTUNE
from intfa_compile.pv_formats import FP8, FP16, INT8


def _call(head_dim: int = 64, v_dtype: torch.dtype = torch.int8, **changes) -> AttentionCall:
    q = torch.zeros(1, 4, 10, head_dim, dtype=torch.int8)
    k = torch.zeros(1, 2, 12, head_dim, dtype=torch.int8)
    v = torch.zeros(1, 2, 12, head_dim, dtype=v_dtype)
    v_scale = torch.ones(1, 2, head_dim) if v_dtype in (torch.int8, torch.float8_e4m3fn) else None
    return dataclasses.replace(AttentionCall(q, k, v, torch.ones(1, 4, 10), torch.ones(1, 2, 12), v_scale), **changes)


def test_the_call_names_its_format_and_key_block():
    assert _call().pv is INT8 and _call(v_dtype=torch.float8_e4m3fn).pv is FP8 and _call(v_dtype=torch.half).pv is FP16
    assert _call().block_n == 128 and _call(head_dim=256).block_n == 64
    assert _call(head_dim=128, v_dtype=torch.float8_e4m3fn).block_n == 64
    assert _call(kv_block=32).block_n == 32 and _call(kv_block=KV_BLOCK_AUTOTUNE).block_n == 128  # the rule off CUDA


def test_the_call_is_frozen_and_moves_whole():
    call = _call(attn_mask=torch.ones(1, 1, 1, 12, dtype=torch.bool))
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.is_causal = True  # type: ignore[misc]
    moved = call.to("meta")
    assert all(t is None or t.device.type == "meta" for t in moved.tensors) and moved.attn_mask is not None
    assert (moved.sm_scale, moved.p_scale, moved.kv_block) == (call.sm_scale, call.p_scale, call.kv_block)


@pytest.mark.parametrize("changes, error, message", [
    ({"window_left": 5}, ValueError, "needs is_causal=True"),
    ({"p_scale": "per_row"}, ValueError, "p_scale must be one of"),
    ({"kv_block": 96}, ValueError, "kv_block must be"),
    ({"attn_mask": torch.ones(1, 3, 10, 12)}, ValueError, "does not broadcast"),
    ({"attn_mask": torch.ones(1, 1, 1, 12, dtype=torch.int32)}, TypeError, "boolean .* or additive"),
])
def test_check_call_refuses_naming_the_argument(changes, error, message):
    check_call(_call(), "float16")
    with pytest.raises(error, match=message):
        check_call(_call(**changes), "float16")


def test_fp8_v_takes_the_fixed_p_scale_only_and_out_dtypes_are_names():
    with pytest.raises(ValueError, match="fixed scale only"):
        check_call(_call(v_dtype=torch.float8_e4m3fn, p_scale="row_block"), "float32")
    assert out_dtype_of("bfloat16") is torch.bfloat16
    with pytest.raises(TypeError, match="out_dtype must be one of"):
        out_dtype_of("float64")


def test_masks_broadcast_as_sdpa_broadcasts_them():
    assert mask_broadcasts_to((12,), (1, 4, 10, 12)) and mask_broadcasts_to((1, 4, 1, 12), (1, 4, 10, 12))
    assert not mask_broadcasts_to((2, 1, 1, 12), (1, 4, 10, 12))
    assert not mask_broadcasts_to((1, 1, 1, 1, 12), (1, 4, 10, 12))


def test_the_fake_takes_the_ops_arguments_by_position_and_by_name():
    call = _call()
    with FakeTensorMode() as mode:
        fake = dataclasses.replace(call, **{name: mode.from_tensor(getattr(call, name))
                                            for name in ("q", "k", "v", "q_scale", "k_scale", "v_scale")})
        positional = torch.ops.intfa.int8_attention(*fake.tensors, False, 0.125, "fixed", "float16")
        named = torch.ops.intfa.int8_attention(*fake.tensors[:6], attn_mask=None, is_causal=True, sm_scale=0.125,
                                               p_scale="fixed", out_dtype="bfloat16", kv_block=64)
    assert positional.shape == named.shape == (1, 4, 10, 64)
    assert (positional.dtype, named.dtype) == (torch.float16, torch.bfloat16)
    assert empty_output(call.q, "float32").stride() == call.q.stride()


def test_launch_options_travel_as_the_words_of_those_that_are_on():
    """Every combination of launch options reaches the call whole through the op's one ``launch`` word list."""
    names = [field.name for field in dataclasses.fields(LaunchOptions)]
    for on in range(2 ** len(names)):
        options = LaunchOptions(**{name: bool(on >> i & 1) for i, name in enumerate(names)})
        assert LaunchOptions.of_words(options.words) == options
    assert DEFAULT_LAUNCH.words == "" and LaunchOptions.of_words("") == DEFAULT_LAUNCH
    assert LaunchOptions(tma=True).words == "tma"


def test_the_op_refuses_a_launch_word_it_does_not_know():
    call = _call()
    with pytest.raises(ValueError, match=r"launch takes the words \['tma'\].*'tma tmp'"):
        torch.ops.intfa.int8_attention(*call.tensors, False, 0.125, "fixed", "float16", launch="tma tmp")
    with FakeTensorMode() as mode, pytest.raises(ValueError, match="launch takes the words"):
        fake = [mode.from_tensor(t) for t in call.tensors[:6]]
        torch.ops.intfa.int8_attention(*fake, None, False, 0.125, "fixed", "float16", launch="fast")
    schema = torch.ops.intfa.int8_attention.default._schema
    assert [str(a.type) for a in schema.arguments if a.name == "launch"] == ["str"]
    assert not any(a.name == "tma" for a in schema.arguments)  # launch knobs leave the schema
