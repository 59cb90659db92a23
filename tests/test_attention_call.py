"""intfa_compile/attention_call.py: the op's call described whole, and the contract it is checked against."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import intfa_compile  # noqa: F401  (registers the op)
from intfa_compile import config
from intfa_compile.attention_call import (
    DEFAULT_LAUNCH,
    DEFAULT_OPTIONS,
    AttentionCall,
    KernelOptions,
    LaunchOptions,
    bind_op_arguments,
    check_call,
    empty_output,
    mask_broadcasts_to,
    op_signature,
    out_dtype_of,
)
from intfa_compile.numerics import KV_BLOCK_AUTOTUNE
from intfa_compile.pv_formats import FP8, FP16, INT8


def _call(head_dim: int = 64, v_dtype: torch.dtype = torch.int8, **changes) -> AttentionCall:
    q = torch.zeros(1, 4, 10, head_dim, dtype=torch.int8)
    k = torch.zeros(1, 2, 12, head_dim, dtype=torch.int8)
    v = torch.zeros(1, 2, 12, head_dim, dtype=v_dtype)
    v_scale = torch.ones(1, 2, head_dim) if v_dtype in (torch.int8, torch.float8_e4m3fn) else None
    option_names = {field.name for field in dataclasses.fields(KernelOptions)}
    options = KernelOptions(**{name: value for name, value in changes.items() if name in option_names})
    call = AttentionCall(q, k, v, torch.ones(1, 4, 10), torch.ones(1, 2, 12), v_scale, options=options)
    return dataclasses.replace(call, **{name: value for name, value in changes.items() if name not in option_names})


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
    assert (moved.sm_scale, moved.out_dtype, moved.options) == (call.sm_scale, call.out_dtype, call.options)


@pytest.mark.parametrize("changes, error, message", [
    ({"window_left": 5}, ValueError, "needs is_causal=True"),
    ({"p_scale": "per_row"}, ValueError, "p_scale must be one of"),
    ({"kv_block": 96}, ValueError, "kv_block must be"),
    ({"attn_mask": torch.ones(1, 3, 10, 12)}, ValueError, "does not broadcast"),
    ({"attn_mask": torch.ones(1, 1, 1, 12, dtype=torch.int32)}, TypeError, "boolean .* or additive"),
    ({"out_dtype": "float64"}, TypeError, "out_dtype must be one of"),
])
def test_check_call_refuses_naming_the_argument(changes, error, message):
    check_call(_call())
    with pytest.raises(error, match=message):
        check_call(_call(**changes))


def test_fp8_v_takes_the_fixed_p_scale_only_and_out_dtypes_are_names():
    with pytest.raises(ValueError, match="fixed scale only"):
        check_call(_call(v_dtype=torch.float8_e4m3fn, p_scale="row_block"))
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
        positional = torch.ops.intfa.int8_attention(*fake.tensors, False, 0.125, 0, -1, "float16", "fixed")
        named = torch.ops.intfa.int8_attention(*fake.tensors[:6], attn_mask=None, is_causal=True, sm_scale=0.125,
                                               p_scale="fixed", out_dtype="bfloat16", kv_block=64)
    assert positional.shape == named.shape == (1, 4, 10, 64)
    assert (positional.dtype, named.dtype) == (torch.float16, torch.bfloat16)
    assert empty_output(call).stride() == call.q.stride() and empty_output(call).dtype == torch.float32


def test_launch_options_travel_as_the_words_of_those_that_are_on():
    """Every combination of launch options reaches the call whole through the op's one ``launch`` word list."""
    names = [field.name for field in dataclasses.fields(LaunchOptions)]
    for on in range(2 ** len(names)):
        options = LaunchOptions(**{name: bool(on >> i & 1) for i, name in enumerate(names)})
        assert LaunchOptions.of_words(options.words) == options
    assert DEFAULT_LAUNCH.words == "" and LaunchOptions.of_words("") == DEFAULT_LAUNCH
    assert LaunchOptions(tma_loads=True).words == "tma_loads"


