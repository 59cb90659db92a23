"""What the kernels compile to on sm_80 / sm_90, checked without a GPU, as a launch compiles them.

Triton compiles ahead of time with its own ptxas; cuobjdump reads the SASS (``benchmarks/inspect_sass.py``,
with the launch-time specialization of a real call). These tests pin the properties the speed work relies
on: the GEMMs on the fast tensor-core instructions, no F2I for P's rounding, at most ~one slow-unit
instruction per score in the main loop, no byte-wise transposition of V, no spills. Runs in a subprocess
because this test session has TRITON_INTERPRET=1 set (the interpreter cannot compile).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json
    from benchmarks.inspect_sass import inspect_variant, opcode_families
    from benchmarks.pipe_model import model
    out = {}
    for name, args in {
        "90-full": (90, "full-int8", 128), "90-half": (90, "half-int8", 128), "80-full": (80, "full-int8", 128),
        "80-half": (80, "half-int8", 128), "90-fp8": (90, "fp8-baseline", 128), "90-fp16": (90, "fp16-baseline", 128),
        "90-full-64": (90, "full-int8", 64), "90-fp8pv": (90, "fp8-pv", 128),
    }.items():
        info = inspect_variant(*args)
        row = model(info)
        out[name] = {"ptx": info.ptx_matrix, "sass": info.sass_counts, "loop": info.loop_histogram,
                     "loop_families": opcode_families(info.loop_histogram),
                     "rare_families": opcode_families(info.loop_rare_histogram),
                     "spills": info.spills, "local": info.local_bytes,
                     "registers": info.registers, "slow_per_score": row.slow_unit_per_score,
                     "tensor": row.tensor, "pipes": row.pipes, "block_m": info.block_m, "block_n": info.block_n}
    from benchmarks.inspect_sass import launch_space, spill_sweep
    from intfa_compile.kernels.int8_flash_attention import TUNED_TRITON, triton_release
    out["sweep"], out["cases"] = spill_sweep(), [case.label() for case in launch_space()]
    out["tuned"] = triton_release() == TUNED_TRITON
    out["triton"] = "%d.%d" % triton_release()
    decode = inspect_variant(90, "full-int8", 128, decode=True)
    out["90-decode"] = {"ptx": decode.ptx_matrix, "spills": decode.spills, "block_m": decode.block_m,
                        "sass": decode.sass_counts}
    for name, arch in (("90-full-tma", 90), ("80-full-tma", 80)):
        tma = inspect_variant(arch, "full-int8", 128, tma=True)
        out[name] = {"sass": tma.sass_counts, "loop": tma.loop_histogram, "spills": tma.spills,
                     "pipes": model(tma).pipes}
    window = inspect_variant(90, "full-int8", 128, causal=True, window_left=100)
    out["90-causal"] = {"ptx": window.ptx_matrix, "sass": window.sass_counts}
    print(json.dumps(out))
""")


PEER_SCRIPT = textwrap.dedent("""
    import json
    from benchmarks.inspect_sass import inspect_peer
    from benchmarks.pipe_model import model
    sage = inspect_peer(90, "sage-1.0.6", 128)
    print(json.dumps({"loop": sage.loop_histogram, "spills": sage.spills, "block_m": sage.block_m,
                      "block_n": sage.block_n, "slow_per_score": model(sage).slow_unit_per_score}))
""")


REDUNDANT_EXPS = {True: 1, False: 2}
"""Exps per score of the d = 128 tile: one on the tuned Triton's 128×128 tile (8 warps, a warpgroup per 64 rows);
two on the register-safe 64×128 tile of other releases (8 warps on 64 rows: each warpgroup computes every score).
The price of no spills there (NOTES.md, "Versions measured")."""


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.fixture(scope="module")
def codegen():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=_clean_env(), cwd=ROOT,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_hopper_uses_int8_wgmma_for_both_gemms_in_full_int8(codegen):
    full = codegen["90-full"]
    assert all(".s32.s8.s8" in instr for instr in full["ptx"]), full["ptx"]
    # At 128 keys both GEMMs are m64n128k32 (one PTX form); pipe_model.model checks the loop does both GEMMs' MACs.
    assert full["ptx"] and all(instr.startswith("wgmma") for instr in full["ptx"])
    assert full["sass"].get("IGMMA", 0) > 0 and "HMMA" not in full["sass"] and "IMMA" not in full["sass"]


