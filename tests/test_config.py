"""intfa_compile/config.py: toggles declared once (typed module globals with docstrings), validated from their
types, patched for a scope, frozen per compilation into ``Settings``, whose fields the declarations make."""

from __future__ import annotations

import ast
import dataclasses
import threading
import typing
from pathlib import Path

import pytest

from intfa_compile import config
from intfa_compile.numerics import KV_BLOCK_AUTOTUNE


def test_settings_are_made_from_the_declarations():
    """One declaration per toggle: ``Settings`` has a field of the same name and type for each, in order, and each
    toggle is followed by its docstring in the module's source."""
    hints = {name: hint for name, hint in typing.get_type_hints(config).items() if not name.startswith("_")}
    assert [(field.name, field.type) for field in dataclasses.fields(config.Settings)] == list(hints.items())
    body = ast.parse(Path(config.__file__).read_text(encoding="utf-8")).body
    documented = {statement.target.id for statement, following in zip(body, body[1:], strict=False)
                  if isinstance(statement, ast.AnnAssign) and isinstance(following, ast.Expr)
                  and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)}
    assert set(hints) <= documented, set(hints) - documented


def test_settings_are_frozen_typed_and_hold_every_toggle():
    settings = config.resolve({"kv_block_size": "tune", "pv_format": "int8"})
    assert tuple(field.name for field in dataclasses.fields(settings)) == config.keys()
    assert settings.pv_format == "int8" and settings.kv_block == KV_BLOCK_AUTOTUNE
    assert config.resolve({"kv_block_size": 64}).kv_block == 64 and config.resolve().kv_block == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.pv_format = "fp16"  # type: ignore[misc]
    assert config.resolve() == config.resolve() and hash(config.resolve()) == hash(config.resolve())
    assert config.resolve().fingerprint()["pv_format"] == "fp16"


@pytest.mark.parametrize("option", [{"p_scale": "row_block"}, {"v_granularity": "per_tensor"}])
def test_options_of_a_quantized_pv_refuse_the_16_bit_default(option):
    """Under the default half-INT8 nothing of P·V is quantized: an option for it would silently do nothing."""
    with pytest.raises(ValueError, match=f"{next(iter(option))}.*pv_format='int8'"):
        config.resolve(option)
    assert config.resolve({**option, "pv_format": "int8"}).pv_format == "int8"


@pytest.mark.parametrize("key, bad", [("qk_granularity", "per_tensor"), ("v_granularity", "per_token"),
                                      ("qk_bits", 16), ("smooth_k", 1), ("p_scale", "dynamic"), ("min_seq_len", -1),
                                      ("fallback", "ignore"), ("enabled", 1), ("kv_block_size", 48)])
def test_bad_option_values_raise(key, bad):
    with pytest.raises(ValueError, match=key):
        config.validate({key: bad})


def test_config_patch_restores_and_validates():
    before = config.snapshot()
    with config.patch(pv_format="int8", min_seq_len=7):
        assert config.pv_format == "int8" and config.min_seq_len == 7
    assert config.snapshot() == before
    with pytest.raises(ValueError):
        config.p_scale = "nope"
    assert config.snapshot() == before


def _in_thread(function):
    """``function()``'s result, run in a new thread (which starts with no patch of ours)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(function()))
    thread.start()
    thread.join()
    return result[0]


def test_a_patch_holds_in_its_own_thread_only():
    """As torch's config patches: a thread compiling under ``patch`` does not change what another one compiles
    with; a plain assignment is for the whole process."""
    before = config.snapshot()
    with config.patch(pv_format="int8", min_seq_len=7):
        assert (config.pv_format, config.min_seq_len) == ("int8", 7)
        assert _in_thread(lambda: (config.pv_format, config.resolve().min_seq_len)) == (
            before["pv_format"], before["min_seq_len"])
    ready, done = threading.Barrier(2), []

    def compile_under(fmt: str) -> None:
        with config.patch(pv_format=fmt):
            ready.wait()  # both patches are in force at once
            done.append((fmt, config.resolve().pv_format, config.snapshot()["pv_format"]))

    threads = [threading.Thread(target=compile_under, args=(fmt,)) for fmt in ("int8", "fp8")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(done) == [("fp8", "fp8", "fp8"), ("int8", "int8", "int8")]
    assert config.snapshot() == before


def test_an_assignment_is_for_every_thread_but_inside_a_patch_for_that_patch():
    before = config.min_seq_len
    try:
        config.min_seq_len = 33
        assert _in_thread(lambda: config.min_seq_len) == 33
        with config.patch(min_seq_len=5):
            config.min_seq_len = 6  # a toggle the patch holds: changed within the patch
            assert config.min_seq_len == 6 and _in_thread(lambda: config.min_seq_len) == 33
        assert config.min_seq_len == 33
    finally:
        config.min_seq_len = before


def test_generation_moves_with_assignments_and_with_patches_of_this_context():
    start = config.generation()
    with config.patch(min_seq_len=3):
        inside = config.generation()
        assert inside != start
        assert _in_thread(config.generation) == start  # another thread's settings did not change
        with config.patch(min_seq_len=4):
            assert config.generation() not in (start, inside)
        assert config.generation() == inside
    assert config.generation() == start
