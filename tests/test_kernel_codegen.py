"""The kernel's INT8 GEMMs compile to the tensor-core instructions meant for each GPU, checked without one.

Triton compiles for sm_80 / sm_90 ahead of time with its own ptxas; cuobjdump reads the SASS. Runs in
a subprocess because this test session has TRITON_INTERPRET=1 set (the interpreter cannot compile).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, "benchmarks")
    from inspect_sass import compile_fp8_baseline, compile_variant
    fp8 = compile_fp8_baseline(90)
    window = compile_variant(90, True, causal=True, window=True)
    out = {"fp8-90": {"ptx": fp8.ptx_matrix, "sass": fp8.sass_counts},
           "window-90": {"ptx": window.ptx_matrix, "sass": window.sass_counts}}
    for arch in (80, 90):
        for quantize_pv in (True, False):
            info = compile_variant(arch, quantize_pv)
            out[f"{arch}-{quantize_pv}"] = {"ptx": info.ptx_matrix, "sass": info.sass_counts}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def codegen():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=root,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_hopper_uses_int8_wgmma_for_both_gemms_in_full_int8(codegen):
    full = codegen["90-True"]
    assert all(".s32.s8.s8" in instr for instr in full["ptx"]), full["ptx"]
    assert len(full["ptx"]) == 2 and all(instr.startswith("wgmma") for instr in full["ptx"])
    assert full["sass"].get("IGMMA", 0) > 0 and "HMMA" not in full["sass"] and "IMMA" not in full["sass"]


def test_hopper_half_int8_uses_int8_wgmma_for_qk_and_fp16_for_pv(codegen):
    half = codegen["90-False"]
    assert any(".s32.s8.s8" in instr for instr in half["ptx"]) and any(".f16.f16" in instr for instr in half["ptx"])
    assert half["sass"].get("IGMMA", 0) > 0 and half["sass"].get("HGMMA", 0) > 0


def test_ampere_uses_imma(codegen):
    full = codegen["80-True"]
    assert full["ptx"] and all("mma.sync" in instr and "s8.s8" in instr for instr in full["ptx"])
    assert full["sass"].get("IMMA", 0) > 0


def test_fp8_baseline_uses_fp8_wgmma_on_hopper(codegen):
    """The benchmark's FP8 yardstick runs on Hopper's FP8 tensor cores (QGMMA), not an upcast 16-bit path."""
    fp8 = codegen["fp8-90"]
    assert len(fp8["ptx"]) == 2 and all(instr.startswith("wgmma") and ".e4m3.e4m3" in instr for instr in fp8["ptx"])
    assert fp8["sass"].get("QGMMA", 0) > 0 and "HGMMA" not in fp8["sass"]


def test_causal_sliding_window_variant_compiles_to_int8_wgmma_on_hopper(codegen):
    """The causal loop with a sliding window (only exercised by the interpreter on CPU) compiles for sm_90 and keeps
    both GEMMs on IGMMA."""
    window = codegen["window-90"]
    assert len(window["ptx"]) == 2 and all(".s32.s8.s8" in instr for instr in window["ptx"])
    assert window["sass"].get("IGMMA", 0) > 0 and "HMMA" not in window["sass"]