def test_the_op_refuses_a_launch_word_it_does_not_know():
    call = _call()
    with pytest.raises(ValueError, match=r"launch takes the words \['tma_loads'\].*'tma_loads tmp'"):
        torch.ops.intfa.int8_attention(*call.tensors, False, 0.125, out_dtype="float16", launch="tma_loads tmp")
    with FakeTensorMode() as mode, pytest.raises(ValueError, match="launch takes the words"):
        fake = [mode.from_tensor(t) for t in call.tensors[:6]]
        torch.ops.intfa.int8_attention(*fake, None, False, 0.125, out_dtype="float16", launch="fast")
    schema = torch.ops.intfa.int8_attention.default._schema
    assert [str(a.type) for a in schema.arguments if a.name == "launch"] == ["str"]
    assert not any(a.name.startswith("tma") for a in schema.arguments)  # launch knobs leave the schema


def test_the_ops_schema_is_the_calls_fields_in_order():
    """Both ops' flat schemas are made from ``AttentionCall`` (``options`` spread into ``KernelOptions``' fields),
    so a field added to the description is a parameter of both, and a call survives the trip through them."""
    call_fields = [field.name for field in dataclasses.fields(AttentionCall) if field.name != "options"]
    option_fields = [field.name for field in dataclasses.fields(KernelOptions)]
    schema = torch.ops.intfa.int8_attention.default._schema
    assert [a.name for a in schema.arguments] == [*call_fields, *option_fields, "exact_query", "exact_key",
                                                   "exact_value", "scale_factor"]
    assert list(op_signature().parameters) == [*call_fields, *option_fields]
    call = _call(is_causal=True, window_left=3, out_dtype="bfloat16", p_scale="row_block", kv_block=32,
                 launch=LaunchOptions(tma_loads=True))
    arguments = call.op_arguments()
    assert arguments["launch"] == "tma_loads" and arguments["kv_block"] == 32
    back = AttentionCall.of_op_arguments(arguments)
    assert all(getattr(back, name) is getattr(call, name) for name in ("q", "k", "v", "q_scale", "k_scale"))
    assert (back.options, back.window_left, back.out_dtype) == (call.options, 3, "bfloat16")
    defaults = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
    assert defaults["p_scale"] == DEFAULT_OPTIONS.p_scale and defaults["launch"] == DEFAULT_LAUNCH.words


def test_kernel_options_are_read_from_the_settings_of_their_names():
    """Every kernel and launch option is the config toggle (or ``Settings`` property) of its name, so a compile's
    settings choose them all without a line per option."""
    settings = config.resolve({"pv_format": "int8", "p_scale": "row_block", "kv_block_size": 64, "tma_loads": True})
    assert KernelOptions.of_settings(settings) == KernelOptions("row_block", 64, LaunchOptions(tma_loads=True))
    assert KernelOptions.of_settings(config.resolve()) == DEFAULT_OPTIONS
    for record in (KernelOptions, LaunchOptions):
        for field in dataclasses.fields(record):
            assert field.name == "launch" or hasattr(settings, field.name), field.name


def test_kernel_options_come_as_a_record_or_a_mapping_of_its_fields():
    assert KernelOptions.of(None) is DEFAULT_OPTIONS
    assert KernelOptions.of({"p_scale": "row_block"}) == KernelOptions(p_scale="row_block")
    with pytest.raises(TypeError, match=r"kernel_options takes the keys \['p_scale', 'kv_block', 'launch'\]"):
        KernelOptions.of({"block_size": 64})


def test_op_arguments_bind_as_the_signature_binds_them():
    """The op's hot path zips the dispatcher's positional arguments (trailing defaults left out) instead of
    binding them; the result is the bind's, and any other call is bound (a missing argument refused by name)."""
    signature = op_signature("exact_query")
    call = _call()
    positional = (*call.tensors, True, 0.125, 3, -1, "float16", "row_block", 32)

    def bound(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs)
        arguments.apply_defaults()
        return dict(arguments.arguments)

    for count in (6, 9, len(positional)):
        assert bind_op_arguments(signature, positional[:count], {}) == bound(*positional[:count])
    assert bind_op_arguments(signature, positional[:6], {"sm_scale": 0.5}) == bound(*positional[:6], sm_scale=0.5)
    with pytest.raises(TypeError, match="q_scale"):
        bind_op_arguments(signature, positional[:3], {})
