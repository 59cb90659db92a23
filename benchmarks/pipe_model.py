"""Per-pipe cycle model of the attention kernels' main loop, from their SASS, without a GPU.

For each kernel (``inspect_sass.py`` compiles it as a launch would), the steady-state body of the main KV
loop is split by the SM pipe each instruction issues to; each pipe's count, times the threads (or warps)
of a block, divided by the pipe's per-SM throughput, gives the cycles that pipe needs per KV block. The
tensor pipe's cycles come from the matrix instructions' shapes (MACs per instruction) and the tensor
cores' MACs per clock. The largest is the bound: the block cannot run faster than its busiest pipe.

What the model assumes (``benchmarks/NOTES.md`` cites every rate and says where sources disagree):
- perfect overlap between pipes (a throughput bound, optimistic: latencies, dependencies and the
  synchronization between the softmax and the asynchronous GEMMs are not modelled); "serial" adds the
  tensor cycles to the busiest other pipe, the pessimistic end where nothing overlaps the GEMMs;
- one resident block per SM or several, the ratios are the same (cycles are per block of work);
- the rare path of the loop (rescaling when a row maximum grows) is left out of the steady state and
  reported apart (its cycles if it ran every block);
- static counts: every instruction of the steady-state body runs once per KV block.

    python -m benchmarks.pipe_model                  # sm_90, d 64/128/256, causal and not: table + results
    python -m benchmarks.pipe_model --smoke          # one kernel (CI)
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import triton

from benchmarks import inspect_sass, peer_kernels
from intfa_compile.numerics import default_kv_block, padded_head_dim
from intfa_compile.pv_formats import INT8

BASELINE_REVISION = "4b29d76"
"""The INT8 kernel before issue 11's rework (F2I rounding of P, per-block P·V conversion, D-major V)."""

TENSOR_MACS_PER_CLOCK = {
    # (arch, operand kind) → dense multiply-accumulates per clock per SM (NOTES.md: whitepapers' peaks
    # divided by SMs × tensor clock).
    (90, "int8"): 4096, (90, "fp8"): 4096, (90, "fp16"): 2048,
    (80, "int8"): 2048, (80, "fp16"): 1024,
}

LANES_PER_CLOCK = {
    # pipe → thread-instructions per clock per SM, (sm_80, sm_90). NOTES.md gives the source of each.
    "issue": (128, 128),   # one warp-instruction per clock per scheduler, 4 schedulers
    "fma": (64, 128),      # FFMA/FADD/FMUL (sm_90: FMA heavy + lite)
    "fma_heavy": (64, 64),  # IMAD/IMUL: heavy half of the FMA pipe only
    "alu": (64, 64),       # integer, logic, compare/select, FMNMX, PRMT, I2FP, F2FP
    "xu": (16, 16),        # MUFU, F2I, I2F, F2F, POPC, FLO, BREV: the 16/clock unit
}

_XU = ("MUFU", "F2I", "I2F", "F2F", "POPC", "FLO", "BREV", "FRND")
_FMA = ("FFMA", "FADD", "FMUL", "FFMA2", "FADD2", "FMUL2", "HFMA2", "HADD2", "HMUL2")
_FMA_HEAVY = ("IMAD", "IMUL", "IDP4A")
_ALU = ("IADD3", "IADD", "LOP3", "LOP", "SHF", "PRMT", "SEL", "ISETP", "IMNMX", "VIMNMX", "VIADD", "LEA", "FMNMX",
        "FSEL", "FSETP", "FSET", "PLOP3", "I2FP", "F2FP", "I2IP", "MOV", "SGXT", "IABS", "BMSK", "CS2R", "P2R", "R2P")
_SHARED = {"LDS": 4, "STS": 4, "LDSM": 16, "SHFL": 4, "LDGSTS": 4, "ATOMS": 4}
"""Memory instructions that use shared-memory wavefronts: default bytes per thread (refined by a .64/.128
or .U8 modifier); a warp moves 128 bytes per clock per SM."""


