"""The structural matcher: attention recognised by what it computes, in whatever style it was written.

A softmax over the last dimension whose input is a product Q·Kᵀ (``bmm``, ``baddbmm`` or ``mm``, as
``matmul``, ``einsum`` and ``baddbmm`` all reach the graph) and whose output is the left operand of a
product with V is attention. Between the products and the softmax this module walks through what does
not change the meaning, and reads what does:

- layout ops (views, reshapes, permutes, (un)squeezes, no-op expands), clones and casts. Their effect on
  which score lands where is checked, not assumed: the walk replays them on a probe tensor whose strides
  map each position back to the product's (batch, query, key) element, and accepts only layouts where
  the softmax runs over the keys of each query of each batch, in the product's order (``LayoutProbe``);
- the scale: multiplications and divisions by a number (a Python float or a one-element constant);
  ``baddbmm``'s ``alpha``; a scale on Q or K needs no reading (per-token quantization absorbs it);
- additive terms (masks, position biases such as T5's or ALiBi's; ``baddbmm``'s input times ``beta``),
  and fills of dropped positions (``where``/``masked_fill`` with −inf or a very negative number), met in the
  softmax's layout, in the product's, or in a row-major (B, H, Nq, Nk) view of (B·H) products (as causal-LM
  code adds its mask; the kernel then runs (B, H) from that view).

What it recognises becomes one ``AttentionSite`` over (B, H, N, D) views of the products' operands, which
the guards, the causal-mask folding and the rewrite take like any other site. It runs before Inductor's
own pattern passes, so what it covers does not depend on Inductor's attention fusion.

Modules: ``graph_ops`` (the op sets walked through), ``softmax_forms``, ``layout_probe``, ``score_walk`` (the walks
and reads between the products and the softmax), ``recognition`` (one ``AttentionSite``), ``replacement`` (the
rewrite and the pass).
"""

from .recognition import Recognised, recognise
from .replacement import rewrite_attention
from .softmax_forms import Softmax, softmax_at

__all__ = ["Recognised", "Softmax", "recognise", "rewrite_attention", "softmax_at"]
