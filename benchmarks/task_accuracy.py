"""Real-task accuracy: semantic search with the real all-MiniLM-L6-v2, each configuration against eager fp32.

Cosine similarity of embeddings hides what users see; this measures what they see. Every sentence of a corpus
is embedded (mean pooling, L2 normalised, as sentence-transformers does) and used as a query against all the
others. For each way of running the model we compare with eager fp32:

- top-1 agreement: the share of queries whose nearest neighbour is the same;
- top-5 agreement: the share of queries whose five nearest neighbours are the same set;
- Spearman: the rank correlation of each query's similarity scores with fp32's, averaged over queries.

With ``--task decoder``: next-token prediction of a LLaMA-shaped model (random weights, GQA, causal, 2,048
positions): top-1 agreement of the predicted token and the mean KL divergence from fp32's distribution.

Ways of running it: eager bf16 and eager fp16 (the whole model in 16-bit: the bar a user compares with), and
``torch.compile(model, backend="intfa")`` under each configuration of ours (everything else fp32).

Corpus: the English sentences of the Python Language Reference and Library topics that ship with CPython
(``pydoc_data/topics.py``, © Python Software Foundation, PSF License), split at sentence ends and filtered to
prose (no code, 40–200 characters). Nothing is downloaded.

    python -m benchmarks.task_accuracy               # the whole corpus (about 900 sentences)
    python -m benchmarks.task_accuracy --limit 64 --ways bf16 default    # a quick run
    python -m benchmarks.task_accuracy --task decoder
    python -m benchmarks.task_accuracy --decompose   # where full INT8's error comes from (Q/K, P, V)

Writes ``benchmarks/results/task-accuracy[-decoder]-<device>-<date>.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

import intfa_compile  # noqa: E402
from benchmarks.results_file import RunInfo  # noqa: E402
from examples.minilm_demo import embed, load_minilm  # noqa: E402
from intfa_compile.explain import bypassing_compile_caches  # noqa: E402
from intfa_compile.sites import collect_sites  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MAX_TOKENS = 64
"""Every batch is padded to this many tokens, so each configuration compiles one graph."""
BATCH = 32


def python_reference_sentences(limit: int | None = None) -> list[str]:
    """English prose sentences of the Python reference topics shipped with CPython, in a fixed order."""
    import pydoc_data.topics

    text = re.sub(r"\s+", " ", " ".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)))
    sentences = re.split(r"(?<=[.!?])\s+", text)
    code = re.compile(r"[{}<>=_\[\]()*`|\\]|\.\.\.|::|>>>")
    prose = [s for s in sentences if 40 <= len(s) <= 200 and s[0].isupper() and s.count(" ") >= 6
             and not code.search(s)]
    unique = list(dict.fromkeys(prose))
    return unique[:limit] if limit else unique


@dataclass(frozen=True)
class Way:
    """One way of running the model: eager in a dtype, or compiled with intfa options."""

    name: str
    dtype: torch.dtype = torch.float32
    options: dict | None = None
    calibrated: bool = False


WAYS = (
    Way("eager bf16", torch.bfloat16),
    Way("eager fp16", torch.float16),
    Way("intfa default (half-INT8)", options={}),
    Way("intfa full INT8 (pv_format=int8)", options={"pv_format": "int8"}),
    Way("intfa full INT8, p_scale=row_block", options={"pv_format": "int8", "p_scale": "row_block"}),
    Way("intfa full INT8, smooth_q + hadamard", options={"pv_format": "int8", "smooth_q": True,
                                                          "qk_rotation": "hadamard"}),
    Way("intfa pv_format=fp8", options={"pv_format": "fp8"}),
    Way("intfa qk_granularity=per_block", options={"qk_granularity": "per_block"}),
    Way("intfa qk_granularity=per_head", options={"qk_granularity": "per_head"}),
    Way("intfa smooth_k", options={"smooth_k": True}),
    Way("intfa smooth_q", options={"smooth_q": True}),
    Way("intfa qk_rotation=hadamard", options={"qk_rotation": "hadamard"}),
    Way("intfa smooth_q + smooth_k", options={"smooth_q": True, "smooth_k": True}),
    Way("intfa qk_bits=4", options={"qk_bits": 4}),
    Way("intfa static scales (calibrated)", options={}, calibrated=True),
)
"""Every way the results file lists; "intfa" ways change one option from the default (half-INT8: INT8 Q·Kᵀ,
16-bit P·V) unless they name pv_format=int8."""


def embeddings(run: Callable[[dict], torch.Tensor], batches: list[dict]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([run(batch).float() for batch in batches])


def neighbour_metrics(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 agreement and mean Spearman of the similarity rows, each query against all others, and the
    mean distance of the (unit) embeddings from fp32's: continuous, so steadier than the shares, which move by
    whole queries."""
    n = reference.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    sims = [(e.double() @ e.double().T).masked_fill(eye, float("-inf")) for e in (reference, candidate)]
    top_ref, top_cand = (s.topk(5, dim=-1).indices for s in sims)
    top1 = (top_ref[:, 0] == top_cand[:, 0]).double().mean().item()
    top5 = torch.tensor([set(a.tolist()) == set(b.tolist()) for a, b in zip(top_ref, top_cand, strict=True)])
    off_diagonal = ~eye
    ranks = [s[off_diagonal].view(n, n - 1).argsort(-1).argsort(-1).double() for s in sims]
    centred = [r - r.mean(-1, keepdim=True) for r in ranks]
    spearman = (centred[0] * centred[1]).sum(-1) / (centred[0].norm(dim=-1) * centred[1].norm(dim=-1))
    error = (candidate.double() - reference.double()).norm(dim=-1).mean().item()
    return {"top1": top1, "top5": top5.double().mean().item(), "spearman": spearman.mean().item(), "error": error}