def opcode_pipe(opcode: str) -> str | None:
    """The SM pipe one SASS opcode issues to (besides taking an issue slot); None for issue-only instructions
    (uniform datapath, branches, barriers, global memory, tensor instructions, which are counted apart)."""
    family = opcode.split(".")[0]
    if family in _XU:
        return "xu"
    if family in _FMA:
        return "fma"
    if family in _FMA_HEAVY:
        return "fma_heavy"
    if family in _ALU:
        return "alu"
    if family in _SHARED:
        return "shared"
    return None


def tensor_macs(opcode: str) -> tuple[int, str] | None:
    """(MACs one instruction performs, operand kind) for a matrix instruction; None otherwise.

    ``IGMMA.64x128x32.S8.S8`` is a warpgroup instruction (64·128·32 MACs); ``IMMA.16832.S8.S8`` and
    ``HMMA.16816.F32`` are per warp (m16 n8 k32 / k16).
    """
    family = opcode.split(".")[0]
    if family in ("IGMMA", "HGMMA", "QGMMA"):
        m, n, k = map(int, re.search(r"\.(\d+)x(\d+)x(\d+)", opcode).groups())
        return m * n * k, {"IGMMA": "int8", "QGMMA": "fp8", "HGMMA": "fp16"}[family]
    if family in ("IMMA", "HMMA"):
        digits = opcode.split(".")[1]
        m, n, k = int(digits[:2]), int(digits[2]), int(digits[3:])
        return m * n * k, "int8" if family == "IMMA" else "fp16"
    return None


