"""What ``qk_rotation="hadamard"`` costs beyond the quantization it is fused into, without a GPU.

Three parts, one results file (``benchmarks/results/rotation-cost-<device>-<date>.md``):

1. **Inductor's generated code** (CPU, a real ``torch.compile``) for an attention block whose Q and K are views of
   the projection's output (BERT-like) and one whose Q and K go through rotary embeddings first (LLaMA-like), with
   and without the rotation: the extern calls and the generated kernels, and what each step reads and writes.
2. **The fused kernel compiled for sm_90** exactly as a launch compiles it (``inspect_sass.compile_like_launch``):
   registers, spills, tensor-core and memory instructions.
3. **Traffic and predicted time** for B=4, H=32, d=128 at N = 1k…16k: bytes Q and K move in 16-bit models under
   each path and the time at H200 copy bandwidth (4.3 TB/s measured, ``REFERENCE.md``), beside the attention
   kernel's predicted time (``pipe_model``: half-INT8 at d = 128, 726 TOPS if nothing overlaps).

Static counts and a bandwidth model, not timings: no GPU has run this kernel yet.

    python -m benchmarks.rotation_cost
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":  # the SASS part compiles, which the interpreter cannot
    sys.exit("rotation_cost.py compiles for sm_90: run it without TRITON_INTERPRET=1")

import torch
import torch.nn.functional as F
import triton
from intfa_compile.kernels.hadamard_quantize import (
    TOKENS_PER_TILE,
    hadamard_quantize_kernel,
    launch_constexprs,
)
from torch._inductor.utils import run_and_get_code

import intfa_compile  # noqa: F401  (registers the backend and the operators)
from benchmarks.inspect_sass import compile_like_launch, compiled_histogram, main_loop_range, sass_instructions
from benchmarks.quant_traffic import rotary
from benchmarks.results_file import RunInfo

H200_COPY_BYTES_PER_S = 4.3e12
"""Device-to-device copy bandwidth measured on an H200 (``REFERENCE.md``, "Hardware limits")."""
BYTES_PER_CLOCK_PER_SM = H200_COPY_BYTES_PER_S / (132 * 1.83e9)
"""Copy bandwidth per SM per clock at H200's 132 SMs and the clock ``pipe_model`` uses (1.83 GHz)."""
HALF_INT8_TOPS_D128 = 726e12
"""``pipe_model``'s half-INT8 prediction at d = 128 on H100/H200 clocks when no pipe overlaps (its lower bound)."""


class AttentionBlock(torch.nn.Module):
    """One fused QKV projection and SDPA; ``rotary``: Q and K through rotary embeddings first (LLaMA's order)."""

    def __init__(self, width: int, heads: int, rotary: bool) -> None:
        super().__init__()
        self.heads, self.rotary = heads, rotary
        self.qkv = torch.nn.Linear(width, 3 * width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        if self.rotary:
            q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)