@dataclass(frozen=True)
class Task:
    """What one task runs: a model in fp32, a fresh copy for the eager 16-bit ways, the batches, what to compare
    (``output``) and how (``metrics``), and how its results file names and explains them."""

    name: str
    model: torch.nn.Module
    fresh: Callable[[], torch.nn.Module]
    batches: list[dict]
    output: Callable[[torch.nn.Module, dict], torch.Tensor]
    metrics: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    title: str
    details: tuple[str, ...]


def search_task(limit: int | None) -> Task:
    """Semantic search with the real all-MiniLM-L6-v2 over the corpus."""
    sentences = python_reference_sentences(limit)
    model, tokenizer = load_minilm()
    batches = [dict(tokenizer(sentences[i:i + BATCH], padding="max_length", truncation=True,
                              max_length=MAX_TOKENS, return_tensors="pt")) for i in range(0, len(sentences), BATCH)]
    return Task(
        "search", model, lambda: load_minilm()[0], batches, embed, neighbour_metrics,
        "Semantic search with all-MiniLM-L6-v2: agreement with eager fp32",
        (f"corpus: {len(sentences)} sentences of CPython's pydoc_data/topics.py (PSF License), padded to "
         f"{MAX_TOKENS} tokens, batches of {BATCH}",
         "top1 / top5: share of queries whose nearest neighbour / five nearest neighbours (as a set) match eager "
         "fp32's; spearman: rank correlation of each query's similarity row with fp32's, mean over queries",
         f"per_block Q/K scales cover 128 queries and 64 keys: at {MAX_TOKENS} tokens they are per_head's"))


DECODER_SEQUENCES, DECODER_TOKENS = 8, 256


