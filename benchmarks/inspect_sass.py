"""Which matrix instructions the INT8 attention kernel compiles to, per GPU architecture, without a GPU.

Triton compiles the kernel ahead of time for a named target (sm_80 Ampere, sm_90 Hopper) with the
ptxas it ships, and ``cuobjdump`` (also shipped) disassembles the cubin. On Hopper the INT8 GEMMs
should be ``wgmma ... s32.s8.s8`` (SASS ``IGMMA``), on Ampere ``mma.sync ... s8`` (SASS ``IMMA``);
anything else is a slower path. Also counts the exp2 (``MUFU.EX2``) and conversion instructions
that the softmax and the P quantization cost.

    python benchmarks/inspect_sass.py            # table for sm_80 and sm_90, full and half INT8
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("run without TRITON_INTERPRET: this compiles the real kernel for a GPU target")

import triton  # noqa: E402
from intfa_compile.kernels import int8_flash_attention as kernel_module  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

_SASS_OPS = r"\b(IGMMA|HGMMA|QGMMA|IMMA|HMMA|MUFU\.EX2|I2FP?\.F32\.S32|I2F|F2I\.S16\.TRUNC\.NTZ|F2FP\S*|FFMA)\b"


@dataclass
class Codegen:
    """What one compiled variant holds."""

    arch: int
    variant: str
    ptx_matrix: list[str]
    sass_counts: dict[str, int]
    shared_bytes: int


def _compile(jit_fn, pointer_types: dict[str, str], constants: dict, arch: int, variant: str, num_warps: int,
             num_stages: int) -> Codegen:
    """Compile one specialization of ``jit_fn`` for sm_<arch> and read its PTX and SASS."""
    params = list(inspect.signature(jit_fn.fn).parameters)
    signature, constexprs = {}, {}
    for index, name in enumerate(params):
        if name in constants:
            signature[name] = "constexpr"
            constexprs[(index,)] = constants[name]
        else:
            signature[name] = pointer_types.get(name, "i32")
    compiled = triton.compile(ASTSource(jit_fn, signature, constexprs=constexprs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    ptx = compiled.asm["ptx"]
    matrix = sorted(set(re.findall(r"((?:wgmma\.mma_async|mma\.sync)\.\S+)", ptx)))
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as cubin:
        cubin.write(compiled.asm["cubin"])
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    sass = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", cubin.name], capture_output=True, text=True,
                          check=True).stdout
    os.unlink(cubin.name)
    counts: dict[str, int] = {}
    for op in re.findall(_SASS_OPS, sass):
        counts[op] = counts.get(op, 0) + 1
    return Codegen(arch, variant, matrix, dict(sorted(counts.items())), compiled.metadata.shared)


def compile_variant(arch: int, quantize_pv: bool, head_dim: int = 128, block_m: int = 128, num_warps: int = 8,
                    num_stages: int = 3, causal: bool = False, window: bool = False) -> Codegen:
    """The INT8 forward kernel for sm_<arch> (no mask; non-causal unless asked), full or half INT8."""
    pointer_types = {"Q": "*i8", "K": "*i8", "V": "*i8" if quantize_pv else "*fp16", "QS": "*fp32", "KS": "*fp32",
                     "VS": "*fp32", "MASK": "*fp32", "OUT": "*fp16", "qk_scale": "fp32"}
    constants = {"IS_CAUSAL": causal, "WINDOW": window, "MASK_KIND": 0, "QUANT_PV": quantize_pv, "P_ROW_BLOCK": False,
                 "UPCAST_16BIT_DOT": False, "BLOCK_M": block_m, "BLOCK_N": kernel_module.KV_BLOCK_SIZE,
                 "BLOCK_D": kernel_module._block_d(head_dim)}
    return _compile(kernel_module._int8_attention_fwd.fn, pointer_types, constants, arch,
                    "full INT8" if quantize_pv else "half-INT8", num_warps, num_stages)


def compile_fp8_baseline(arch: int = 90, head_dim: int = 128, block_m: int = 128, num_warps: int = 8,
                         num_stages: int = 3) -> Codegen:
    """The FP8 baseline kernel (``fp8_attention.py``) for sm_<arch> ≥ 89, non-causal."""
    import fp8_attention

    pointer_types = {"Q": "*fp8e4nv", "K": "*fp8e4nv", "V": "*fp8e4nv", "DESCALE_Q": "*fp32", "DESCALE_K": "*fp32",
                     "DESCALE_V": "*fp32", "OUT": "*fp16", "sm_scale_log2": "fp32"}
    constants = {"IS_CAUSAL": False, "EMULATE_CAST": False, "BLOCK_M": block_m, "BLOCK_N": fp8_attention.BLOCK_N,
                 "BLOCK_D": max(32, triton.next_power_of_2(head_dim))}
    return _compile(fp8_attention._fp8_attention_fwd.fn, pointer_types, constants, arch, "FP8 baseline", num_warps,
                    num_stages)


def _print_row(info: Codegen) -> None:
    print(f"| sm_{info.arch} | {info.variant} | {', '.join(info.ptx_matrix)} | "
          f"{', '.join(f'{k} {v}' for k, v in info.sass_counts.items())} | {info.shared_bytes} B |")


def main() -> None:
    print("| arch | variant | PTX matrix instructions | SASS instruction counts (static) | shared memory |")
    print("|---|---|---|---|---|")
    for arch in (80, 90):
        for quantize_pv in (True, False):
            info = compile_variant(arch, quantize_pv)
            _print_row(info)
    _print_row(compile_fp8_baseline(90))
    print(f"\ntriton {triton.__version__}, python {sys.version.split()[0]}; head_dim 128, BLOCK_M 128, "
          f"BLOCK_N {kernel_module.KV_BLOCK_SIZE}, 8 warps, 3 stages")


if __name__ == "__main__":
    main()