def generated_code_rows() -> list[str]:
    """Markdown rows: per block and rotation, the calls and kernels in Inductor's generated code."""
    rows = []
    tokens, width, heads = 128, 256, 4
    x = torch.randn(2, tokens, width)
    cos, sin = torch.randn(tokens, width // heads), torch.randn(tokens, width // heads)
    for with_rotary in (False, True):
        for rotation in ("none", "hadamard"):
            torch._dynamo.reset()
            torch.manual_seed(0)
            block = AttentionBlock(width, heads, with_rotary)
            compiled = torch.compile(block, backend="intfa", options={"qk_rotation": rotation})
            with torch.no_grad():
                _, code = run_and_get_code(compiled, x, cos, sin)
            source = "\n".join(code)
            calls = collections.Counter(re.findall(r"(extern_kernels\.\w+|torch\.ops\.intfa\.\w+)\.?\w*\(", source))
            kernels = sorted(set(re.findall(r"\b(cpp_fused_\w+)\(", source)))
            quantizing = [name for name in kernels if "round" in name or "hadamard_quantize" in name]
            listed = ", ".join(f"{name.split('.')[-1]} ×{n}" for name, n in sorted(calls.items()))
            block_name = "rotary embeddings, then SDPA" if with_rotary else "Q/K views of the projection, SDPA"
            quantizers = "; ".join(_short(name) for name in quantizing) or "—"
            rows.append(f"| {block_name} | {rotation} | {listed} | {len(kernels)} | {quantizers} |")
    return rows


def _short(kernel: str, limit: int = 70) -> str:
    name = kernel.removeprefix("cpp_fused_")
    return f"`{name[:limit]}…`" if len(name) > limit else f"`{name}`"


@dataclass(frozen=True)
class KernelFacts:
    """The fused kernel compiled for sm_90 as a launch compiles it (fp16, one scale per token), per 64-token tile."""

    head_dim: int
    warps: int
    registers: int
    spill_bytes: int
    wgmma: int
    prmt: int
    loop_instructions: int
    """SASS instructions per thread in the loop over tiles, the branch for infinite entries included."""

    @property
    def issue_clocks(self) -> float:
        """Clocks the tile's instructions take to issue: all warps' instructions over the SM's 4 schedulers."""
        return self.loop_instructions * self.warps / 4

    @property
    def memory_clocks(self) -> float:
        """Clocks the tile's bytes (2 read, 1 written per element; 4 per token's scale) take at copy bandwidth."""
        return (TOKENS_PER_TILE * self.head_dim * 3 + TOKENS_PER_TILE * 4) / BYTES_PER_CLOCK_PER_SM


def compile_kernel(head_dim: int) -> KernelFacts:
    """Compile the fused kernel for sm_90 at ``head_dim`` with a launch's specialization and read its SASS."""
    x = torch.empty(4, 32, 4096, head_dim, dtype=torch.float16, device="meta")
    out = torch.empty(x.shape, dtype=torch.int8, device="meta")
    scale = torch.empty(x.shape[:-1], dtype=torch.float32, device="meta")
    constexprs = launch_constexprs(x, 1, 127)
    warps = constexprs.pop("num_warps")
    config = triton.Config({}, num_warps=warps, num_stages=1)
    _, sass, registers, local_bytes = compile_like_launch(
        hadamard_quantize_kernel, (x, out, scale, 32, 4096, *x.stride()), constexprs, config, 90)
    loop = collections.Counter(compiled_histogram(sass_instructions(sass), main_loop_range(sass)))
    return KernelFacts(head_dim, warps, registers, local_bytes, sum(n for name, n in loop.items() if "GMMA" in name),
                       loop["PRMT"], sum(loop.values()))


def sass_rows() -> list[str]:
    """Markdown rows: ``compile_kernel`` at d = 64, 128, 256."""
    rows = []
    for head_dim in (64, 128, 256):
        facts = compile_kernel(head_dim)
        bound = "issue" if facts.issue_clocks > facts.memory_clocks else "memory"
        rows.append(f"| {head_dim} | {facts.warps} | {facts.registers} | {facts.spill_bytes} | {facts.wgmma} | "
                    f"{facts.prmt} | {facts.loop_instructions} | {facts.issue_clocks:.0f} | "
                    f"{facts.memory_clocks:.0f} | {bound} |")
    return rows


def traffic_rows(head_dim: int = 128, batch: int = 4, heads: int = 32) -> list[str]:
    """Markdown rows: Q and K bytes and predicted time per path, fp16 model, B=4, H=32, d=128."""
    per_token_scale = 4 / head_dim
    paths = {
        # read 16-bit, write INT8 and a per-token fp32 scale
        "quantization alone (Inductor's fused kernel)": 2 + 1 + per_token_scale,
        # the GEMM reads and writes 16-bit, then the quantization as above
        "rotation as a GEMM, then quantization (before)": 2 + 2 + 2 + 1 + per_token_scale,
        "fused rotate-and-quantize (Q/K are views)": 2 + 1 + per_token_scale,
        # the rotary kernel writes 16-bit Q and K, which the fused operator reads (Inductor cannot feed a custom op)
        "fused, after rotary embeddings": 2 + 2 + 2 + 1 + per_token_scale,
        "no rotation, after rotary embeddings (rotary fused into quantization)": 2 + 1 + per_token_scale,
    }
    rows = []
    for tokens in (1024, 4096, 16384):
        elements = 2 * batch * heads * tokens * head_dim  # Q and K
        attention_s = 4 * batch * heads * tokens * tokens * head_dim / HALF_INT8_TOPS_D128
        for path, per_element in paths.items():
            seconds = elements * per_element / H200_COPY_BYTES_PER_S
            rows.append(f"| {tokens} | {path} | {per_element:.2f} | {elements * per_element / 1e6:.0f} | "
                        f"{seconds * 1e6:.0f} | {attention_s * 1e6:.0f} | {100 * seconds / attention_s:.1f}% |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    info = RunInfo("cpu")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    lines = info.header("Rotation cost (qk_rotation='hadamard'), offline", "fp32 model (code), fp16 (kernel)",
                        f"commit {commit}; static counts and a bandwidth model, no timing (no GPU lent)")
    lines += ["", "## Inductor's generated code (CPU, torch.compile, B=2, N=128, 4 heads of 64)", "",
              "| block | qk_rotation | extern calls | generated kernels | "
              "kernels that quantize Q/K or feed the operator |",
              "|---|---|---|---|---|", *generated_code_rows(),
              "", "## The fused kernel for sm_90 (fp16, per token, tiles of 64 tokens, as launched)", "",
              "Per tile: SASS instructions per thread in the loop over tiles (including the branch for tokens with an "
              "infinite entry, which a finite input never takes), issue clocks (× warps / 4 schedulers) and the "
              "clocks the tile's 3 bytes per element take at the H200's copy bandwidth.", "",
              "| d | warps | registers | spill bytes | wgmma | PRMT | loop instructions | issue clocks | "
              "memory clocks | bound |",
              "|---|---|---|---|---|---|---|---|---|---|", *sass_rows(),
              "", "## Q and K traffic, fp16 model, B=4, H=32, d=128 (H200: 4.3 TB/s copy; attention at 726 TOPS)", "",
              "| N | path | bytes per element | MB | predicted µs | attention µs | share of attention |",
              "|---|---|---|---|---|---|---|", *traffic_rows()]
    text = "\n".join(lines) + "\n"
    print(text)
    path = info.write(args.out, "rotation-cost-", text, smoke=False)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
