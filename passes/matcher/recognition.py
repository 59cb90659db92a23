"""What the walks found, as one attention site: the products' operands as (B, H, N, D) views, the scale, the
mask combined from the added terms and drops."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..attention_site import AttentionSite
from ..causal_masks import fold_causal_mask
from ..symbolic_sizes import SizeNodes, is_symbolic
from .graph_ops import NotAttention, op_name
from .layout_probe import LayoutProbe, is_row_major
from .score_walk import probs_to_value_product, read_scores, repeated_heads, same_layout, same_shape
from .softmax_forms import Softmax, softmax_at

aten = torch.ops.aten


@dataclass(frozen=True)
class Recognised:
    """Attention found around one softmax: the site the guards judge and what its replacement needs."""

    site: AttentionSite
    value_product: torch.fx.Node
    scale: float
    lead: tuple[int, ...]
    """The batch dimensions the kernel runs (e.g. (B, H)): the softmax's, or those of a (B, H, Nq, Nk) view of the
    scores a term was added in while the softmax and the products see (B·H); their product is the products'
    batch."""
    additive: tuple[tuple[torch.fx.Node, float, bool], ...]
    """(term, coefficient, added with the batch as one dimension, (B·H, Nq, Nk), where the kernel runs (B, H)
    apart: ``combined_mask`` lays it out as (B, H, Nq, Nk))."""
    drops: tuple[tuple[torch.fx.Node, bool, bool], ...]
    """(boolean mask, True if True drops, applied with the batch as one dimension)."""
    kv_heads_found: tuple[bool, bool] = (False, False)
    """Whether the site's key and value are the un-repeated (B, Hk, N, D) tensors behind repeated heads (GQA)
    rather than the products' operands."""
    factors: tuple[tuple[torch.fx.Node, int], ...] = ()
    """Parts of the scale known only at run time: (node, +1 multiplies / −1 divides)."""
    region: frozenset[torch.fx.Node] = frozenset()
    """The nodes from Q·Kᵀ to P·V that the rewrite removes."""

    @property
    def inputs(self) -> list[torch.fx.Node]:
        """The nodes the replacement reads: q, k, v, the terms of the mask (unless folded into causality) and
        the run-time scale factors."""
        inputs = [self.site.query, self.site.key, self.site.value]
        if self.site.attn_mask is not None and not self.site.is_causal:
            inputs += [t for t, _, _ in self.additive] + [m for m, _, _ in self.drops]
        return inputs + [node for node, _ in self.factors]

    def symbolic_sizes(self) -> list[torch.SymInt]:
        """The symbolic sizes the replacement needs beyond its inputs' shapes: the batch dimensions and the
        output's shape (distinct by value)."""
        heads = heads_layout(self.lead, bool(self.additive or self.drops))
        sizes: list[torch.SymInt] = []
        for size in (*heads, *self.lead, *self.value_product.meta["val"].shape):
            if is_symbolic(size) and not any(statically_known_true(size == seen) for seen in sizes):
                sizes.append(size)
        return sizes


def heads_layout(lead: tuple[int, ...], masked: bool) -> tuple[int, int]:
    """(B, H) the kernel runs the softmax's batch dimensions as."""
    if len(lead) == 2:
        return lead
    if len(lead) < 2:
        return (1, math.prod(lead))
    if masked:
        raise NotAttention(f"the scores have {len(lead)} batch dimensions and a mask; the kernel takes two")
    return (math.prod(lead[:-1]), lead[-1])


def combined_mask(additive: Sequence[tuple[torch.Tensor, float, bool]],
                  drops: Sequence[tuple[torch.Tensor, bool, bool]], lead: tuple[int, ...], n_q: Any, n_k: Any,
                  dtype: torch.dtype) -> torch.Tensor | None:
    """One mask of (B, H, Nq, Nk)-broadcastable shape equal to the terms the scores received: the additive
    terms summed (a boolean term adds 0 or 1, as ``scores + mask`` does), dropped positions at −inf, or a
    boolean keep-mask where there are only drops. Runs on fake values (the site's shapes) and in the traced
    replacement alike. A term added with the batch as one dimension, (B·H, Nq, Nk), is laid out as
    (B, H, Nq, Nk) (``lead``: the kernel's batch dimensions); with fewer than two batch dimensions the frames are
    one (the kernel runs them as (1, B·H) or (1, 1))."""

    def in_kernel_frame(term: torch.Tensor, flat: bool) -> torch.Tensor:
        if flat and len(lead) == 2:
            return term.expand(math.prod(lead), n_q, n_k).reshape(*lead, n_q, n_k)
        return term

    total = None
    for term, coefficient, flat in additive:
        term = in_kernel_frame(term, flat)
        if term.dtype == torch.bool:
            term = term.to(dtype)
        if coefficient != 1.0:
            term = term * coefficient
        total = term if total is None else total + term
    keep = None
    for mask, true_drops, flat in drops:
        mask = in_kernel_frame(mask, flat)
        kept = ~mask if true_drops else mask
        keep = kept if keep is None else keep & kept
    if keep is None:
        return total
    if total is None:
        return keep
    return total.masked_fill(~keep, float("-inf"))


