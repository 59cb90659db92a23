"""The INT-FlashAttention paper's accuracy study, reproduced: error against fp64 for each configuration.

Methods (all fed the same 16-bit Q, K, V; the reference is fp64 attention of those inputs):
- fp16 attention (PyTorch SDPA on fp16 inputs: FlashAttention-style, fp32 accumulation);
- FP8 e4m3 with per-tensor scales for Q, K, V and P cast to e4m3 after the row-max shift (an emulation
  of FlashAttention-3's FP8 path, not blockwise);
- intfa half-INT8, full-INT8 with P fixed 1/127 and with P per row block, full-INT8 with smooth-K,
  with per-block Q/K scales, and with INT4 Q/K.
Inputs: normal N(0, 1) and uniform U(−1, 1). Metrics: mean relative error (mean|out − ref| / mean|ref|),
relative L2 and cosine.

    python -m benchmarks.accuracy                       # CPU default: N = 1k, 2k, 4k
    python -m benchmarks.accuracy --lengths 1024 2048 4096 8192 16384   # the paper's range (GPU: fast)

Writes ``benchmarks/results/accuracy-<device>-<date>.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.plotting import Panels, plot_against_length
from intfa_compile.ops import int8_sdpa
from intfa_compile.reference import ErrorMetrics, error_metrics, reference_attention

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FP8_MAX = 448.0  # largest finite e4m3 value

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention with Q, K, V in e4m3 (one scale per tensor) and P rounded to e4m3, fp32 accumulation."""

    def to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = x.float().abs().amax().clamp(min=1e-12) / FP8_MAX
        return (x.float() / scale).to(torch.float8_e4m3fn).float(), scale

    (q8, sq), (k8, sk), (v8, sv) = to_fp8(q), to_fp8(k), to_fp8(v)
    scores = (q8 @ k8.transpose(-1, -2)) * (sq * sk * q.shape[-1] ** -0.5)
    probs = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    row_sum = probs.sum(dim=-1, keepdim=True)
    p8 = probs.to(torch.float8_e4m3fn).float()
    return ((p8 @ v8) * sv / row_sum).to(q.dtype)


def methods() -> dict[str, Attention]:
    def intfa(**kwargs) -> Attention:
        return lambda q, k, v: int8_sdpa(q, k, v, **kwargs)

    return {
        "fp16 (SDPA)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        "FP8 e4m3 (per-tensor)": fp8_attention,
        "half-INT8": intfa(pv_format="fp16"),
        "INT8 Q·Kᵀ, FP8 P·V (pv_format=fp8)": intfa(pv_format="fp8"),
        "full-INT8, P fixed 1/127 (paper)": intfa(pv_format="int8"),
        "full-INT8, P per row block": intfa(pv_format="int8", kernel_options={"p_scale": "row_block"}),
        "full-INT8 + smooth-K": intfa(pv_format="int8", smooth_k=True),
        "full-INT8, per-block Q/K": intfa(pv_format="int8", qk_granularity="per_block"),
        "INT4 Q/K, INT8 P·V": intfa(pv_format="int8", qk_bits=4),
    }


def inputs(distribution: str, n: int, head_dim: int, heads: int, device: str, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (1, heads, n, head_dim)
    if distribution == "normal":
        tensors = [torch.randn(shape, generator=gen, device=device) for _ in range(3)]
    else:
        tensors = [torch.rand(shape, generator=gen, device=device) * 2 - 1 for _ in range(3)]
    return [t.half() for t in tensors]


Row = tuple[str, int, int, str, ErrorMetrics]
"""(input distribution, head dim, N, method, error metrics)."""


def run(lengths: list[int], head_dims: list[int], heads: int, device: str) -> list[Row]:
    rows = []
    for distribution in ("normal", "uniform"):
        for head_dim in head_dims:
            for n in lengths:
                q, k, v = inputs(distribution, n, head_dim, heads, device, seed=n + head_dim)
                ref = reference_attention(q, k, v).out
                for name, attend in methods().items():
                    rows.append((distribution, head_dim, n, name, error_metrics(attend(q, k, v), ref)))
                print(f"done {distribution} d={head_dim} N={n}", flush=True)
    return rows


def _table(rows, header: list[str]) -> str:
    lines = [*header, "", "| inputs | d | N | method | MRE | rel L2 | cosine |", "|---|---|---|---|---|---|---|"]
    for distribution, head_dim, n, name, m in rows:
        lines.append(f"| {distribution} | {head_dim} | {n} | {name} | {m.mre:.2e} | {m.rel_l2:.2e} | {m.cosine:.6f} |")
    return "\n".join(lines) + "\n"


def _summary(rows) -> str:
    """Mean MRE per method over all cases, and full INT8's error relative to FP8 (the paper's claim)."""
    by_method: dict[str, list[float]] = {}
    for distribution, _, _, name, m in rows:
        by_method.setdefault(f"{name} [{distribution}]", []).append(m.mre)
    lines = ["", "Mean MRE over lengths and head dims:", "", "| method [inputs] | mean MRE |", "|---|---|"]
    lines += [f"| {name} | {sum(v) / len(v):.2e} |" for name, v in by_method.items()]
    for distribution in ("normal", "uniform"):
        fp8 = by_method[f"FP8 e4m3 (per-tensor) [{distribution}]"]
        int8 = by_method[f"full-INT8, P fixed 1/127 (paper) [{distribution}]"]
        reduction = 1 - (sum(int8) / len(int8)) / (sum(fp8) / len(fp8))
        lines.append(f"\nFull INT8 (paper's P scale) vs FP8, {distribution} inputs: {reduction:.0%} lower mean MRE "
                     "(paper: 82% lower error than FP8).")
    return "\n".join(lines) + "\n"


def _plot(rows: list[Row], path: Path) -> str:
    panels: Panels = {}
    for distribution, head_dim, n, name, metrics in rows:
        panels.setdefault(f"{distribution} inputs, d={head_dim}", {}).setdefault(name, []).append((n, metrics.mre))
    return plot_against_length(panels, path, "mean relative error", log_y=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"cpu-{platform.machine()}"
    today = datetime.date.today().isoformat()
    rows = run(args.lengths, args.head_dims, args.heads, device)
    header = [f"# Attention accuracy against fp64 — {device_name}, {today}", "",
              f"- torch {torch.__version__}; python {platform.python_version()}; B=1, H={args.heads}; "
              "16-bit (fp16) inputs; reference: fp64 attention of the same inputs",
              f"- command: `python {' '.join(sys.argv)}`"]
    text = _table(rows, header) + _summary(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"accuracy-{device_name.replace(' ', '_')}-{today}"
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    print(_plot(rows, args.out / f"{stem}.png"))


if __name__ == "__main__":
    main()
