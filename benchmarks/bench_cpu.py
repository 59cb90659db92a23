"""The INT8 op on a CPU against SDPA in fp32, side by side in one run, and a whole model three ways.

Attention cases (issue 26): ``intfa_compile.int8_sdpa`` with default settings (its quantization of Q, K, V
included) against ``F.scaled_dot_product_attention`` on the same fp32 inputs, interleaved, best of ``--repeats``;
the same op with PyTorch ops between its GEMMs instead of the native pass (``cpu_softmax_rows``; what a machine
that cannot build it runs); and, for reference, the kernel's step-by-step twin (``cpu_attention``, the op's CPU
implementation before issue 26) on the same quantized inputs, timed once. Whole model: a LLaMA-shaped decoder
(8 layers, hidden 512, GQA 8/2 heads, random weights, fp32, SDPA attention) at 512 tokens, steady state
(median): eager, ``torch.compile`` with Inductor, and with ``backend="intfa"``.

    python -m benchmarks.bench_cpu                        # writes benchmarks/results/cpu-<cpu>-<date>.md
    python -m benchmarks.bench_cpu --smoke --out /tmp/x   # tiny shapes, end to end

The results file names the CPU, its vector and INT8 dot-product instructions, whether ``torch._int_mm`` is exact
here (then Q·Kᵀ runs as INT8 GEMMs), the versions and the date.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

import intfa_compile
from benchmarks.results_file import RunInfo
from benchmarks.timing import samples_ms
from intfa_compile import cpu_fast_attention
from intfa_compile.attention_call import AttentionCall
from intfa_compile.cpu_attention import int8_flash_attention_cpu
from intfa_compile.cpu_fast_attention import exact_int8_gemm
from intfa_compile.cpu_softmax_rows import native_softmax_rows
from intfa_compile.quantize import quantize_per_token, value_16bit

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Case:
    """One attention call: (batch, query heads, KV heads, tokens, head dim) and its mask."""

    name: str
    batch: int
    heads_q: int
    heads_k: int
    tokens: int
    head_dim: int
    causal: bool = False
    padding: bool = False

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        gen = torch.Generator().manual_seed(self.tokens + self.head_dim)
        q = torch.randn(self.batch, self.heads_q, self.tokens, self.head_dim, generator=gen)
        k, v = (torch.randn(self.batch, self.heads_k, self.tokens, self.head_dim, generator=gen) for _ in range(2))
        mask = None
        if self.padding:  # the second sequence is half padding, as a padded batch
            mask = torch.ones(self.batch, 1, 1, self.tokens, dtype=torch.bool)
            mask[1:, ..., self.tokens // 2:] = False
        return q, k, v, mask


CASES = [
    Case("causal, GQA 32/8 heads, d=64, 512 tokens", 1, 32, 8, 512, 64, causal=True),
    Case("causal, GQA 32/8 heads, d=64, 2048 tokens", 1, 32, 8, 2048, 64, causal=True),
    Case("padding mask, 2x12 heads, d=128, 1024 tokens", 2, 12, 12, 1024, 128, padding=True),
]
SMOKE_CASES = [Case("causal, GQA 4/2 heads, d=32, 64 tokens", 1, 4, 2, 64, 32, causal=True),
               Case("padding mask, 2x2 heads, d=64, 48 tokens", 2, 2, 2, 48, 64, padding=True)]

MODEL = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=2, vocab_size=32000, max_position_embeddings=2048)
SMOKE_MODEL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=100, max_position_embeddings=256)


def time_case(case: Case, repeats: int, twin: bool) -> dict[str, float | None]:
    """SDPA fp32 and the INT8 op (quantization included), interleaved; the twin once."""
    q, k, v, mask = case.inputs()

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=case.causal,
                                              enable_gqa=case.heads_q != case.heads_k)

    def int8() -> torch.Tensor:
        return intfa_compile.int8_sdpa(q, k, v, attn_mask=mask, is_causal=case.causal)

    sdpa_ms, int8_ms, pytorch_passes_ms = [], [], []
    for _ in range(max(1, repeats)):  # interleaved: all see the same machine state
        sdpa_ms += samples_ms(sdpa, 1)
        int8_ms += samples_ms(int8, 1)
        with mock.patch.object(cpu_fast_attention, "native_softmax_rows", lambda: None):
            pytorch_passes_ms += samples_ms(int8, 1)
    twin_ms = None
    if twin:
        q8, q_scale = quantize_per_token(q)
        k8, k_scale = quantize_per_token(k)
        call = AttentionCall(q8, k8, value_16bit(v), q_scale, k_scale, None, mask, case.causal, case.head_dim**-0.5)
        out = torch.empty(q.shape)
        twin_ms = samples_ms(lambda: int8_flash_attention_cpu(call, out), 1, warmup=0)[0]
    return {"sdpa": min(sdpa_ms), "int8": min(int8_ms), "pytorch_passes": min(pytorch_passes_ms), "twin": twin_ms}


def time_model(shape: dict, tokens: int, repeats: int) -> dict[str, float]:
    """Steady-state latency (median) of one prefill: eager, Inductor, intfa."""
    import transformers

    config = transformers.LlamaConfig(**shape)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, shape["vocab_size"], (1, tokens), generator=torch.Generator().manual_seed(1))
    result = {}
    for name, backend in (("eager", None), ("inductor", "inductor"), ("intfa", "intfa")):
        torch._dynamo.reset()
        run = model if backend is None else torch.compile(model, backend=backend)

        def forward(run: Callable = run) -> torch.Tensor:
            with torch.no_grad():
                return run(input_ids=ids, logits_to_keep=1).logits

        result[name] = statistics.median(samples_ms(forward, repeats, warmup=2))  # the first call compiles
    torch._dynamo.reset()
    return result


def cpu_features() -> str:
    """The CPU's vector and INT8 dot-product instructions, and what the op makes of them."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    vector = [name for name in ("avx2", "avx512f") if name in flags]
    int8 = [name for name in ("avx512_vnni", "avx_vnni", "amx_int8") if name in flags]
    native = ("the native pass (cpu_softmax_rows, built by Inductor's compiler for this CPU)"
              if native_softmax_rows() is not None else "PyTorch ops (the native pass could not be built)")
    return (f"vector: {', '.join(vector) or 'unknown'} (ATen dispatches {torch.backends.cpu.get_cpu_capability()}); "
            f"INT8 dot products: {', '.join(int8) or 'none'}; Q·Kᵀ as "
            f"{'exact INT8 GEMMs (torch._int_mm)' if exact_int8_gemm() else 'fp32 GEMMs of the integers'}; "
            f"between the GEMMs: {native}")