def test_full_int8_rounds_p_without_f2i_and_issues_one_slow_unit_instruction_per_score(codegen):
    """P's rounding is an FFMA with a magic number (no F2I), and the P·V sums stay INT32 between rescales (no
    per-block I2F of the P·V tile): the 16/clock unit sees only exp2, one per score (issue 11's ≤ 1.15)."""
    full = codegen["90-full"]
    loop = full["loop_families"]
    assert "F2I" not in loop and "I2F" not in loop and "F2F" not in loop
    assert full["sass"].get("F2I", 0) <= 1  # outside the loop: one integer division's reciprocal trick
    assert loop.get("MUFU", 0) > 0
    assert full["slow_per_score"] <= 1.15 * REDUNDANT_EXPS[codegen["tuned"]]
    # The P·V accumulator's conversion happens only on the rare rescale path, not every block.
    assert full["rare_families"].get("I2FP", 0) > 0


def test_int8_v_arrives_asynchronously_not_transposed_byte_by_byte(codegen):
    """V laid out sequence-major (``quantize.sequence_major``) is what Hopper's INT8 wgmma reads: no STS.U8."""
    loop = codegen["90-full"]["loop"]
    assert not any(op.startswith("STS.U8") for op in loop)
    assert any(op.startswith("LDGSTS") for op in loop)


def test_fp8_pv_uses_int8_wgmma_for_qk_and_fp8_wgmma_for_pv(codegen):
    """pv_format="fp8": Q·Kᵀ on IGMMA, P·V on QGMMA (e4m3), P packed to e4m3 two at a time (F2FP), and the P·V result
    needs no conversion in the steady state (accumulated in fp32 by the tensor cores)."""
    fp8 = codegen["90-fp8pv"]
    assert any(".s32.s8.s8" in instr for instr in fp8["ptx"]) and any(".e4m3.e4m3" in instr for instr in fp8["ptx"])
    loop = fp8["loop_families"]
    assert loop.get("IGMMA", 0) > 0 and loop.get("QGMMA", 0) > 0 and loop.get("F2FP", 0) > 0
    assert fp8["slow_per_score"] <= 1.15
    # One I2FP per score (the Q·Kᵀ tile), none for P·V.
    assert loop.get("I2FP", 0) <= 128 * 64 / 256


def test_no_spills_at_head_dim_128(codegen):
    for name in ("90-full", "90-half", "80-full", "80-half", "90-fp8pv"):
        assert codegen[name]["spills"] == 0 and codegen[name]["local"] == 0, name


KNOWN_SPILLS: dict[str, set[str]] = {}
"""Launch kinds whose tiles still spill, by Triton release (none today). Triton 3.9 spilled 5 registers in full INT8
at d = 128 with an additive mask until the kernel stopped clamping fp16 entries (which cannot overflow) and
floored bfloat16 ones on their bits. Kept so a release that
spills somewhere can be listed while it is fixed, strictly: a listed kind that stops spilling fails too."""


def test_no_tile_a_launch_can_pick_spills(codegen):
    """Every tile the autotuner may pick (after pruning), in every kind of launch (``inspect_sass.launch_space``:
    sm_80/sm_90, each P·V format, head dims 64–256, each key block the guards allow, causal, decode, TMA, masks,
    sliding windows, row-block P), compiles without spills with the installed Triton's ptxas, but for the kinds
    ``KNOWN_SPILLS`` lists: the tile rule holds on this release."""
    sweep = codegen["sweep"]
    assert {row["case"] for row in sweep} == set(codegen["cases"])
    assert not [row for row in sweep if "error" in row], sweep
    spilled = {row["case"] for row in sweep if row["spills"] or row["local_bytes"]}
    assert spilled == KNOWN_SPILLS.get(codegen["triton"], set()), [
        row for row in sweep if row["case"] in spilled ^ KNOWN_SPILLS.get(codegen["triton"], set())]


def test_hopper_half_int8_uses_int8_wgmma_for_qk_and_fp16_for_pv(codegen):
    half = codegen["90-half"]
    assert any(".s32.s8.s8" in instr for instr in half["ptx"]) and any(".f16.f16" in instr for instr in half["ptx"])
    assert half["sass"].get("IGMMA", 0) > 0 and half["sass"].get("HGMMA", 0) > 0


