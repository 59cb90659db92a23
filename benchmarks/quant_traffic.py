"""What 8-bit attention costs outside its kernel: the bytes and kernel launches spent quantizing Q, K, V, for B=4,
H=32, d=128 (a LLaMA-2-7B-shaped attention block, causal) at N = 1k…16k, against the attention kernel's own
predicted time (issue 17). SageAttention's users see this part as "slower than FlashAttention at short lengths".

- **intfa** (half-INT8, the default, and full INT8): counted from Inductor's own scheduler for a real
  ``torch.compile`` of the block (q/k/v projections, rotary embeddings, SDPA, output projection; bf16, CPU): the
  bytes each generated kernel reads and writes (``GraphLowering.count_bytes``, Inductor's figure) and the kernel
  count, minus those of the same block compiled by Inductor alone, leaving out the GEMMs and the attention itself.
  Two lengths fix the per-token slope, from which 1k…16k follow (every quantization kernel is linear in N). These
  are the CPU backend's fusion decisions; the CUDA backend's (Triton) are not checked without a GPU.
- **SageAttention 1.0.6** (``sageattn``, default ``smooth_k=True``, from its source): ``k.mean`` and ``k -= km``
  in eager PyTorch, then its Triton ``quant_per_block_int8_kernel`` once for Q and once for K; V stays fp16.
- **FP8 per-(batch, head) casts** (``benchmarks/fp8_attention.quantize_fp8``, FlashAttention-3's FP8 inputs): an
  amax reduction and a cast for each of Q, K, V, as ``torch.compile`` would fuse them (two kernels per tensor).

Predicted time at the H200's copy bandwidth (4.3 TB/s, ``REFERENCE.md``) against the attention kernel's predicted
time (``pipe_model``'s latest sm_90 results, d = 128, causal: pipes overlapping and serial). A model, not a
timing: no GPU has run any of it.

    python -m benchmarks.quant_traffic
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

import intfa_compile  # noqa: F401  (registers the backend)
from benchmarks.results_file import RunInfo

BATCH, HEADS, HEAD_DIM = 4, 32, 128
LENGTHS = (1024, 2048, 4096, 8192, 16384)
H200_COPY_BYTES_PER_S = 4.3e12
RESULTS = Path(__file__).resolve().parent / "results"


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embeddings as LLaMA applies them (rotate_half form)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class LlamaAttentionBlock(torch.nn.Module):
    """LLaMA's attention: separate q/k/v projections, rotary embeddings on Q and K, causal SDPA, output
    projection."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        width = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (torch.nn.Linear(width, width, bias=False)
                                                              for _ in range(4))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, tokens, width))


@dataclass(frozen=True)
class KernelCounts:
    """One compile's generated (non-extern) kernels, as Inductor's scheduler counts their bytes read and written."""

    all_bytes: int
    all_kernels: int
    quantizing_bytes: int
    """Bytes of the kernels that write an 8-bit tensor (the quantization, with whatever Inductor fused into it) or
    only read what those wrote (copies of the scales)."""
    quantizing_kernels: int


