"""What the attention kernels compile to on sm_80 / sm_90, without a GPU, exactly as a launch compiles them.

Triton specializes a kernel at launch from its arguments: pointers and integers divisible by 16 get
``tt.divisibility = 16``, integers equal to 1 (unit strides) become constants. Compiled without that,
the picture lies (byte-by-byte loads, spills that a launch never has), so this script builds the real
launch arguments (the kernels' own ``launch_arguments``, on meta tensors of a typical shape), runs them
through Triton's own launch-time binder for the target's backend, and compiles the result with the
ptxas Triton ships. ``cuobjdump`` (also shipped) gives the SASS and the resource usage.

For each kernel and autotune config it reports: the matrix instructions (PTX), the SASS opcode
histogram of the whole kernel and of the steady-state body of the main KV loop (the first loop, in
address order, that holds the tensor-core instructions: found from the backward branches; code that a
predicated forward branch inside it jumps over, the rare rescale when a row maximum grows, is counted
apart as ``loop_rare_histogram``), registers,
spills (``STL`` instructions and local-memory bytes), shared memory and occupancy.

    python -m benchmarks.inspect_sass                      # table: sm_80/sm_90, every variant, default tile
    python -m benchmarks.inspect_sass --all-configs        # every autotune config that survives pruning
    python -m benchmarks.inspect_sass --json --arch 90 --head-dim 128 --variant full-int8
        # last line: one JSON object with sass_histogram, loop_histogram, block_m, block_n, num_warps,
        # num_stages, registers, spills, ... (the contract ``pipe_model.py`` and the tests rely on)

Written against Triton's private launch path (``create_function_from_signature``, ``JITFunction._pack_args``),
checked on the releases ``LAUNCH_PATH_RELEASES`` names; another Triton raises a clear error here rather than
compiling something a launch would not.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("run without TRITON_INTERPRET: this compiles the real kernel for a GPU target")

import torch
import triton
from intfa_compile.kernels import int8_flash_attention as int8_kernel
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend

from intfa_compile.attention_call import AttentionCall, KernelOptions, LaunchOptions
from intfa_compile.key_splits import key_splits
from intfa_compile.numerics import default_kv_block
from intfa_compile.pv_formats import FP8, FP16, INT8, PVFormat

MASKS = {
    "bool": (torch.bool, True), "additive": (torch.float16, True), "bf16 additive": (torch.bfloat16, True),
    "bool 2-d": (torch.bool, False), "additive 2-d": (torch.float16, False),
    "bf16 additive 2-d": (torch.bfloat16, False),
}
"""Attention masks a launch may carry: name → (dtype, one row for every query). A key-padding mask (B, 1, 1, N), as
BERT's, is one row (stride 0 along the queries); a 2-D one (B, 1, N, N), as Hugging Face's 4-D masks, a row per
query. Each additive dtype has its own base-2 form in the kernel (``_bias_in_base2``)."""

VARIANTS = ("full-int8", "half-int8", "fp8-pv", "fp8-baseline", "fp16-baseline")
"""Kernels this script compiles: ours (full / half INT8, fp8-pv) and the baselines of the speed table."""

TYPICAL_SHAPE = {"batch": 4, "heads": 32, "seq": 4096}
"""The launch the kernels are specialized for: the paper's benchmark shape at 4k (no GQA)."""

_TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_x]+)*)")
_BRANCH = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?BRA(?:\.[A-Z.]+)?\s+0x([0-9a-f]+)")
_TENSOR_OPS = ("IGMMA", "HGMMA", "QGMMA", "IMMA", "HMMA")
_DEFAULT_TILES = ((128, 8, 3), (64, 4, 2), (64, 8, 2))
"""(BLOCK_M, warps, stages) shown by default, in order of preference: the tile FlashAttention kernels use at
d ≤ 128, and the pipelined 64-row tiles a 256-wide head fits in (decode: 16 rows, 4 warps). BLOCK_N is the
launch's (``numerics.default_kv_block``) or ``--block-n``; ``--all-configs`` shows every tile."""