def test_ampere_uses_imma(codegen):
    full = codegen["80-full"]
    assert full["ptx"] and all("mma.sync" in instr and "s8.s8" in instr for instr in full["ptx"])
    assert full["sass"].get("IMMA", 0) > 0
    # Ampere converts INT32 → fp32 on the 16/clock unit (I2F): the Q·Kᵀ tile uses the magic-number form instead.
    loop = full["loop_families"]
    assert "F2I" not in loop and "I2F" not in loop and full["slow_per_score"] <= 1.15


def test_baselines_use_fp8_and_fp16_wgmma_on_hopper(codegen):
    """The speed table's yardsticks run on Hopper's FP8 (QGMMA) and 16-bit (HGMMA) tensor cores."""
    fp8 = codegen["90-fp8"]
    assert len(fp8["ptx"]) == 2 and all(instr.startswith("wgmma") and ".e4m3.e4m3" in instr for instr in fp8["ptx"])
    assert fp8["sass"].get("QGMMA", 0) > 0 and "HGMMA" not in fp8["sass"]
    fp16 = codegen["90-fp16"]
    assert fp16["sass"].get("HGMMA", 0) > 0 and "IGMMA" not in fp16["sass"]


def test_pipe_model_counts_the_tiles_macs_and_one_exp_per_score(codegen):
    """The model found the real loop: its matrix instructions do the tile's MACs (pipe_model.model raises
    otherwise), and the 16/clock unit's cycles equal one exp2 per score at 16 per clock (128 keys: the default key
    block at d = 128, ``numerics.default_kv_block``)."""
    full = codegen["90-full"]
    # 128 rows on the Triton the tile rule was tuned on; 64 (on 8 warps) where 128 rows spill (prune_configs). There
    # both warpgroups compute the tile's 64×128 scores: Q·Kᵀ and its exps twice, P·V once (split over the head dim).
    tuned = codegen["tuned"]
    rows = 128 if tuned else 64
    assert (full["block_m"], full["block_n"]) == (rows, 128)
    gemm = rows * 128 * 128 / 4096
    assert full["tensor"] == gemm * (2 if tuned else 3)
    assert full["pipes"]["xu"] == rows * 128 / 16 * REDUNDANT_EXPS[tuned]
    # At d = 64 the GEMMs halve but the exps do not: the slow unit is twice the tensor time (NOTES.md).
    assert codegen["90-full-64"]["pipes"]["xu"] == 2 * codegen["90-full-64"]["tensor"]


def test_causal_sliding_window_variant_compiles_to_int8_wgmma_on_hopper(codegen):
    """The causal loops with a sliding window (only exercised by the interpreter on CPU) compile for sm_90 with
    both GEMMs on IGMMA."""
    causal = codegen["90-causal"]
    assert causal["ptx"] and all(".s32.s8.s8" in instr for instr in causal["ptx"])
    assert causal["sass"].get("IGMMA", 0) > 0 and "HMMA" not in causal["sass"]


def test_decode_tile_splits_keys_on_sixteen_rows_without_spills(codegen):
    """One query per head: the 16-row decode tile (INT8 mma.sync, as wgmma needs 64 rows) with the split-K
    epilogue compiles for sm_90 without spills; and 128-key tiles survive the pruning at d = 128 (spill-free)."""
    decode = codegen["90-decode"]
    assert decode["block_m"] == 16 and decode["spills"] == 0
    assert decode["ptx"] and all(instr.startswith("mma.sync") and ".s32.s8.s8" in instr for instr in decode["ptx"])
    assert any(row["case"] == "sm_90 full-int8 d128 n128" for row in codegen["sweep"])