def _llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=1024, max_position_embeddings=DECODER_TOKENS)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def next_token_metrics(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """Top-1 agreement of the next-token prediction at every position, and the mean KL(fp32 ‖ way) in nats."""
    log_ref, log_cand = (torch.log_softmax(x.double(), dim=-1) for x in (reference, candidate))
    top1 = (reference.argmax(-1) == candidate.argmax(-1)).double().mean().item()
    kl = (log_ref.exp() * (log_ref - log_cand)).sum(-1).mean().item()
    return {"top1": top1, "kl": kl}


def decoder_task(limit: int | None) -> Task:
    """Next-token prediction of a LLaMA-shaped model (random weights, GQA 8/2, causal) on random tokens."""
    sequences = min(limit or DECODER_SEQUENCES, DECODER_SEQUENCES)
    ids = torch.randint(0, 1024, (sequences, DECODER_TOKENS), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": ids[i:i + 4]} for i in range(0, sequences, 4)]
    return Task(
        "decoder", _llama(), _llama, batches, lambda model, batch: model(**batch).logits.flatten(0, 1),
        next_token_metrics, "Next-token prediction of a LLaMA-shaped model: agreement with eager fp32",
        (f"model: LlamaForCausalLM, random weights (seed 0), hidden 256, 4 layers, 8 query / 2 KV heads (GQA), "
         f"vocabulary 1024, SDPA attention; {sequences} sequences of {DECODER_TOKENS} random tokens "
         f"({sequences * DECODER_TOKENS} positions), causal",
         "top1: share of positions whose most likely next token matches eager fp32's; kl: mean KL(fp32 ‖ way) "
         "of the next-token distributions, nats"))


@dataclass(frozen=True)
class ErrorSource:
    """Which operands of attention a decomposition run quantizes as full INT8 does (the others stay fp32)."""

    name: str
    qk: bool = True
    v: bool = True
    p_levels: int = 127
    """Steps of P over [0, 1]: 127 is INT8's fixed 1/127; 255 would be an unsigned byte's; 0 keeps P exact."""


ERROR_SOURCES = (
    ErrorSource("full INT8 (all quantized)"),
    ErrorSource("Q/K only (P, V exact)", v=False, p_levels=0),
    ErrorSource("V only (Q/K, P exact)", qk=False, p_levels=0),
    ErrorSource("P only (Q/K, V exact)", qk=False, v=False),
    ErrorSource("all but P (P exact)", p_levels=0),
    ErrorSource("all but V (V exact)", v=False),
    ErrorSource("all, P in 255 steps", p_levels=255),
    ErrorSource("all, P in 511 steps", p_levels=511),
)


def simulated_attention(source: ErrorSource) -> Callable:
    """SDPA with the operands ``source`` names quantized as the kernel quantizes them (Q/K per token, V per
    channel, P against the row maximum with the fixed step), the rest exact. Exact for a row of one key block
    (the search task's 64 tokens fit one 128-key block), which is where it is used."""
    from intfa_compile.quantize import quantize_qk, quantize_v

    def dequantized(pair: tuple[torch.Tensor, torch.Tensor], axis: int) -> torch.Tensor:
        values, scale = pair
        return values.float() * scale.unsqueeze(axis)

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        q, k, v = query.float(), key.float(), value.float()
        if source.qk:
            q, k = dequantized(quantize_qk(q), -1), dequantized(quantize_qk(k), -1)
        if source.v:
            v = dequantized(quantize_v(v), -2)
        scores = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores + attn_mask
        p = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        row_sum = p.sum(dim=-1, keepdim=True)
        if source.p_levels:
            p = torch.round(p * source.p_levels) / source.p_levels
        return ((p @ v) / row_sum).to(query.dtype)

    return attention


def decompose(limit: int | None, out_dir: Path) -> None:
    """Where full INT8's error on the search task comes from: each operand's quantization alone, and finer P."""
    from unittest import mock

    task = search_task(limit)
    reference = embeddings(lambda batch: task.output(task.model, batch), task.batches)
    low = task.fresh().to(torch.bfloat16)
    rows = [("eager bf16 (whole model)",
             task.metrics(reference, embeddings(lambda batch: task.output(low, batch), task.batches)), "")]
    for source in ERROR_SOURCES:
        with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", simulated_attention(source)):
            result = embeddings(lambda batch: task.output(task.model, batch), task.batches)
        rows.append((source.name, task.metrics(reference, result), ""))
    for name, metrics, _ in rows:
        print(f"{name:38s} " + "  ".join(f"{k} {_number(k, v)}" for k, v in metrics.items()), flush=True)
    info = RunInfo("cpu")
    lines = info.header("Where full INT8's error comes from: semantic search with all-MiniLM-L6-v2", "fp32",
                        *task.details, "eager fp32 model with SDPA replaced by attention whose named operands are "
                        "quantized as the kernel quantizes them (one key block per row, as the kernel at 64 tokens)")
    names = list(rows[0][1])
    lines += ["", "| quantized | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += ["| " + " | ".join([name, *(_number(k, m[k]) for k in names)]) + " |" for name, m, _ in rows]
    path = info.write(out_dir, "task-accuracy-sources-", "\n".join(lines) + "\n", smoke=limit is not None)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("search", "decoder"), default="search")
    parser.add_argument("--limit", type=int, default=None,
                        help="use the first N sentences of the corpus (search) or N sequences (decoder)")
    parser.add_argument("--ways", nargs="+", default=None, metavar="NAME",
                        help="run only the ways whose names contain one of these words (default: all)")
    parser.add_argument("--decompose", action="store_true",
                        help="search task: the error of each operand's quantization alone, simulated in eager mode")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.decompose:
        decompose(args.limit, args.out)
        return
    ways = [way for way in WAYS if args.ways is None or any(word in way.name for word in args.ways)]

    import logging

    logging.getLogger("intfa_compile").setLevel(logging.ERROR)
    task = (search_task if args.task == "search" else decoder_task)(args.limit)
    model = task.model
    reference = embeddings(lambda batch: task.output(model, batch), task.batches)

    rows = []
    for way in ways:
        torch._dynamo.reset()
        if way.options is None:
            low = task.fresh().to(way.dtype)
            result = embeddings(lambda batch, low=low: task.output(low, batch), task.batches)
            sites = ""
        else:
            options = dict(way.options)
            if way.calibrated:
                prepared = intfa_compile.prepare(model, options=options)
                calibration = task.batches[: max(1, len(task.batches) // 4)]
                embeddings(lambda batch, p=prepared: task.output(p, batch), calibration)
                options["scales"] = intfa_compile.collect(prepared)
                torch._dynamo.reset()
            compiled = torch.compile(model, backend="intfa", options=options)
            with collect_sites() as records, bypassing_compile_caches():  # a cache hit would report no site
                result = embeddings(lambda batch, c=compiled: task.output(c, batch), task.batches)
            sites = f"{sum(r.outcome != 'left alone' for r in records)}/{len(records)}"
        metrics = task.metrics(reference, result)
        rows.append((way.name, metrics, sites))
        print(f"{way.name:38s} " + "  ".join(f"{k} {_number(k, v)}" for k, v in metrics.items())
              + f"  sites {sites}", flush=True)

    info = RunInfo("cpu")
    lines = info.header(task.title, "fp32 (model), per way", *task.details,
                        "static scales: calibrated on the first quarter of the batches (minmax observer)",
                        "8-bit sites: per graph compiled (a last, smaller batch compiles a second graph)")
    names = list(rows[0][1]) if rows else []
    lines += ["", "| way | " + " | ".join(names) + " | 8-bit sites / sites |",
              "|---|" + "---|" * len(names) + "---|"]
    lines += ["| " + " | ".join([name, *(_number(k, m[k]) for k in names), sites]) + " |" for name, m, sites in rows]
    partial = args.limit is not None or args.ways is not None
    prefix = "task-accuracy-" if task.name == "search" else f"task-accuracy-{task.name}-"
    path = info.write(args.out, prefix, "\n".join(lines) + "\n", smoke=partial)
    _plot(rows, path.with_suffix(".png"), task.title)
    print(f"wrote {path}")


def _number(metric: str, value: float) -> str:
    return {"kl": f"{value:.2e}", "spearman": f"{value:.5f}", "error": f"{value:.5f}"}.get(metric, f"{value:.4f}")


def _plot(rows: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _, _ in rows]
    shares = [key for key in ("top5", "top1") if rows and key in rows[0][1]]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.5))
    y = range(len(rows))
    height = 0.8 / len(shares)
    for index, key in enumerate(shares):
        offset = (index - (len(shares) - 1) / 2) * height
        ax.barh([i - offset for i in y], [m[key] for _, m, _ in rows], height=height,
                label=f"{key.replace('top', 'top-')} agreement")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    low = min(m[key] for _, m, _ in rows for key in shares)
    ax.set_xlim(max(0.0, low - 0.02), 1.0)
    ax.set_xlabel("agreement with eager fp32")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