def _kernel_counts(tokens: int, backend: str, options: dict | None, heads: int = HEADS) -> KernelCounts:
    """Compile the block at ``tokens`` (and ``heads``) and count its generated kernels."""
    from torch._inductor.graph import GraphLowering
    from torch._inductor.scheduler import ExternKernelSchedulerNode

    counted: list[KernelCounts] = []
    original = GraphLowering.compile_to_module

    def quantizing_kernels(nodes: list) -> list:
        """Kernels that write INT8 or e4m3, and those that only read what such kernels wrote (the scales' copies)."""
        produced: set[str] = set()
        found = []
        for node in nodes:
            reads = {dependency.name for dependency in node.read_writes.reads}
            eight_bit = any(b.node.get_dtype() in (torch.int8, torch.float8_e4m3fn) for b in node.get_outputs())
            if eight_bit or (reads and reads <= produced):
                found.append(node)
                produced.update(buffer.get_name() for buffer in node.get_outputs())
        return found

    def counting(self):
        module = original(self)
        nodes = [node for node in self.scheduler.nodes if not isinstance(node, ExternKernelSchedulerNode)]
        quantizing = quantizing_kernels(nodes)
        counted.append(KernelCounts(sum(node.get_read_write_buffers_sizes() for node in nodes), len(nodes),
                                    sum(node.get_read_write_buffers_sizes() for node in quantizing),
                                    len(quantizing)))
        return module

    torch._dynamo.reset()
    torch.manual_seed(0)
    block = LlamaAttentionBlock(heads, HEAD_DIM).to(torch.bfloat16).eval()
    x = torch.randn(BATCH, tokens, heads * HEAD_DIM, dtype=torch.bfloat16)
    cos, sin = (torch.randn(tokens, HEAD_DIM, dtype=torch.bfloat16) for _ in range(2))
    compiled = torch.compile(block, backend=backend, options=options) if backend == "intfa" else \
        torch.compile(block, backend=backend)
    # A cached graph skips the scheduler: compile afresh.
    with torch.no_grad(), mock.patch.object(GraphLowering, "compile_to_module", counting), \
            torch._inductor.config.patch(fx_graph_cache=False):
        compiled(x, cos, sin)
    (result,) = counted
    return result


@dataclass(frozen=True)
class Traffic:
    """Quantization traffic per token (all heads of one sequence position, Q, K and V together)."""

    bytes_per_token: float
    """Bytes the quantizing kernels read and write."""
    kernels: int
    net_bytes_per_token: float
    """Bytes added to what the model moves without quantization (negative: fewer)."""
    net_kernels: int


def intfa_traffic(pv_format: str, lengths: tuple[int, int] = (128, 256), heads: int = HEADS) -> Traffic:
    """intfa's quantization of the block under ``pv_format``, from two compiles (slope over N)."""
    ours = [_kernel_counts(tokens, "intfa", {"pv_format": pv_format}, heads) for tokens in lengths]
    alone = [_kernel_counts(tokens, "inductor", None, heads) for tokens in lengths]
    if ours[0].quantizing_kernels != ours[1].quantizing_kernels or ours[0].all_kernels != ours[1].all_kernels:
        raise RuntimeError("the kernels change with the length: not one fusion pattern")
    span = (lengths[1] - lengths[0]) * BATCH
    net = [o.all_bytes - a.all_bytes for o, a in zip(ours, alone, strict=True)]
    return Traffic((ours[1].quantizing_bytes - ours[0].quantizing_bytes) / span, ours[1].quantizing_kernels,
                   (net[1] - net[0]) / span, ours[1].all_kernels - alone[1].all_kernels)


def sage_traffic() -> Traffic:
    """SageAttention 1.0.6's quantization, per token (all heads), from its source: Q read in fp16 and written as
    INT8 with a scale per 128 tokens; K's mean (read), K -= mean (read, write), then K like Q with a scale per 64
    tokens. V untouched (fp16 P·V). Launches: mean, subtract, quantize Q, quantize K."""
    elements = HEADS * HEAD_DIM
    q = elements * (2 + 1) + HEADS * 4 / 128
    k = elements * (2 + 2 + 2 + 2 + 1) + HEADS * 4 / 64
    return Traffic(q + k, 4, q + k, 4)


def fp8_traffic() -> Traffic:
    """Per-(batch, head) FP8 casts of Q, K, V: an amax pass (read 16-bit) and a cast (read 16-bit, write a byte)
    each; two compiled kernels per tensor."""
    moved = 3 * HEADS * HEAD_DIM * (2 + 2 + 1)
    return Traffic(moved, 6, moved, 6)