# Per-SM limits for occupancy (CUDA C++ Programming Guide, "Technical Specifications per Compute Capability").
_SM_LIMITS = {
    80: {"registers": 65536, "shared": 164 * 1024, "warps": 64, "blocks": 32},
    90: {"registers": 65536, "shared": 228 * 1024, "warps": 64, "blocks": 32},
}


@dataclass
class Codegen:
    """What one compiled kernel holds."""

    arch: int
    variant: str
    head_dim: int
    causal: bool
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    ptx_matrix: list[str]
    sass_histogram: dict[str, int]
    loop_histogram: dict[str, int]
    loop_rare_histogram: dict[str, int]
    loop_range: tuple[int, int] | None
    registers: int
    spills: int
    local_bytes: int
    shared_bytes: int
    occupancy_blocks: int
    sass: str = field(repr=False, default="")

    @property
    def sass_counts(self) -> dict[str, int]:
        """Whole-kernel counts by opcode family: what the codegen tests assert."""
        return opcode_families(self.sass_histogram)

    def to_json(self) -> dict:
        """The JSON contract (``--json``): everything but the SASS text."""
        out = asdict(self)
        out.pop("sass")
        return out


def sass_instructions(sass: str) -> list[tuple[int, str]]:
    """(address, opcode with modifiers) for every instruction of the first kernel in ``sass``."""
    return [(int(m.group(1), 16), m.group(2)) for m in map(_INSTRUCTION.search, sass.splitlines()) if m]


def _branches(sass: str) -> list[tuple[int, int, bool]]:
    """(address, target, predicated) of every branch with a numeric target."""
    found = []
    for line in sass.splitlines():
        match = _BRANCH.search(line)
        if match and match.group(2):
            found.append((int(match.group(1), 16), int(match.group(2), 16), "@" in line.split("BRA")[0]))
    return found


def main_loop_range(sass: str) -> tuple[int, int] | None:
    """Address range [start, branch] of the steady-state KV loop: the first loop (backward branch), in address
    order, whose body holds tensor-core instructions; loops nested inside it are part of its body."""
    instructions = sass_instructions(sass)
    loops = [(target, at) for at, target, _ in _branches(sass) if target < at]
    candidates = [
        (start, end) for start, end in loops
        if any(start <= address <= end and op.startswith(_TENSOR_OPS) for address, op in instructions)
    ]
    if not candidates:
        return None
    # Outermost loop among those starting first: an inner backward branch would only cover part of the body.
    first_start = min(start for start, _ in candidates)
    return first_start, max(end for start, end in candidates if start == first_start)


def skipped_regions(sass: str, loop: tuple[int, int]) -> list[tuple[int, int]]:
    """Address ranges [from, to) inside ``loop`` that a predicated forward branch jumps over: the kernels' rare
    paths (the accumulator rescale when a row maximum grows, the INT32 fold). Excluded from the steady state."""
    return [(at + 1, target) for at, target, predicated in _branches(sass)
            if predicated and loop[0] <= at < target <= loop[1]]


def compiled_histogram(instructions: list[tuple[int, str]], address_range: tuple[int, int] | None = None,
               exclude: list[tuple[int, int]] = (), only: list[tuple[int, int]] | None = None) -> dict[str, int]:
    def kept(address: int) -> bool:
        if address_range is not None and not address_range[0] <= address <= address_range[1]:
            return False
        if only is not None:
            return any(lo <= address < hi for lo, hi in only)
        return not any(lo <= address < hi for lo, hi in exclude)

    counts = collections.Counter(op for address, op in instructions if kept(address))
    return dict(sorted(counts.items()))


