"""Forward attention, side by side: speed (TOPS) and accuracy against fp64, for every available provider.

Providers: PyTorch SDPA in 16-bit with each backend (flash, efficient, cuDNN), intfa full-INT8 and
half-INT8 (quantization time included, and excluded as "-prequant"), an FP8 (e4m3) Triton kernel in
FlashAttention-3's arithmetic (``fp8_attention.py``; GPUs with FP8 tensor cores), full-INT8 through
``torch.compile(backend="intfa")`` with each CUDA lowering (custom op / triton_op: the measurement
that picks ``config.cuda_lowering``), and SageAttention 1.0.6 when importable. Timing uses
``triton.testing.do_bench`` (CUDA events, warm-up, median) over several input sets so the L2 cache
does not flatter; accuracy is cosine, relative L2 and mean relative
error (mean|out − ref| / mean|ref|) against fp64 attention on the first two heads.

    python -m benchmarks.bench_attention                 # GPU: full sweep, writes benchmarks/results/
    python -m benchmarks.bench_attention --smoke --out /tmp/x   # CPU: tiny shapes, Triton interpreter

Writes ``<out>/<device>-<date>.md`` (table, device, versions, command) and a PNG plot.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if "--smoke" in sys.argv and not os.environ.get("TRITON_INTERPRET"):
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the kernel's import

import torch
import torch.nn.functional as F
import triton
from torch._inductor.utils import run_and_get_code

from benchmarks.fp8_attention import fp8_attention, fp8_flash_attention, quantize_fp8
from benchmarks.plotting import Panels, plot_against_length
from benchmarks.results_file import RunInfo
from intfa_compile.numerics import KV_BLOCK_AUTOTUNE
from intfa_compile.ops import KernelOptions, LaunchOptions, int8_sdpa, out_dtype_name
from intfa_compile.quantize import (
    quantize_per_channel,
    quantize_per_token,
    quantize_v_fp8,
    sequence_major,
)
from intfa_compile.reference import error_metrics, reference_attention

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ACCURACY_HEADS = 2


@dataclass(frozen=True)
class Case:
    """One attention shape."""

    batch: int
    heads: int
    n: int
    head_dim: int
    causal: bool
    dtype: torch.dtype

    @property
    def ops(self) -> float:
        """Multiply-adds ×2 of both GEMMs: 4·B·H·N²·d, halved when causal."""
        total = 4.0 * self.batch * self.heads * self.n * self.n * self.head_dim
        return total / 2 if self.causal else total

    @property
    def input_bytes(self) -> int:
        return 3 * self.batch * self.heads * self.n * self.head_dim * torch.finfo(self.dtype).bits // 8


@dataclass
class Row:
    """One provider's numbers on one case."""

    provider: str
    ms: float | None = None
    tops: float | None = None
    cosine: float | None = None
    rel_l2: float | None = None
    mre: float | None = None
    note: str = ""
    speedup: float | None = field(default=None)


Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _sdpa_backend(backend_name: str, causal: bool) -> Attention | None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name, None)
    if backend is None:
        return None

    def attend(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return attend


def _intfa(pv_format: str, causal: bool) -> Attention:
    def attend(q, k, v):
        return int8_sdpa(q, k, v, is_causal=causal, pv_format=pv_format)

    return attend


def _intfa_prequantized(pv_format: str, causal: bool, kv_block: int = 0, tma: bool = False
                        ) -> tuple[Callable, Attention]:
    """(prepare, attend): prepare quantizes once, outside the timed region. ``kv_block`` as the op's (0: the
    default rule; ``KV_BLOCK_AUTOTUNE``: the autotuner picks, and ``tuned_tiles`` says what); ``tma``: K and V
    through tensor descriptors (``config.tma_loads``)."""

    def prepare(q, k, v):
        q8, qs = quantize_per_token(q)
        k8, ks = quantize_per_token(k)
        if pv_format == "fp16":
            v_in, vs = v, None
        else:  # per channel, in the sequence-major layout the compiler passes give the kernel
            v_in, vs = quantize_per_channel(v) if pv_format == "int8" else quantize_v_fp8(v)
            v_in = sequence_major(v_in)
        return (q8, k8, v_in, qs, ks, vs, q.shape[-1] ** -0.5, q.dtype)

    def attend(q8, k8, v_in, qs, ks, vs, sm_scale, dtype):
        options = KernelOptions(kv_block=kv_block, launch=LaunchOptions(tma_loads=tma)).op_arguments()
        return torch.ops.intfa.int8_attention(q8, k8, v_in, qs, ks, vs, None, causal, sm_scale,
                                              out_dtype=out_dtype_name(dtype), **options)

    return prepare, attend


def _triton_interpreted(causal: bool) -> tuple[Callable, Attention]:
    """The Triton kernel itself on CPU tensors (interpreter): keeps the GPU path exercised in --smoke."""
    from intfa_compile.kernels.int8_flash_attention import int8_flash_attention_triton

    from intfa_compile.attention_call import AttentionCall

    prepare, _ = _intfa_prequantized("int8", causal)

    def attend(q8, k8, v8, qs, ks, vs, sm_scale, dtype):
        out = torch.empty_like(q8, dtype=dtype)
        return int8_flash_attention_triton(AttentionCall(q8, k8, v8, qs, ks, vs, None, causal, sm_scale), out)

    return prepare, attend


def _fp8_prequantized(causal: bool) -> tuple[Callable, Attention]:
    """(prepare, attend) for the FP8 baseline with quantization (and V's sequence-major layout) untimed."""

    def prepare(q, k, v):
        (q8, dq), (k8, dk), (v8, dv) = quantize_fp8(q), quantize_fp8(k), quantize_fp8(v, sequence_contiguous=True)
        return (q8, k8, v8, dq, dk, dv, q.shape[-1] ** -0.5, q.dtype)

    def attend(q8, k8, v8, dq, dk, dv, sm_scale, dtype):
        return fp8_flash_attention(q8, k8, v8, dq, dk, dv, causal, sm_scale, dtype)

    return prepare, attend


def _has_fp8_tensor_cores(device: str) -> bool:
    return device == "cuda" and torch.cuda.get_device_capability() >= (8, 9)


def generated_kernel_count(code: str) -> int:
    """Kernels Inductor generated (Triton or C++) in its output code: the quantization's fusion, seen from outside."""
    return len(re.findall(r"= async_compile\.(?:triton|cpp_pybinding|cpp)\(", code))


class _Compiled:
    """SDPA through torch.compile(backend="intfa"): quantization fused by Inductor, the op lowered as chosen.

    The first call keeps Inductor's output code, so the row can say how many kernels it generated.
    """

    def __init__(self, causal: bool, lowering: str) -> None:
        def attend(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        self.compiled = torch.compile(attend, backend="intfa", options={"cuda_lowering": lowering, "pv_format": "int8"})
        self.kernels: int | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.kernels is None:
            out, code = run_and_get_code(self.compiled, q, k, v)
            self.kernels = generated_kernel_count("\n".join(code))
            return out
        return self.compiled(q, k, v)


def _sageattention(causal: bool) -> Attention | None:
    try:
        from sageattention import sageattn
    except ImportError:
        return None

    def attend(q, k, v):
        return sageattn(q, k, v, tensor_layout="HND", is_causal=causal)

    return attend


def providers(case: Case, device: str) -> dict[str, tuple[Callable | None, Attention | None]]:
    """name → (prepare or None, attend or None when unavailable here)."""
    table: dict[str, tuple[Callable | None, Attention | None]] = {}
    if device == "cuda":
        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            table[f"sdpa-{name.split('_')[0].lower()}"] = (None, _sdpa_backend(name, case.causal))
    else:
        table["sdpa-cpu"] = (None, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=case.causal))
    table["intfa-full"] = (None, _intfa("int8", case.causal))
    table["intfa-full-prequant"] = _intfa_prequantized("int8", case.causal)
    table["intfa-half"] = (None, _intfa("fp16", case.causal))
    table["intfa-half-prequant"] = _intfa_prequantized("fp16", case.causal)
    if device == "cpu" or _has_fp8_tensor_cores(device):
        table["intfa-fp8pv"] = (None, _intfa("fp8", case.causal))
        table["intfa-fp8pv-prequant"] = _intfa_prequantized("fp8", case.causal)
    if device == "cpu":
        table["intfa-full-compiled"] = (None, _Compiled(case.causal, "custom_op"))
        table["intfa-full-triton-interpreter"] = _triton_interpreted(case.causal)
        table["fp8-triton-interpreter"] = _fp8_prequantized(case.causal)
    elif _has_fp8_tensor_cores(device):
        table["fp8-triton"] = (None, lambda q, k, v: fp8_attention(q, k, v, is_causal=case.causal))
        table["fp8-triton-prequant"] = _fp8_prequantized(case.causal)
    else:
        table["fp8-triton"] = (None, None)
    if device == "cuda":
        # The key block trade (``config.kv_block_size``): each size fixed, and the autotuner's own pick.
        for name, kv_block in (("bn64", 64), ("bn128", 128), ("tune", KV_BLOCK_AUTOTUNE)):
            table[f"intfa-full-prequant-{name}"] = _intfa_prequantized("int8", case.causal, kv_block)
        # K/V by TMA (``config.tma_loads``), full INT8 and half-INT8, at the default key block.
        table["intfa-full-prequant-tma"] = _intfa_prequantized("int8", case.causal, tma=True)
        table["intfa-half-prequant-tma"] = _intfa_prequantized("fp16", case.causal, tma=True)
        for lowering in ("custom_op", "triton_op"):
            table[f"intfa-full-compiled-{lowering}"] = (None, _Compiled(case.causal, lowering))
        table["sageattention-1.0.6"] = (None, _sageattention(case.causal))
    return table


def _time_ms(fn: Callable[[], object], device: str, smoke: bool) -> float:
    if device == "cuda":
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()  # warm-up
    times = []
    for _ in range(1 if smoke else 5):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _input_sets(case: Case, device: str) -> list[tuple[torch.Tensor, ...]]:
    """Enough independent input sets that rotating among them overflows the L2 cache twice."""
    l2 = torch.cuda.get_device_properties(device).L2_cache_size if device == "cuda" else 0
    count = max(1, min(4, math.ceil(2 * l2 / case.input_bytes)))
    shape = (case.batch, case.heads, case.n, case.head_dim)
    return [tuple(torch.randn(shape, device=device, dtype=case.dtype) for _ in range(3)) for _ in range(count)]


def _reference(q, k, v, causal: bool) -> torch.Tensor:
    """fp64 attention of batch 0, the first heads; query rows in chunks to bound memory."""
    q, k, v = (t[:1, :ACCURACY_HEADS] for t in (q, k, v))
    chunks = []
    n = q.shape[2]
    step = max(1, 2**26 // (n * ACCURACY_HEADS))
    for start in range(0, n, step):
        rows = q[:, :, start:start + step]
        mask = None
        if causal:  # rows start.. see keys ≤ their own index
            mask = torch.arange(n, device=q.device)[None, :] <= torch.arange(start, start + rows.shape[2],
                                                                             device=q.device)[:, None]
        chunks.append(reference_attention(rows, k, v, mask, False).out)
    return torch.cat(chunks, dim=2)


def _rotating(attend: Attention, input_sets: list[tuple]) -> Callable[[], object]:
    """A call that takes the next input set each time, so repeated calls do not hit a warm cache."""
    calls = iter(range(10**12))
    return lambda: attend(*input_sets[next(calls) % len(input_sets)])


def run_case(case: Case, device: str, smoke: bool) -> list[Row]:
    sets = _input_sets(case, device)
    q, k, v = sets[0]
    ref = _reference(q, k, v, case.causal)
    rows = []
    for name, (prepare, attend) in providers(case, device).items():
        if attend is None:
            rows.append(Row(name, note="not available here"))
            continue
        try:
            prepared = [prepare(*s) if prepare else s for s in sets]
            out = attend(*prepared[0])
            metrics = error_metrics(out[:1, :ACCURACY_HEADS], ref)
            ms = _time_ms(_rotating(attend, prepared), device, smoke)
        except Exception as err:  # a backend that refuses this shape is reported, not fatal
            rows.append(Row(name, note=f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"))
            continue
        note = f"Inductor generated {attend.kernels} kernel(s)" if isinstance(attend, _Compiled) else ""
        rows.append(Row(name, ms=ms, tops=case.ops / (ms * 1e-3) / 1e12, cosine=metrics.cosine,
                        rel_l2=metrics.rel_l2, mre=metrics.mre, note=note))
    baseline = [r.ms for r in rows if r.provider.startswith("sdpa") and r.ms is not None]
    for row in rows:
        if baseline and row.ms is not None:
            row.speedup = min(baseline) / row.ms
    return rows


def _cases(args: argparse.Namespace) -> list[Case]:
    dtype = getattr(torch, args.dtype)
    if args.smoke:
        return [Case(1, 2, n, 64, causal, dtype) for n in (64, 130) for causal in (False, True)]
    cases = []
    for head_dim in args.head_dims:
        for n in args.lengths:
            batch = max(1, args.tokens // (args.heads * n))
            for causal in (False, True):
                cases.append(Case(batch, args.heads, n, head_dim, causal, dtype))
    return cases


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _markdown(results: list[tuple[Case, list[Row]]], header: list[str]) -> str:
    lines = [*header, ""]
    lines.append("| B×H | N | d | causal | provider | ms | TOPS | speedup vs best SDPA | cosine | rel L2 | MRE "
                 "| note |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case, rows in results:
        for r in rows:
            lines.append(
                f"| {case.batch}×{case.heads} | {case.n} | {case.head_dim} | {case.causal} | {r.provider} | "
                f"{_fmt(r.ms, '.3f')} | {_fmt(r.tops, '.3g')} | {_fmt(r.speedup, '.2f')} | {_fmt(r.cosine, '.6f')} | "
                f"{_fmt(r.rel_l2, '.2e')} | {_fmt(r.mre, '.2e')} | {r.note} |"
            )
    return "\n".join(lines) + "\n"


def _plot(results: list[tuple[Case, list[Row]]], path: Path) -> str:
    panels: Panels = {}
    for case, rows in results:
        series = panels.setdefault(f"d={case.head_dim}, causal={case.causal}", {})
        for r in rows:
            if r.tops is not None:
                series.setdefault(r.provider, []).append((case.n, r.tops))
    return plot_against_length(panels, path, "TOPS")


def _tuned_tiles_section(device: str) -> str:
    """The tiles the INT8 kernel's autotuner chose, per autotune key (BLOCK_N among them when it was free)."""
    if device != "cuda":
        return ""
    from intfa_compile.kernels.int8_flash_attention import int8_attention_fwd, tuned_tiles

    names = list(int8_attention_fwd.keys)
    lines = ["", "## Tiles the INT8 kernel's autotuner chose", "", f"autotune key: {', '.join(names)}, dtypes", "",
             "| key | BLOCK_M | BLOCK_N | warps | stages |", "|---|---|---|---|---|"]
    for key, tile in sorted(tuned_tiles().items(), key=str):
        lines.append(f"| {key} | {tile['BLOCK_M']} | {tile['BLOCK_N']} | {tile['num_warps']} | {tile['num_stages']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, Triton interpreter")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results file and plot")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=2**20, help="B·H·N per case, so each case fills the GPU")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    run = RunInfo(device)
    results = []
    for case in _cases(args):
        results.append((case, run_case(case, device, args.smoke)))
        print(f"done N={case.n} d={case.head_dim} causal={case.causal}", flush=True)
    header = run.header(
        "Attention forward benchmark", args.dtype,
        "TOPS = 4·B·H·N²·d / time (halved when causal); accuracy on batch 0, first "
        f"{ACCURACY_HEADS} heads, against fp64 attention of the same 16-bit inputs",
    )
    table = _markdown(results, header) + _tuned_tiles_section(device)
    path = run.write(args.out, "", table, args.smoke)
    print(table)
    print(_plot(results, path.with_suffix(".png")))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
