"""Real-task accuracy: semantic search with the real all-MiniLM-L6-v2, each configuration against eager fp32.

Cosine similarity of embeddings hides what users see; this measures what they see. Every sentence of a corpus
is embedded (mean pooling, L2 normalised, as sentence-transformers does) and used as a query against all the
others. For each way of running the model we compare with eager fp32:

- top-1 agreement: the share of queries whose nearest neighbour is the same;
- top-5 agreement: the share of queries whose five nearest neighbours are the same set;
- Spearman: the rank correlation of each query's similarity scores with fp32's, averaged over queries.

Ways of running it: eager bf16 and eager fp16 (the whole model in 16-bit: the bar a user compares with), and
``torch.compile(model, backend="intfa")`` under each configuration of ours (everything else fp32).

Corpus: the English sentences of the Python Language Reference and Library topics that ship with CPython
(``pydoc_data/topics.py``, © Python Software Foundation, PSF License), split at sentence ends and filtered to
prose (no code, 40–200 characters). Nothing is downloaded.

    python benchmarks/task_accuracy.py               # the whole corpus (about 900 sentences)
    python benchmarks/task_accuracy.py --limit 64 --ways bf16 default    # a quick run

Writes ``benchmarks/results/task-accuracy-<device>-<date>.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from results_file import RunInfo  # noqa: E402

import intfa_compile  # noqa: E402
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
    Way("intfa default (full INT8)", options={}),
    Way("intfa half-INT8 (pv_format=fp16)", options={"pv_format": "fp16"}),
    Way("intfa p_scale=row_block", options={"p_scale": "row_block"}),
    Way("intfa pv_format=fp8", options={"pv_format": "fp8"}),
    Way("intfa qk_granularity=per_block", options={"qk_granularity": "per_block"}),
    Way("intfa qk_granularity=per_head", options={"qk_granularity": "per_head"}),
    Way("intfa smooth_k", options={"smooth_k": True}),
    Way("intfa qk_bits=4", options={"qk_bits": 4}),
    Way("intfa static scales (calibrated)", options={}, calibrated=True),
)


def embeddings(run: Callable[[dict], torch.Tensor], batches: list[dict]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([run(batch).float() for batch in batches])


def neighbour_metrics(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 agreement and mean Spearman of the similarity rows, each query against all others."""
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
    return {"top1": top1, "top5": top5.double().mean().item(), "spearman": spearman.mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="use the first N sentences of the corpus")
    parser.add_argument("--ways", nargs="+", default=None, metavar="NAME",
                        help="run only the ways whose names contain one of these words (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    ways = [way for way in WAYS if args.ways is None or any(word in way.name for word in args.ways)]

    import logging

    logging.getLogger("intfa_compile").setLevel(logging.ERROR)
    sentences = python_reference_sentences(args.limit)
    model, tokenizer = load_minilm()
    batches = [dict(tokenizer(sentences[i:i + BATCH], padding="max_length", truncation=True,
                              max_length=MAX_TOKENS, return_tensors="pt")) for i in range(0, len(sentences), BATCH)]
    reference = embeddings(lambda batch: embed(model, batch), batches)

    rows = []
    for way in ways:
        torch._dynamo.reset()
        if way.options is None:
            low = load_minilm()[0].to(way.dtype)
            result = embeddings(lambda batch, low=low: embed(low, batch), batches)
            sites = ""
        else:
            options = dict(way.options)
            if way.calibrated:
                prepared = intfa_compile.prepare(model, options=options)
                embeddings(lambda batch, p=prepared: embed(p, batch), batches[: max(1, len(batches) // 4)])
                options["scales"] = intfa_compile.collect(prepared)
                torch._dynamo.reset()
            compiled = torch.compile(model, backend="intfa", options=options)
            with collect_sites() as records, bypassing_compile_caches():  # a cache hit would report no site
                result = embeddings(lambda batch, c=compiled: embed(c, batch), batches)
            sites = f"{sum(r.outcome != 'left alone' for r in records)}/{len(records)}"
        metrics = neighbour_metrics(reference, result)
        rows.append((way.name, metrics, sites))
        print(f"{way.name:38s} top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  "
              f"Spearman {metrics['spearman']:.5f}  sites {sites}", flush=True)

    info = RunInfo("cpu")
    lines = info.header(
        "Semantic search with all-MiniLM-L6-v2: agreement with eager fp32", "fp32 (model), per way",
        f"corpus: {len(sentences)} sentences of CPython's pydoc_data/topics.py (PSF License), padded to "
        f"{MAX_TOKENS} tokens, batches of {BATCH}",
        "top-1 / top-5: share of queries whose nearest neighbour / five nearest neighbours (as a set) match eager "
        "fp32's; Spearman: rank correlation of each query's similarity row with fp32's, mean over queries",
        "static scales: calibrated on the first quarter of the batches (minmax observer)",
        f"per_block Q/K scales cover 128 queries and 64 keys: at {MAX_TOKENS} tokens they are per_head's",
        "8-bit sites: per graph compiled (a last, smaller batch compiles a second graph)",
    )
    lines += ["", "| way | top-1 | top-5 | Spearman | 8-bit sites / sites (6 layers per graph compiled) |",
              "|---|---|---|---|---|"]
    lines += [f"| {name} | {m['top1']:.4f} | {m['top5']:.4f} | {m['spearman']:.5f} | {sites} |"
              for name, m, sites in rows]
    partial = args.limit is not None or args.ways is not None
    path = info.write(args.out, "task-accuracy-", "\n".join(lines) + "\n", smoke=partial)
    _plot(rows, path.with_suffix(".png"))
    print(f"wrote {path}")


def _plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _, _ in rows]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [m["top5"] for _, m, _ in rows], height=0.4, label="top-5 agreement")
    ax.barh([i - 0.2 for i in y], [m["top1"] for _, m, _ in rows], height=0.4, label="top-1 agreement")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    low = min(min(m["top5"], m["top1"]) for _, m, _ in rows)
    ax.set_xlim(max(0.0, low - 0.02), 1.0)
    ax.set_xlabel("agreement with eager fp32 (semantic search, all-MiniLM-L6-v2)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