def markdown(rows: list[tuple[Case, dict]], model: dict[str, float], model_line: str, header: list[str]) -> str:
    lines = [*header, "", "| case | intfa op ms | SDPA fp32 ms | ratio | with PyTorch passes ms (ratio) | "
             "twin ms (before) |", "|---|---|---|---|---|---|"]
    for case, t in rows:
        twin = "—" if t["twin"] is None else f"{t['twin']:.1f}"
        lines.append(f"| {case.name} | {t['int8']:.1f} | {t['sdpa']:.1f} | {t['int8'] / t['sdpa']:.2f}x | "
                     f"{t['pytorch_passes']:.1f} ({t['pytorch_passes'] / t['sdpa']:.2f}x) | {twin} |")
    lines += ["", f"Whole model ({model_line}), steady-state median:", "",
              "| eager ms | inductor ms | intfa ms | intfa / inductor |", "|---|---|---|---|",
              f"| {model['eager']:.1f} | {model['inductor']:.1f} | {model['intfa']:.1f} | "
              f"{model['intfa'] / model['inductor']:.2f}x |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, end to end")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results file")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-twin", action="store_true", help="skip timing the step-by-step twin")
    args = parser.parse_args()

    cases, shape, tokens = (SMOKE_CASES, SMOKE_MODEL, 32) if args.smoke else (CASES, MODEL, 512)
    repeats = 2 if args.smoke else args.repeats
    rows = []
    for case in cases:
        rows.append((case, time_case(case, repeats, not args.no_twin)))
        print(f"done {case.name}", flush=True)
    model = time_model(shape, tokens, repeats)
    model_line = (f"LlamaForCausalLM, {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, GQA "
                  f"{shape['num_attention_heads']}/{shape['num_key_value_heads']} heads, random weights, fp32, "
                  f"{tokens} tokens, batch 1")
    run = RunInfo("cpu")
    header = run.header("CPU attention benchmark", "float32", cpu_features(),
                        f"op: intfa_compile.int8_sdpa, default settings ({intfa_compile.config.pv_format} P·V), "
                        "quantization included; best of the repeats, interleaved with SDPA")
    text = markdown(rows, model, model_line, header)
    path = run.write(args.out, "cpu-attention-", text, args.smoke)
    print(text)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