def test_inspect_sass_json_contract():
    """``--json`` prints, as its last line, one object with the keys other tools rely on."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.inspect_sass", "--json", "--arch", "90", "--head-dim", "128", "--variant",
         "full-int8"], capture_output=True, text=True, env=_clean_env(), cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("sass_histogram", "loop_histogram", "block_m", "block_n", "num_warps", "num_stages", "registers",
                "spills"):
        assert key in info, key
    assert sum(info["loop_histogram"].values()) < sum(info["sass_histogram"].values())
    assert info["block_n"] == 128 and info["registers"] > 0  # numerics.default_kv_block at d = 128


def test_autotuning_keys_lengths_by_power_of_two_bucket():
    """A new sequence length inside a power-of-two bucket reuses the tuned tile: over lengths 1000–1100 the autotuner
    sees two keys (the 1024 and 2048 buckets), not 101. Read from the autotuner's own key names and the launch
    arguments the wrapper builds."""
    import torch
    from intfa_compile.kernels.int8_flash_attention import int8_attention_fwd, launch_arguments

    from intfa_compile.attention_call import AttentionCall

    assert "N_Q" not in int8_attention_fwd.keys and "N_K" not in int8_attention_fwd.keys
    keys = set()
    for n in range(1000, 1101):
        q = torch.empty(1, 2, n, 64, dtype=torch.int8, device="meta")
        scale = torch.empty(1, 2, n, device="meta")
        out = torch.empty(1, 2, n, 64, dtype=torch.float16, device="meta")
        call = AttentionCall(q, q, q, scale, scale, torch.empty(1, 2, 64, device="meta"), None, True, 0.125)
        args, constexprs = launch_arguments(call, out)
        named = {**dict(zip(int8_attention_fwd.arg_names, args, strict=False)), **constexprs}
        keys.add(tuple(named[name] for name in int8_attention_fwd.keys))
    assert len(keys) == 2


def test_tma_loads_k_and_v_with_tensor_descriptors_on_hopper_only(codegen):
    """``tma_loads``: on sm_90 K and V arrive by ``UTMALDG`` (one thread issues a whole tile; the per-thread async
    copies left are the key scales'), without spills and with fewer issue cycles per key block than the per-thread
    copies (what the per-pipe model keeps it for); before Hopper the same launch keeps pointer loads."""
    tma, plain = codegen["90-full-tma"], codegen["90-full"]
    assert tma["sass"].get("UTMALDG", 0) > 0 and plain["sass"].get("UTMALDG", 0) == 0
    copies = sum(count for op, count in tma["loop"].items() if op.startswith("LDGSTS"))
    plain_copies = sum(count for op, count in plain["loop"].items() if op.startswith("LDGSTS"))
    assert copies < plain_copies
    assert tma["spills"] == 0
    assert tma["pipes"]["issue"] < plain["pipes"]["issue"]
    assert codegen["80-full-tma"]["sass"].get("UTMALDG", 0) == 0


def test_sageattention_compiles_as_its_launcher_launches_it():
    """The peer in the per-pipe model (``benchmarks/peer_kernels.py``): SageAttention 1.0.6's INT8 kernel at d = 128
    with its launcher's 128×64 tile, specialized as a launch is: INT8 wgmma for Q·Kᵀ and fp16 for P·V, one exp2
    and one integer-to-float conversion per pair of scores per thread, no F2I, no spills (compiled without the
    launch's specialization it spills)."""
    if importlib.util.find_spec("sageattention") is None:
        pytest.skip("the optional peer sageattention (dev extra) is not installed")
    result = subprocess.run([sys.executable, "-c", PEER_SCRIPT], capture_output=True, text=True, env=_clean_env(),
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sage = json.loads(result.stdout.strip().splitlines()[-1])
    loop = sage["loop"]
    assert (sage["block_m"], sage["block_n"]) == (128, 64) and sage["spills"] == 0
    assert any(op.startswith("IGMMA") for op in loop) and any(op.startswith("HGMMA") for op in loop)
    assert loop.get("MUFU.EX2") == 34 and loop.get("I2FP.F32.S32") == 32
    assert not any(op.startswith("F2I") for op in loop)
    assert 1.0 <= sage["slow_per_score"] <= 1.1


def test_the_private_launch_path_is_reached_only_on_the_releases_it_was_checked_on():
    """``inspect_sass.compile_like_launch`` uses Triton's private launch path: it covers exactly the Triton range
    pyproject.toml admits, and on a release outside it raises rather than compile what a launch would not."""
    script = textwrap.dedent("""
        import json
        from unittest import mock
        import triton
        from benchmarks import inspect_sass
        from intfa_compile.kernels import int8_flash_attention as kernel
        with mock.patch.object(kernel, "triton_release", return_value=(3, 10)):
            try:
                inspect_sass.compile_like_launch(None, (), {}, triton.Config({}), 90)
                refused = ""
            except RuntimeError as error:
                refused = str(error)
        print(json.dumps({"releases": inspect_sass.LAUNCH_PATH_RELEASES, "refused": refused}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_clean_env(), cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert "private launch path" in out["refused"]
    low, high = re.search(r'"triton>=(\d+\.\d+),<(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text()).groups()
    (first, last) = out["releases"]
    assert ".".join(map(str, first)) == low
    major, minor = map(int, high.split("."))
    assert last == [major, minor - 1]