def attention_seconds(variant: str, tokens: int, serial: bool) -> float | None:
    """The attention kernel's predicted time (causal, d = 128) from the newest sm_90 per-pipe results, or None."""
    files = sorted(RESULTS.glob("pipe-model-sm90-*.json"))
    if not files:
        return None
    from benchmarks import pipe_model

    for row in json.loads(files[-1].read_text()):
        if row["variant"] == variant and row["head_dim"] == HEAD_DIM and row["causal"]:
            cycles = pipe_model.PipeCycles(**row)
            ops = 2 * BATCH * HEADS * tokens * tokens * HEAD_DIM  # causal: half of 4·B·H·N²·d
            return ops / (pipe_model.predicted_tops(cycles, serial=serial) * 1e12)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    paths = {
        "intfa half-INT8 (default)": (intfa_traffic("fp16"), "half-int8"),
        "intfa full INT8": (intfa_traffic("int8"), "full-int8"),
        "intfa INT8 Q·Kᵀ + FP8 P·V": (intfa_traffic("fp8"), "fp8-pv"),
        "SageAttention 1.0.6": (sage_traffic(), "sage-1.0.6"),
        "FP8 per-head casts (FA3-style inputs)": (fp8_traffic(), "fp8-baseline"),
        "16-bit attention (nothing to quantize)": (Traffic(0.0, 0, 0.0, 0), "fp16-baseline"),
    }
    info = RunInfo("cpu")
    lines = info.header("Quantization traffic outside the attention kernel, B=4, H=32, d=128, causal", "bf16",
                        "intfa rows: Inductor's scheduler byte counts for a compiled LLaMA-shaped attention block "
                        "(minus Inductor alone's), slope from N = 128 and 256; Sage and FP8 rows: from their "
                        "source; times: 4.3 TB/s copy bandwidth (H200) and the per-pipe model (no GPU timing)")
    lines += ["", "Per token: bytes of the kernels that quantize (with what is fused into them), and net of what the "
              "model moves without quantization (Inductor alone: its rotary kernel writes 16-bit Q and K for the "
              "attention to read; intfa's quantization kernel computes the rotary embedding itself and writes "
              "bytes instead). The times are for the quantizing kernels' bytes.", "",
              "| path | bytes per token (net) | kernels (net) | N | MB moved | predicted µs | attention kernel µs "
              "(overlap / serial) | quantization share (overlap / serial) |", "|---|---|---|---|---|---|---|---|"]
    records = []
    for name, (traffic, variant) in paths.items():
        per_token = traffic.bytes_per_token
        for tokens in LENGTHS:
            moved = per_token * BATCH * tokens
            seconds = moved / H200_COPY_BYTES_PER_S
            overlap, serial = (attention_seconds(variant, tokens, s) for s in (False, True))
            kernel = f"{overlap * 1e6:.0f} / {serial * 1e6:.0f}" if overlap else "—"
            share = (f"{100 * seconds / (seconds + overlap):.1f}% / {100 * seconds / (seconds + serial):.1f}%"
                     if overlap else "—")
            lines.append(f"| {name} | {per_token:,.0f} ({traffic.net_bytes_per_token:+,.0f}) | {traffic.kernels} "
                         f"({traffic.net_kernels:+d}) | {tokens} | {moved / 1e6:.1f} | "
                         f"{seconds * 1e6:.1f} | {kernel} | {share} |")
            records.append({"path": name, "tokens": tokens, "seconds": seconds, "attention": overlap})
    text = "\n".join(lines) + "\n"
    print(text)
    path = info.write(args.out, "quant-traffic-", text, smoke=False)
    _plot(records, path.with_suffix(".png"))
    print(f"wrote {path}")


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name in dict.fromkeys(record["path"] for record in records):
        rows = [r for r in records if r["path"] == name]
        axis.plot([r["tokens"] for r in rows], [100 * r["seconds"] / (r["seconds"] + r["attention"])
                                                if r["attention"] else float("nan") for r in rows],
                  marker="o", label=name)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("sequence length N (B=4, H=32, d=128, causal)")
    axis.set_ylabel("quantization / (quantization + attention), %")
    axis.set_title("Predicted share of quantization traffic (H200 model, pipes overlapping)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