def _resource_usage(cubin_path: str) -> tuple[int, int]:
    """(registers per thread, local-memory bytes per thread) from ``cuobjdump -res-usage``."""
    text = subprocess.run([str(_TOOLS / "cuobjdump"), "-res-usage", cubin_path], capture_output=True, text=True,
                          check=True).stdout
    registers = re.search(r"REG:(\d+)", text)
    local = re.search(r"LOCAL:(\d+)", text)
    return int(registers.group(1)) if registers else 0, int(local.group(1)) if local else 0


def occupancy(arch: int, registers: int, shared_bytes: int, num_warps: int) -> int:
    """Resident blocks per SM, limited by registers (allocated per warp in units of 256), shared memory,
    warps and blocks (the CUDA occupancy calculator's rules)."""
    limits = _SM_LIMITS[arch]
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_registers = limits["registers"] // (per_warp * num_warps)
    by_shared = limits["shared"] // shared_bytes if shared_bytes else limits["blocks"]
    return max(0, min(by_registers, by_shared, limits["warps"] // num_warps, limits["blocks"]))


LAUNCH_PATH_RELEASES = ((3, 6), (3, 9))
"""The Triton releases whose private launch path ``compile_like_launch`` was checked on (the range pyproject.toml
admits): elsewhere it raises rather than compile something a launch would not."""


def compile_like_launch(jit_fn, args: tuple, constexprs: dict, config: triton.Config, arch: int) -> tuple:
    """Compile ``jit_fn`` for sm_<arch> with the specialization Triton's launcher derives from ``args``.

    Returns (compiled kernel, SASS text, registers, local bytes).
    """
    if not LAUNCH_PATH_RELEASES[0] <= int8_kernel.triton_release() <= LAUNCH_PATH_RELEASES[1]:
        first, last = (".".join(map(str, release)) for release in LAUNCH_PATH_RELEASES)
        raise RuntimeError(f"triton {triton.__version__}: this script reaches Triton's private launch path "
                           f"(create_function_from_signature, JITFunction._pack_args), checked on releases {first} "
                           f"to {last} only; check it on this one and widen LAUNCH_PATH_RELEASES")
    from triton.runtime.jit import create_function_from_signature
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(jit_fn.signature, jit_fn.params, backend)
    keywords = {**constexprs, **config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    bound, specialization, options = binder(*args, **keywords)
    options, signature, constants, attrs = jit_fn._pack_args(backend, keywords, bound, specialization, options)
    compiled = triton.compile(ASTSource(jit_fn, signature, constants, attrs), target=target,
                              options=options.__dict__)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as cubin:
        cubin.write(compiled.asm["cubin"])
    try:
        sass = subprocess.run([str(_TOOLS / "cuobjdump"), "-sass", cubin.name], capture_output=True, text=True,
                              check=True).stdout
        registers, local_bytes = _resource_usage(cubin.name)
    finally:
        os.unlink(cubin.name)
    return compiled, sass, registers, local_bytes


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def load_kernel_module(revision: str | None):
    """The INT8 kernel module, as checked out or (``revision``) as it was at a git revision, for before/after."""
    if revision is None:
        return int8_kernel
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{revision}:kernels/int8_flash_attention.py"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="intfa_kernel_"))
    path = folder / f"int8_kernel_{revision.replace('/', '_')}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch_case(variant: str, head_dim: int, causal: bool, kernel_module=None, window_left: int = -1,
                arch: int = 90, decode: bool = False, tma: bool = False, mask: str = "",
                p_scale: str = "fixed") -> tuple:
    """(autotuned kernel, launch args, constexprs) for one variant at ``TYPICAL_SHAPE`` (``window_left``: a
    sliding window behind the causal diagonal; ``decode``: one query per head, split-K; ``tma``: K and V through
    tensor descriptors; ``mask``: a name in ``MASKS``; ``p_scale``:
    "row_block" for P's per-row scale; INT8 kernels only)."""
    batch, heads, seq = TYPICAL_SHAPE["batch"], TYPICAL_SHAPE["heads"], TYPICAL_SHAPE["seq"]
    sm_scale = head_dim**-0.5
    if variant in ("full-int8", "half-int8", "fp8-pv"):
        module = kernel_module or int8_kernel
        q = _meta(batch, heads, 1 if decode else seq, head_dim, dtype=torch.int8)
        k = _meta(batch, heads, seq, head_dim, dtype=torch.int8)
        full = variant != "half-int8"
        v_dtype = {"full-int8": torch.int8, "fp8-pv": torch.float8_e4m3fn}.get(variant, torch.float16)
        # Quantized V sequence-major, as the compiler passes lay it out (``quantize.sequence_major``); an
        # earlier revision of the kernel got it D-major.
        v = (_meta(batch, heads, head_dim, seq, dtype=v_dtype).transpose(-1, -2) if full and module is int8_kernel
             else _meta(batch, heads, seq, head_dim, dtype=v_dtype))
        q_scale, k_scale = _meta(*q.shape[:3], dtype=torch.float32), _meta(batch, heads, seq, dtype=torch.float32)
        v_scale = _meta(batch, heads, head_dim, dtype=torch.float32) if full else None
        out = _meta(*q.shape, dtype=torch.float16)
        parts, split_keys = None, 0
        if decode:  # one query per head: the 16-row tile, keys split as the launcher splits them
            ranges, split_keys = key_splits(1, seq, batch * heads)
            parts = (_meta(ranges, *q.shape, dtype=torch.float32), _meta(ranges, *q.shape[:3], 2, dtype=torch.float32))
        attn_mask = None
        if mask:
            dtype, per_key = MASKS[mask]
            attn_mask = _meta(batch, 1, 1 if per_key else seq, seq, dtype=dtype)
        call = AttentionCall(q, k, v, q_scale, k_scale, v_scale, attn_mask, causal, sm_scale, window_left=window_left,
                             options=KernelOptions(p_scale=p_scale, launch=LaunchOptions(tma_loads=tma)))
        args, constexprs = int8_kernel.launch_arguments(call, out, target_arch=arch, parts=parts,
                                                        split_keys=split_keys)
        # revisions before 2026-12-06 named the kernel _int8_attention_fwd
        kernel = getattr(module, "int8_attention_fwd", None) or module._int8_attention_fwd
        if module is not int8_kernel:  # an earlier revision: pass it the arguments it takes, by name
            takes = set(kernel.fn.arg_names)
            constexprs = {name: value for name, value in constexprs.items() if name in takes}
            if "BLOCK_N" in takes and not any("BLOCK_N" in c.kwargs for c in kernel.configs):
                constexprs["BLOCK_N"] = module.KV_BLOCK_SIZE  # that revision fixed the key block at launch
            today = [p.name for p in int8_kernel.int8_attention_fwd.fn.params if not p.is_constexpr]
            named = dict(zip(today, args, strict=True))
            missing = [p.name for p in kernel.fn.params if not p.is_constexpr and p.name not in named]
            if missing:
                raise RuntimeError(f"that revision's kernel takes arguments today's launch_arguments lacks: {missing}")
            args = tuple(named[p.name] for p in kernel.fn.params if not p.is_constexpr)
        return kernel, args, constexprs
    if variant in ("fp8-baseline", "fp16-baseline"):
        from benchmarks import fp8_attention

        dtype = fp8_attention.FP8_DTYPE if variant == "fp8-baseline" else torch.float16
        q, k = (_meta(batch, heads, seq, head_dim, dtype=dtype) for _ in range(2))
        v = _meta(batch, heads, seq, head_dim, dtype=dtype)
        if variant == "fp8-baseline":  # sequence-contiguous V, as quantize_fp8 lays it out for Hopper
            v = _meta(batch, heads, head_dim, seq, dtype=dtype).transpose(-1, -2)
        descale = _meta(batch, heads, dtype=torch.float32)
        out = _meta(batch, heads, seq, head_dim, dtype=torch.float16)
        args, constexprs = fp8_attention.launch_arguments(q, k, v, descale, descale, descale, causal, sm_scale, out)
        return fp8_attention.fp8_attention_fwd, args, constexprs
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def autotune_candidates(kernel, args: tuple, constexprs: dict, block_n: int | None = None) -> list[triton.Config]:
    """The autotune configs a launch would try: the kernel's configs after its own pruning hook (only those with
    ``block_n`` keys per block, if given; a kernel revision that fixed BLOCK_N has it among ``constexprs``)."""
    configs = list(kernel.configs)
    if block_n is not None:
        if constexprs.get("BLOCK_N", block_n) != block_n:
            raise ValueError(f"this kernel fixes BLOCK_N = {constexprs['BLOCK_N']}")
        configs = [c for c in configs if c.kwargs.get("BLOCK_N", block_n) == block_n]
        if "KV_BLOCK" in constexprs:  # the launch asks for this key block (the kernel never reads KV_BLOCK)
            constexprs = {**constexprs, "KV_BLOCK": block_n}
    prune = getattr(kernel, "early_config_prune", None)
    if prune is not None:
        named = dict(zip(kernel.arg_names, args, strict=False))
        configs = prune(configs, named, **constexprs)
    return configs


def inspect_variant(arch: int, variant: str, head_dim: int = 128, causal: bool = False,
                    config: triton.Config | None = None, kernel_module=None, window_left: int = -1,
                    block_n: int | None = None, decode: bool = False, tma: bool = False) -> Codegen:
    """Compile one variant for sm_<arch> as a launch would (``config``: one of its autotune configs; by default
    the first of ``_DEFAULT_TILES`` the pruning keeps, else the first surviving config; ``block_n``: only
    configs with that many keys per block)."""
    kernel, args, constexprs = launch_case(variant, head_dim, causal, kernel_module, window_left, arch, decode, tma)
    if config is None:
        candidates = autotune_candidates(kernel, args, constexprs, block_n)
        shapes = [(c.kwargs.get("BLOCK_M"), c.num_warps, c.num_stages) for c in candidates]
        tiles = [(16, 4, stages) if decode else (m, warps, stages) for m, warps, stages in _DEFAULT_TILES]
        preferred = [shape for shape in tiles if shape in shapes]
        config = candidates[shapes.index(preferred[0])] if preferred else candidates[0]
    return codegen_of(arch, variant, head_dim, causal, kernel.fn, args, constexprs, config)


def inspect_peer(arch: int, variant: str, head_dim: int = 128, causal: bool = False) -> Codegen:
    """A peer's kernel (``peer_kernels``) compiled for sm_<arch> as its own launcher launches it at
    ``TYPICAL_SHAPE``."""
    from benchmarks import peer_kernels

    if variant != peer_kernels.SAGE_VARIANT:
        raise ValueError(f"unknown peer {variant!r}; known: {peer_kernels.SAGE_VARIANT}")
    jit_fn, args, constexprs, config = peer_kernels.sage_launch_case(head_dim, causal, **TYPICAL_SHAPE)
    return codegen_of(arch, variant, head_dim, causal, jit_fn, args, constexprs, config)


def codegen_of(arch: int, variant: str, head_dim: int, causal: bool, jit_fn, args: tuple, constexprs: dict,
               config: triton.Config) -> Codegen:
    """Compile ``jit_fn`` like a launch with ``args``, ``constexprs`` and ``config`` and read what it holds."""
    compiled, sass, registers, local_bytes = compile_like_launch(jit_fn, args, constexprs, config, arch)
    instructions = sass_instructions(sass)
    loop = main_loop_range(sass)
    rare = skipped_regions(sass, loop) if loop else []
    histogram = compiled_histogram(instructions)
    ptx_matrix = sorted(set(re.findall(r"((?:wgmma\.mma_async|mma\.sync)\.\S+)", compiled.asm["ptx"])))
    return Codegen(
        arch=arch, variant=variant, head_dim=head_dim, causal=causal,
        block_m=config.kwargs.get("BLOCK_M", constexprs.get("BLOCK_M")),
        block_n=config.kwargs.get("BLOCK_N", constexprs.get("BLOCK_N")),
        num_warps=config.num_warps, num_stages=config.num_stages, ptx_matrix=ptx_matrix,
        sass_histogram=histogram, loop_histogram=compiled_histogram(instructions, loop, exclude=rare) if loop else {},
        loop_rare_histogram=compiled_histogram(instructions, loop, only=rare) if loop else {}, loop_range=loop,
        registers=registers, spills=sum(count for op, count in histogram.items() if op.split(".")[0] == "STL"),
        local_bytes=local_bytes, shared_bytes=compiled.metadata.shared,
        occupancy_blocks=occupancy(arch, registers, compiled.metadata.shared, config.num_warps), sass=sass,
    )



@dataclass(frozen=True)
class LaunchCase:
    """One kind of launch of our INT8 kernel: what ``spill_sweep`` compiles every candidate tile of."""

    arch: int
    variant: str
    head_dim: int
    block_n: int
    causal: bool = False
    decode: bool = False
    tma: bool = False
    mask: str = ""
    """A name in ``MASKS``."""
    window: bool = False
    """A causal sliding window (Mistral's)."""
    row_block: bool = False
    """P quantized with its per-row scale (``p_scale="row_block"``; INT8 P·V only)."""

    def label(self) -> str:
        extras = "".join(f" {name}" for name in ("causal", "decode", "tma", "window", "row_block")
                         if getattr(self, name))
        return f"sm_{self.arch} {self.variant} d{self.head_dim} n{self.block_n}{extras}" + (
            f" {self.mask} mask" if self.mask else "")


def _pv_format(variant: str) -> PVFormat:
    """The P·V format a kernel variant of this script runs."""
    return {"full-int8": INT8, "half-int8": FP16, "fp8-pv": FP8}[variant]


def launch_space() -> list[LaunchCase]:
    """Every kind of launch a user's call can make on a GPU: sm_80 and sm_90; full INT8, half-INT8 and FP8 P·V
    (sm_90 only: e4m3 needs sm_89); padded head dims 64, 128 and 256 (the kernel's, ``padded_head_dim``); each
    key block the CUDA tiles offer there (64, and 128 where ``numerics.default_kv_block`` allows it: what
    ``kv_block_size`` "auto", "tune", 64 and 128 can run; ``passes.guards.cuda_tile_reason`` refuses the rest);
    and at d = 128, with the default key block, the causal loops, the 16-row decode tile and (sm_90) the TMA
    loads and (full INT8) P's row-block scale; boolean and fp16 additive key-padding masks and a causal sliding
    window at d = 64 and 128, every mask of ``MASKS`` (bfloat16, 2-D) at d = 128. Not covered: combinations of
    these (a mask with a window, say)."""
    cases = []
    for arch in (80, 90):
        for variant in ("full-int8", "half-int8", "fp8-pv"):
            if variant == "fp8-pv" and arch < 89:
                continue
            for head_dim in (64, 128, 256):
                widest = default_kv_block(head_dim, _pv_format(variant))
                cases += [LaunchCase(arch, variant, head_dim, block_n) for block_n in (64, 128) if block_n <= widest]
            default = default_kv_block(128, _pv_format(variant))
            cases.append(LaunchCase(arch, variant, 128, default, causal=True))
            cases.append(LaunchCase(arch, variant, 128, default, decode=True))
            if arch == 90:
                cases.append(LaunchCase(arch, variant, 128, default, tma=True))
            cases += [LaunchCase(arch, variant, head_dim, default_kv_block(head_dim, _pv_format(variant)), mask=mask)
                      for head_dim in (64, 128) for mask in MASKS if head_dim == 128 or mask in ("bool", "additive")]
            cases += [LaunchCase(arch, variant, head_dim, default_kv_block(head_dim, _pv_format(variant)), causal=True,
                                 window=True) for head_dim in (64, 128)]
            if variant == "full-int8":
                cases.append(LaunchCase(arch, variant, 128, default, row_block=True))
    return cases


def _case_rows(case: LaunchCase) -> list[dict]:
    """Registers and spills of every tile the autotuner may pick for ``case`` (after pruning)."""
    kernel, args, constexprs = launch_case(case.variant, case.head_dim, case.causal, window_left=256 if case.window
                                           else -1, arch=case.arch, decode=case.decode, tma=case.tma, mask=case.mask,
                                           p_scale="row_block" if case.row_block else "fixed")
    try:
        configs = autotune_candidates(kernel, args, constexprs, case.block_n)
    except ValueError as error:
        return [{"case": case.label(), "error": str(error)}]
    rows = []
    for config in configs:
        info = codegen_of(case.arch, case.variant, case.head_dim, case.causal, kernel.fn, args,
                          {**constexprs, "KV_BLOCK": case.block_n} if "KV_BLOCK" in constexprs else constexprs, config)
        rows.append({"case": case.label(), "tile": f"{info.block_m}x{info.block_n}", "warps": info.num_warps,
                     "stages": info.num_stages, "registers": info.registers, "spills": info.spills,
                     "local_bytes": info.local_bytes})
    return rows


def spill_sweep(cases: list[LaunchCase] | None = None, workers: int | None = None) -> list[dict]:
    """Compile every tile the autotuner may pick for each launch case (``launch_space`` by default) and report
    its registers and spills: the check that the tile rule holds on the installed Triton (ptxas differs between
    releases). A case whose pruning keeps no tile of its key block is reported with ``error``. Cases compile in
    ``workers`` processes (one per core by default)."""
    from concurrent.futures import ProcessPoolExecutor

    cases = cases or launch_space()
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return [row for rows in pool.map(_case_rows, cases) for row in rows]

def opcode_families(histogram: dict[str, int]) -> dict[str, int]:
    """Counts summed by opcode family, the part before the first modifier (``IGMMA.64x64x32.S8.S8`` → ``IGMMA``)."""
    families: dict[str, int] = collections.Counter()
    for opcode, count in histogram.items():
        families[opcode.split(".")[0]] += count
    return dict(families)


def _families(histogram: dict[str, int], names: tuple[str, ...]) -> str:
    counts = opcode_families(histogram)
    return ", ".join(f"{name} {counts[name]}" for name in names if counts.get(name))


_SHOWN = ("IGMMA", "HGMMA", "QGMMA", "IMMA", "HMMA", "MUFU", "F2I", "I2F", "I2FP", "F2FP", "F2F", "FFMA", "FMUL",
          "FADD", "PRMT", "LDG", "LDGSTS", "STS", "LDS", "STL")


def print_table(rows: list[Codegen]) -> None:
    print("| arch | variant | d | causal | BLOCK_M×N | warps | stages | regs | spills (STL) | shared | blocks/SM "
          "| main-loop SASS (static, per thread) | loop instrs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| sm_{row.arch} | {row.variant} | {row.head_dim} | {row.causal} | {row.block_m}×{row.block_n} | "
              f"{row.num_warps} | {row.num_stages} | {row.registers} | {row.spills} | {row.shared_bytes} B | "
              f"{row.occupancy_blocks} | {_families(row.loop_histogram, _SHOWN)} | "
              f"{sum(row.loop_histogram.values())} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (last line) for one kernel")
    parser.add_argument("--arch", type=int, choices=(80, 90), default=90)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--variant", choices=VARIANTS, default="full-int8")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--all-configs", action="store_true", help="every autotune config, not only the default")
    parser.add_argument("--block-n", type=int, default=None, help="only tiles with this many keys per block")
    parser.add_argument("--decode", action="store_true", help="one query per head (the decode tile, split-K)")
    parser.add_argument("--tma", action="store_true", help="K and V through TMA tensor descriptors (sm_90)")
    parser.add_argument("--kernel-rev", default=None, help="compile the INT8 kernel as it was at this git revision")
    parser.add_argument("--spill-sweep", action="store_true",
                        help="every tile a launch may pick in every launch case (launch_space): registers, spills")
    parser.add_argument("--out", default=None, help="with --spill-sweep: write a results file into this folder")
    args = parser.parse_args()
    if args.spill_sweep:
        rows = spill_sweep()
        table = ["| case | tile | warps | stages | registers | spills |", "|---|---|---|---|---|---|"]
        table += [f"| {row['case']} | {row.get('tile', row.get('error'))} | {row.get('warps', '')} | "
                  f"{row.get('stages', '')} | {row.get('registers', '')} | {row.get('spills', '')} |" for row in rows]
        spilled = sum(row.get("spills", 0) > 0 for row in rows)
        summary = f"triton {triton.__version__}: {spilled} of {len(rows)} tiles spill"
        print("\n".join(table) + f"\n\n{summary}")
        if args.out:
            from benchmarks.results_file import RunInfo

            run = RunInfo("cpu")
            lines = run.header(f"Spill sweep, Triton {triton.__version__}", "-",
                               "compiled for sm_80/sm_90 with the ptxas Triton ships, as a launch compiles (no GPU)",
                               summary, *(["tile rule: tuned (prune_configs)"] if int8_kernel.triton_release()
                                          == int8_kernel.TUNED_TRITON else ["tile rule: register-safe "
                                                                            "(_register_safe_tiles)"]))
            path = run.write(Path(args.out), f"spill-sweep-triton{triton.__version__}-", "\n".join(
                [*lines, "", *table, ""]), smoke=False)
            print(f"wrote {path}")
        print(json.dumps(rows))
        return
    module = load_kernel_module(args.kernel_rev)
    if args.json:
        kernel, launch_args, constexprs = launch_case(args.variant, args.head_dim, args.causal, module,
                                                      arch=args.arch, decode=args.decode, tma=args.tma)
        info = inspect_variant(args.arch, args.variant, args.head_dim, args.causal, kernel_module=module,
                               block_n=args.block_n, decode=args.decode, tma=args.tma)
        result = info.to_json()
        if args.all_configs:
            result["configs"] = [
                {k: v for k, v in inspect_variant(args.arch, args.variant, args.head_dim, args.causal, config,
                                                  module, decode=args.decode, tma=args.tma).to_json().items()
                 if k in ("block_m", "block_n", "num_warps", "num_stages", "registers", "spills", "local_bytes",
                          "shared_bytes", "occupancy_blocks")}
                for config in autotune_candidates(kernel, launch_args, constexprs, args.block_n)
            ]
        result["triton"] = triton.__version__
        print(json.dumps(result))
        return
    rows = []
    for arch in (80, 90):
        for variant in ("full-int8", "half-int8", "fp8-pv", "fp8-baseline", "fp16-baseline"):
            if variant in ("fp8-baseline", "fp8-pv") and arch < 89:
                continue
            for head_dim in (64, 128):
                if args.all_configs:
                    kernel, launch_args, constexprs = launch_case(variant, head_dim, args.causal, module, arch=arch)
                    configs = autotune_candidates(kernel, launch_args, constexprs, args.block_n)
                    rows += [inspect_variant(arch, variant, head_dim, args.causal, c, module) for c in configs]
                else:
                    rows.append(inspect_variant(arch, variant, head_dim, args.causal, kernel_module=module,
                                                block_n=args.block_n))
    print_table(rows)
    print(f"\ntriton {triton.__version__}, python {sys.version.split()[0]}; launch specialized for "
          f"B {TYPICAL_SHAPE['batch']}, H {TYPICAL_SHAPE['heads']}, N {TYPICAL_SHAPE['seq']}")


if __name__ == "__main__":
    main()
