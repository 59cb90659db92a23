"""A whole model, prefill: ``torch.compile(backend="inductor")`` against ``backend="intfa"``.

A LLaMA-shaped decoder stack built from a ``transformers`` config with random weights (hidden 4096,
32 query heads, 8 KV heads, 4 layers, bf16; attention through SDPA, so every layer's causal
attention is one INT8 site). For each prefill length it reports latency (``triton.testing.do_bench``
median on CUDA), the speedup of intfa over Inductor, and the cosine of intfa's logits to Inductor's
and to eager fp32 on the last positions (what decoding reads).

    python -m benchmarks.bench_model                          # GPU: 4k, 8k, 16k; writes benchmarks/results/
    python -m benchmarks.bench_model --smoke --out /tmp/x     # CPU: a tiny stack, end to end

Writes ``<out>/model-<device>-<date>.md`` with device, versions and the command.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from torch._dynamo.utils import counters

from benchmarks.results_file import RunInfo
from benchmarks.timing import samples_ms
from intfa_compile.sites import rewritten_sites

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOGIT_POSITIONS = 16
"""Logits are compared on the last positions only: a 16k × vocab fp32 copy is not needed to judge them."""

LLAMA_STACK = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768)
TINY_STACK = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=100, max_position_embeddings=256)


@dataclass
class ModelRow:
    """One prefill length."""

    n: int
    inductor_ms: float
    intfa_ms: float
    int8_sites: int
    cosine_to_inductor: float
    cosine_to_fp32: float | None

    @property
    def speedup(self) -> float:
        return self.inductor_ms / self.intfa_ms


def build_model(shape: dict, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """The decoder with random weights (seeded), SDPA attention, in eval mode."""
    import transformers

    config = transformers.LlamaConfig(**shape)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def _time_ms(fn: Callable[[], object], device: str, repeats: int) -> float:
    if device == "cuda":
        return triton.testing.do_bench(fn, warmup=5, rep=50, return_mode="median")
    return statistics.median(samples_ms(fn, repeats))


def _last_logits(model: Callable, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, logits_to_keep=LOGIT_POSITIONS).logits.float()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def run_length(model: torch.nn.Module, n: int, device: str, repeats: int, fp32_model: torch.nn.Module | None
               ) -> ModelRow:
    """Compile the model both ways for prefill length n, check the logits, time both."""
    gen = torch.Generator().manual_seed(n)
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=gen).to(device)
    torch._dynamo.reset()
    inductor = torch.compile(model, backend="inductor")
    ref = _last_logits(inductor, ids)
    inductor_ms = _time_ms(lambda: _last_logits(inductor, ids), device, repeats)
    torch._dynamo.reset()
    counters.clear()
    intfa = torch.compile(model, backend="intfa")
    out = _last_logits(intfa, ids)
    sites = rewritten_sites(counters["intfa"])
    intfa_ms = _time_ms(lambda: _last_logits(intfa, ids), device, repeats)
    to_fp32 = _cosine(out, _last_logits(fp32_model, ids)) if fp32_model is not None else None
    torch._dynamo.reset()
    return ModelRow(n, inductor_ms, intfa_ms, sites, _cosine(out, ref), to_fp32)


def _markdown(rows: list[ModelRow], header: list[str]) -> str:
    lines = [*header, "", "| N | inductor ms | intfa ms | speedup | INT8 sites | logits cosine vs inductor "
             "| vs eager fp32 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        fp32 = "—" if r.cosine_to_fp32 is None else f"{r.cosine_to_fp32:.6f}"
        lines.append(f"| {r.n} | {r.inductor_ms:.2f} | {r.intfa_ms:.2f} | {r.speedup:.2f} | {r.int8_sites} | "
                     f"{r.cosine_to_inductor:.6f} | {fp32} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny stack on CPU, end to end")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results file")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16"])
    parser.add_argument("--fp32-reference", action="store_true",
                        help="also compare with the eager fp32 model (doubles the weights' memory)")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    shape, lengths = (TINY_STACK, [32, 96]) if args.smoke else (LLAMA_STACK, args.lengths)
    dtype = getattr(torch, args.dtype)
    model = build_model(shape, dtype, device)
    fp32_model = build_model(shape, torch.float32, device) if args.fp32_reference or args.smoke else None
    rows = []
    for n in lengths:
        rows.append(run_length(model, n, device, 1 if args.smoke else 5, fp32_model))
        print(f"done N={n}", flush=True)

    run = RunInfo(device)
    header = run.header(
        "Model prefill benchmark", args.dtype,
        f"model: LlamaForCausalLM, random weights, {shape}; batch 1; attention through SDPA",
        f"logits compared on the last {LOGIT_POSITIONS} positions",
    )
    table = _markdown(rows, header)
    path = run.write(args.out, "model-", table, args.smoke)
    print(table)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