def recognise(node: torch.fx.Node, fake_mode: Any) -> Recognised | None:
    """The attention whose softmax ends at ``node``, or None if ``node`` ends no softmax; raises ``NotAttention``
    (with the reason) for a softmax whose surroundings are not attention the op can take."""
    softmax = softmax_at(node)
    if softmax is None:
        return None
    scores, probe = read_scores(softmax, fake_mode)
    product_shape = tuple(scores.product.meta["val"].shape)
    final = tuple(probe.tensor.shape)
    if not probe.row_major() or not same_shape(final[-2:], product_shape[-2:]):
        raise NotAttention("the softmax does not run over each query's keys as Q·Kᵀ laid them out")
    lead = final[:-2]
    value_product, walked = probs_to_value_product(softmax, fake_mode, lead, product_shape)
    lead = tuple(lead)
    if scores.product.target is aten.baddbmm.default:
        query, key_t = scores.product.args[1], scores.product.args[2]
    else:
        query, key_t = scores.product.args[0], scores.product.args[1]
    value = value_product.args[1]
    key_kv = repeated_heads(key_t, lead, True, fake_mode)
    value_kv = repeated_heads(value, lead, False, fake_mode) if key_kv is not None else None
    if value_kv is None:
        key_kv = None  # both or neither: the kernel takes K and V with the same heads
    final_layout, product_layout = probe.layout(), LayoutProbe(product_shape, fake_mode).layout()
    met = [at for _, _, at in scores.additive] + [at for _, _, at in scores.drops]
    heads_views = {id(at): _heads_view(at, product_shape) for at in met}
    softmax_lead = lead
    if len(lead) < 2:
        lead = next((view for view in heads_views.values() if view is not None), lead)

    def flat(at: tuple) -> bool:
        """Whether a term met the scores with the batch as one dimension where the kernel runs two (it met them as
        the softmax reads them, as Q·Kᵀ made them, or as the (B, H, Nq, Nk) view the kernel's batch came from)."""
        if same_layout(at, final_layout):
            frame = softmax_lead
        elif same_layout(at, product_layout):
            frame = product_shape[:-2]
        else:
            frame = heads_views[id(at)]
        if frame is not None and same_shape(frame, lead):
            return False
        if frame is not None and len(frame) <= 1 and len(lead) == 2:
            return True
        raise NotAttention("a term meets the scores in a layout that is neither Q·Kᵀ's nor the softmax's")

    additive = tuple((term, coefficient, flat(at)) for term, coefficient, at in scores.additive)
    drops = tuple((mask, true_drops, flat(at)) for mask, true_drops, at in scores.drops)
    heads = heads_layout(lead, bool(additive or drops))
    with fake_mode:
        q_val, kt_val, v_val = (n.meta["val"] for n in (query, key_t, value))
        q4 = q_val.reshape(*heads, *q_val.shape[-2:])
        if key_kv is not None:
            k4, v4 = key_kv.meta["val"], value_kv.meta["val"]
        else:
            k4 = kt_val.transpose(-1, -2).reshape(*heads, kt_val.shape[-1], kt_val.shape[-2])
            v4 = v_val.reshape(*heads, *v_val.shape[-2:])
        mask4 = combined_mask([(t.meta["val"], c, p) for t, c, p in additive],
                              [(m.meta["val"], d, p) for m, d, p in drops], lead, q4.shape[-2], k4.shape[-2],
                              q4.dtype)
    terms = [t for t, _, _ in additive] + [m for m, _, _ in drops]
    form = _describe(scores.product, softmax, additive, drops, key_kv is not None)
    if key_kv is not None:
        key_t, value = key_kv, value_kv
    site = AttentionSite(anchor=value_product, form=form, query=query, key=key_t, value=value,
                         attn_mask=terms[0] if terms else None, is_causal=False, scale=scores.scale,
                         values=(q4, k4, v4, mask4))
    if len(terms) == 1 and not (additive and (additive[0][1] != 1.0 or additive[0][2])) and not (
            drops and drops[0][2]):
        site = fold_causal_mask(site, drops=bool(drops) and drops[0][1])
    region = frozenset({*scores.region, *softmax.inner, softmax.probs, *walked, value_product})
    found = Recognised(site, value_product, scores.scale, lead, additive, drops,
                       (key_kv is not None, value_kv is not None), tuple(scores.factors), region)
    if not SizeNodes(node.graph, found.inputs).readable(found.symbolic_sizes()):
        raise NotAttention("a symbolic size of the attention (its batch or head count) is held by no tensor the "
                           "INT8 op reads")
    return found


def _heads_view(at: tuple, product_shape: tuple) -> tuple | None:
    """(B, H) where ``at`` (a ``LayoutProbe.layout``) is Q·Kᵀ viewed row-major as (B, H, Nq, Nk), as causal-LM code
    that adds its mask between (B·H) products lays the scores out; else None."""
    sizes = tuple(size for size, _ in at)
    if len(sizes) != 4 or not same_shape(sizes[-2:], product_shape[-2:]):
        return None
    if not statically_known_true(sizes[0] * sizes[1] == math.prod(product_shape[:-2])):
        return None
    return sizes[:2] if is_row_major(at) else None


def _describe(product: torch.fx.Node, softmax: Softmax, additive: Sequence, drops: Sequence,
              repeated_heads: bool) -> str:
    parts = [op_name(product), "decomposed softmax" if softmax.inner else op_name(softmax.probs)]
    if repeated_heads:
        parts.append("repeated KV heads")
    if additive:
        parts.append(f"{len(additive)} additive term{'s' if len(additive) > 1 else ''}")
    if drops:
        parts.append("filled mask")
    return f"hand-written ({', '.join(parts)})"