def _shared_wavefronts(opcode: str) -> int:
    """128-byte shared-memory wavefronts one warp-instruction needs (at least one)."""
    family = opcode.split(".")[0]
    width = _SHARED[family]
    for part in opcode.split(".")[1:]:
        if part in ("64", "128"):
            width = int(part) // 8
        elif part in ("U8", "S8", "U16", "S16"):
            width = 1
    if family == "LDSM":
        copies = next((int(p[1:]) for p in opcode.split(".") if re.fullmatch(r"x\d", p, re.I)), 4)
        return copies
    return max(1, width * 32 // 128)


@dataclass
class PipeCycles:
    """Cycles per KV block per SM of one kernel's steady-state loop."""

    variant: str
    arch: int
    head_dim: int
    causal: bool
    block_m: int
    block_n: int
    num_warps: int
    registers: int
    spills: int
    scores: int
    tensor: float
    useful_tensor: float
    pipes: dict[str, float]
    rare: dict[str, float]
    slow_unit_per_score: float
    instructions_per_score: float

    @property
    def bound(self) -> str:
        return max({"tensor": self.tensor, **self.pipes}.items(), key=lambda item: item[1])[0]

    @property
    def bound_cycles(self) -> float:
        return max(self.tensor, *self.pipes.values())

    @property
    def serial_cycles(self) -> float:
        return self.tensor + max(self.pipes.values())

    def fraction_of_peak(self, serial: bool = False) -> float:
        """The tile's own tensor cycles over the block's cycles: the fraction of the tensor peak the loop turns
        into attention (a GEMM that warpgroups repeat counts once)."""
        return self.useful_tensor / (self.serial_cycles if serial else self.bound_cycles)


def model(info: inspect_sass.Codegen) -> PipeCycles:
    """Cycles per KV block per SM for each pipe of ``info``'s steady-state loop."""
    arch_index = 0 if info.arch < 90 else 1
    threads, warps = info.num_warps * 32, info.num_warps

    def cycles(histogram: dict[str, int]) -> tuple[float, dict[str, float]]:
        lanes = {pipe: 0.0 for pipe in ("issue", "fma", "alu", "xu", "shared")}
        fma_heavy = 0.0
        tensor = 0.0
        for opcode, count in histogram.items():
            lanes["issue"] += count * threads / LANES_PER_CLOCK["issue"][arch_index]
            macs = tensor_macs(opcode)
            if macs is not None:
                per_instruction, kind = macs
                issuers = warps // 4 if opcode.split(".")[0].endswith("GMMA") else warps
                tensor += count * issuers * per_instruction / TENSOR_MACS_PER_CLOCK[(info.arch, kind)]
                continue
            pipe = opcode_pipe(opcode)
            if pipe == "shared":
                lanes["shared"] += count * warps * _shared_wavefronts(opcode)
            elif pipe == "fma_heavy":
                fma_heavy += count * threads
            elif pipe is not None:
                lanes[pipe] += count * threads / LANES_PER_CLOCK[pipe][arch_index]
        # IMAD runs on the heavy half only; FP32 uses both halves (sm_90) — whichever bound is larger.
        fp32_lanes = lanes["fma"] * LANES_PER_CLOCK["fma"][arch_index]
        lanes["fma"] = max((fp32_lanes + fma_heavy) / LANES_PER_CLOCK["fma"][arch_index],
                           fma_heavy / LANES_PER_CLOCK["fma_heavy"][arch_index])
        return tensor, lanes

    tensor, pipes = cycles(info.loop_histogram)
    _, rare = cycles(info.loop_rare_histogram)
    scores = info.block_m * info.block_n
    useful = _useful_tensor_cycles(info, scores)
    per_thread_scores = scores / threads
    slow = sum(count for op, count in info.loop_histogram.items() if opcode_pipe(op) == "xu")
    return PipeCycles(
        variant=info.variant, arch=info.arch, head_dim=info.head_dim, causal=info.causal, block_m=info.block_m,
        block_n=info.block_n, num_warps=info.num_warps, registers=info.registers, spills=info.spills,
        scores=scores, tensor=tensor, useful_tensor=useful, pipes=pipes, rare=rare,
        slow_unit_per_score=slow / per_thread_scores,
        instructions_per_score=sum(info.loop_histogram.values()) / per_thread_scores,
    )


def _useful_tensor_cycles(info: inspect_sass.Codegen, scores: int) -> float:
    """Tensor cycles of the tile's own two GEMMs (scores × padded head dim MACs each), by operand kind.

    Checks the loop against them: fewer MACs of a kind than its GEMM needs means the loop found is not the main
    loop (an error); more means warpgroups that split a tile along N repeat a GEMM (Triton does so for Q·Kᵀ
    when two warpgroups share 64 rows) — real tensor work, counted in ``tensor`` but not in the useful part.
    With two kinds (half-INT8, fp8-pv) Q·Kᵀ is the INT8 one.
    """
    by_kind: dict[str, float] = {}
    for opcode, count in info.loop_histogram.items():
        macs = tensor_macs(opcode)
        if macs is not None:
            issuers = info.num_warps // 4 if opcode.split(".")[0].endswith("GMMA") else info.num_warps
            by_kind[macs[1]] = by_kind.get(macs[1], 0.0) + count * issuers * macs[0]
    gemm = scores * padded_head_dim(info.head_dim)
    needed = {kind: 2 * gemm for kind in by_kind} if len(by_kind) == 1 else {kind: gemm for kind in by_kind}
    if len(by_kind) > 2:
        raise RuntimeError(f"{info.variant}: matrix instructions of {len(by_kind)} kinds in one loop")
    for kind, macs in by_kind.items():
        if macs < needed[kind] * (1 - 1e-6):
            raise RuntimeError(f"{info.variant}: the loop's {kind} matrix instructions do {macs:.0f} MACs per block, "
                               f"the tile needs {needed[kind]}: the loop was not found right")
    return sum(needed[kind] / TENSOR_MACS_PER_CLOCK[(info.arch, kind)] for kind in by_kind)


PEAK_CLOCK_GHZ = {"H100/H200 SXM": (132, 1.83), "A100 SXM": (108, 1.41)}
"""SMs and tensor clock (GHz) of the boards the TOPS column is for (NOTES.md)."""


def predicted_tops(row: PipeCycles, serial: bool = False) -> float:
    """Attention TOPS (2 ops per MAC, both GEMMs) the loop reaches at the board's SMs and tensor clock."""
    sms, ghz = PEAK_CLOCK_GHZ["H100/H200 SXM" if row.arch >= 90 else "A100 SXM"]
    cycles = row.serial_cycles if serial else row.bound_cycles
    macs = 2 * row.scores * padded_head_dim(row.head_dim)
    return 2 * macs / cycles * sms * ghz * 1e9 / 1e12


_LABELS = {"full-int8@before": "full INT8 (before, 4b29d76)", "full-int8": "full INT8",
           "full-int8@64": "full INT8, 64-key blocks", "half-int8@64": "half-INT8, 64-key blocks",
           "half-int8": "half-INT8",
           "fp8-baseline": "FP8 baseline (e4m3)", "fp16-baseline": "16-bit Triton FA (fp16)",
           "fp8-pv": "INT8 Q·Kᵀ + FP8 P·V (fp8-pv)", "full-int8+tma": "full INT8, K/V by TMA",
           "half-int8+tma": "half-INT8, K/V by TMA", "fp8-pv+tma": "fp8-pv, K/V by TMA",
           "sage-1.0.6": "SageAttention 1.0.6 (INT8 Q·Kᵀ per block, fp16 P·V, fp16 sums)"}


def run(arch: int, head_dims: list[int], causal_cases: list[bool], variants: list[str]) -> list[PipeCycles]:
    rows = []
    before = None
    for variant in variants:
        for head_dim in head_dims:
            for causal in causal_cases:
                if variant == "full-int8@before":
                    before = before or inspect_sass.load_kernel_module(BASELINE_REVISION)
                    info = inspect_sass.inspect_variant(arch, "full-int8", head_dim, causal, kernel_module=before)
                elif variant.endswith("+tma"):  # K and V through tensor descriptors (config.tma_loads)
                    if arch < 90:
                        continue
                    info = inspect_sass.inspect_variant(arch, variant[:-4], head_dim, causal, tma=True)
                elif variant == peer_kernels.SAGE_VARIANT:  # a peer's kernel, as its own launcher launches it
                    if head_dim not in (64, 128):  # its kernels for these files (d = 96 has files of its own)
                        continue
                    info = inspect_sass.inspect_peer(arch, variant, head_dim, causal)
                elif variant.endswith("@64"):  # the 64-key tile the default rule replaced where 128 fits
                    if default_kv_block(padded_head_dim(head_dim), INT8) == 64:
                        continue
                    info = inspect_sass.inspect_variant(arch, variant[:-3], head_dim, causal, block_n=64)
                else:
                    info = inspect_sass.inspect_variant(arch, variant, head_dim, causal)
                row = model(info)
                row.variant = variant
                rows.append(row)
    return rows


def table(rows: list[PipeCycles]) -> list[str]:
    lines = [
        "| kernel | d | causal | tile (M×N, warps) | regs | spills | tensor | issue | fma | alu | xu (16/clk) | shared "
        "| bound | xu instr/score | instr/score | % of peak (overlap / serial) | TOPS (overlap / serial) "
        "| rescale path (cycles if every block) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p = row.pipes
        rare = max(row.rare.values()) if row.rare else 0.0
        lines.append(
            f"| {_LABELS.get(row.variant, row.variant)} | {row.head_dim} | {row.causal} | "
            f"{row.block_m}×{row.block_n}, {row.num_warps} | {row.registers} | {row.spills} | {row.tensor:.0f}"
            f"{f' ({row.useful_tensor:.0f} of the tile)' if row.tensor > row.useful_tensor * 1.001 else ''} | "
            f"{p['issue']:.0f} | {p['fma']:.0f} | {p['alu']:.0f} | {p['xu']:.0f} | {p['shared']:.0f} | "
            f"**{row.bound}** ({row.bound_cycles / row.useful_tensor:.2f}×) | {row.slow_unit_per_score:.2f} | "
            f"{row.instructions_per_score:.1f} | {100 * row.fraction_of_peak():.0f} / "
            f"{100 * row.fraction_of_peak(serial=True):.0f} | {predicted_tops(row):.0f} / "
            f"{predicted_tops(row, serial=True):.0f} | {rare:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, choices=(80, 90), default=90)
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--smoke", action="store_true", help="full INT8, d 64, non-causal only; no results file")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.smoke:
        rows = run(args.arch, [64], [False], ["full-int8"])
    else:
        variants = ["fp16-baseline", "fp8-baseline", "full-int8@before", "full-int8@64", "full-int8", "full-int8+tma",
                    "half-int8@64", "half-int8", "half-int8+tma", "fp8-pv", "fp8-pv+tma"]
        if args.arch < 90:
            variants.remove("fp8-baseline")
            variants.remove("fp8-pv")
        if peer_kernels.sage_available():
            variants.append(peer_kernels.SAGE_VARIANT)
        else:
            print(f"SageAttention {peer_kernels.SAGE_VERSION} is not installed: its rows are left out "
                  f"(pip install --no-deps sageattention=={peer_kernels.SAGE_VERSION})", file=sys.stderr)
        rows = run(args.arch, args.head_dims, [False, True], variants)
    date = datetime.date.today().isoformat()
    lines = [
        f"# Per-pipe cycle model, sm_{args.arch}, {date}",
        "",
        f"- triton {triton.__version__}; kernels compiled offline as a launch specializes them "
        f"(B {inspect_sass.TYPICAL_SHAPE['batch']}, H {inspect_sass.TYPICAL_SHAPE['heads']}, "
        f"N {inspect_sass.TYPICAL_SHAPE['seq']}), default tile; no GPU: nothing here was timed",
        f"- command: `python {' '.join(sys.argv)}`",
        "- cycles per KV block per SM for each pipe of the steady-state loop; rates and sources in "
        "benchmarks/NOTES.md; 'overlap' assumes pipes overlap perfectly, 'serial' adds the tensor cycles to the "
        "busiest other pipe",
        "",
        *table(rows),
    ]
    print("\n".join(lines))
    if args.smoke:
        print(json.dumps({"bound": rows[0].bound, "tensor": rows[0].tensor, "pipes": rows[0].pipes}))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"pipe-model-sm{args.arch}-triton{triton.__version__}-{date}"
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps([row.__dict__ for row in rows], indent=1) + "\n")
    print(f"\nresults: {args.out / stem}.md\n{plot(rows, args.out / f'{stem}.png')}")


def plot(rows: list[PipeCycles], path: Path) -> str:
    """Bars: each pipe's cycles per KV block relative to the tensor cycles, per kernel, d = 128 non-causal."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed"
    chosen = [row for row in rows if not row.causal]
    head_dims = sorted({row.head_dim for row in chosen})
    fig, axes = plt.subplots(1, len(head_dims), figsize=(5 * len(head_dims), 4), squeeze=False)
    pipes = ("issue", "fma", "alu", "xu", "shared")
    for ax, head_dim in zip(axes[0], head_dims, strict=True):
        kernels = [row for row in chosen if row.head_dim == head_dim]
        width = 0.8 / len(pipes)
        for index, pipe in enumerate(pipes):
            ratios = [row.pipes[pipe] / row.useful_tensor for row in kernels]
            ax.bar([k + index * width for k in range(len(kernels))], ratios, width, label=pipe)
        ax.axhline(1.0, color="black", linewidth=1, label="tensor")
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(kernels))])
        ax.set_xticklabels([_LABELS.get(row.variant, row.variant) for row in kernels], rotation=30, ha="right",
                           fontsize=7)
        ax.set_title(f"sm_{kernels[0].arch}, d = {head_dim}, non-causal")
        ax.set_ylabel("pipe cycles / tensor cycles per KV block")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"


if __name__ == "__main__":
    main()
