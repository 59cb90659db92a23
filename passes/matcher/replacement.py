"""The replacement of a recognised site by the INT8 op, and the pass over a graph that finds and rewrites every
site."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch._inductor.pattern_matcher import Arg, Match, MatchContext
from torch.fx.experimental.symbolic_shapes import statically_known_true

from intfa_compile.config import Settings

from ..context import CompileContext
from ..rewrite import int8_attention
from ..symbolic_sizes import SizeNodes, is_symbolic
from .graph_ops import SOFTMAX_OPS, NotAttention, tensor_value
from .recognition import Recognised, combined_mask, heads_layout, recognise

aten = torch.ops.aten
log = logging.getLogger("intfa_compile")


@dataclass(frozen=True)
class SymbolSlot:
    """A symbolic size the traced replacement receives as its input number ``index`` among the sizes."""

    index: int


def replace(graph: torch.fx.Graph, found: Recognised, fake_mode: Any, settings: Settings, site_key: str) -> None:
    """Replace the attention ``found`` describes by the INT8 op, traced and inserted before its P·V product
    (``match_of_node``).

    The replacement is traced on the inputs' fake values; symbolic sizes it needs beyond their shapes (the
    head count of a (B·H, N, D) operand, the output's shape) are inputs too, read from the graph (``SizeNodes``)."""
    site = found.site
    heads = heads_layout(found.lead, bool(found.additive or found.drops))
    masked = site.attn_mask is not None and not site.is_causal
    inputs = found.inputs
    n_tensors, n_terms = 3, len(inputs) - 3 - len(found.factors)
    symbols = found.symbolic_sizes()
    sizes = SizeNodes(graph, inputs)
    size_nodes = [sizes.node(symbol) for symbol in symbols]

    def slots(extents: Sequence[Any]) -> list[Any]:
        """Each extent as a number, or the index of the traced input that stands for it (resolved here: a
        comparison of symbols inside the trace would be traced too)."""
        return [extent if not is_symbolic(extent) else SymbolSlot(next(
            i for i, symbol in enumerate(symbols) if statically_known_true(extent == symbol))) for extent in extents]

    lead_slots, heads_slots = slots(found.lead), slots(heads)
    out_slots = slots(found.value_product.meta["val"].shape)

    def replacement(*args: Any) -> torch.Tensor:
        query, key_t, value = args[:n_tensors]
        terms = args[n_tensors:n_tensors + n_terms]
        factors = args[n_tensors + n_terms:len(inputs)]
        bound = args[len(inputs):]

        def sizes_of(extents: list[Any]) -> tuple[Any, ...]:
            return tuple(bound[e.index] if isinstance(e, SymbolSlot) else e for e in extents)

        lead, batch_heads = sizes_of(lead_slots), sizes_of(heads_slots)
        q4 = query.reshape(*batch_heads, *query.shape[-2:])
        if found.kv_heads_found[0]:
            k4, v4 = key_t, value
        else:
            k4 = key_t.transpose(-1, -2).reshape(*batch_heads, key_t.shape[-1], key_t.shape[-2])
            v4 = value.reshape(*batch_heads, *value.shape[-2:])
        mask = None
        if masked:
            n = len(found.additive)
            mask = combined_mask([(t, c, p) for t, (_, c, p) in zip(terms[:n], found.additive, strict=True)],
                                 [(m, d, p) for m, (_, d, p) in zip(terms[n:], found.drops, strict=True)],
                                 lead, q4.shape[-2], k4.shape[-2], q4.dtype)
        scale: Any = found.scale
        if factors:
            scale = torch.scalar_tensor(found.scale, dtype=torch.float32, device=query.device)
            for factor, (_, power) in zip(factors, found.factors, strict=True):
                part = factor.reshape(()).float() if isinstance(factor, torch.Tensor) else torch.scalar_tensor(
                    factor, dtype=torch.float32, device=query.device)
                scale = scale * part if power > 0 else scale / part
        out = int8_attention(settings, site_key, q4, k4, v4, mask, site.is_causal, scale, site.causal_offset,
                             site.window_left)
        return out.reshape(sizes_of(out_slots))

    with fake_mode:
        match_of_node(graph, found.value_product).replace_by_example(replacement, inputs + size_nodes)
    sizes.rehome_size_queries(found.region)


def match_of_node(graph: torch.fx.Graph, node: torch.fx.Node) -> Match:
    """An Inductor ``Match`` of the single node a recognised site replaces (its P·V product), so the replacement is
    traced and inserted by Inductor's own ``replace_by_example``, as a pattern pass's would be: every node it adds
    carries the product's stack trace and module path (``nn_module_stack``) and a ``from_node`` record of it, so
    Inductor's provenance tracking and its generated code name the model's line, and ``node`` is erased once
    unused (the rest of the region is dead code, which the pass removes)."""
    pattern = Arg()
    match = Match(MatchContext([pattern], {pattern: node}, graph=graph), pattern)
    match.nodes = [node]
    return match


def rewrite_attention(graph: torch.fx.Graph, context: CompileContext) -> list[tuple[torch.fx.Node, str]]:
    """Rewrite every attention the structure shows to INT8 (where ``decide`` approves); returns the softmax
    nodes that looked like attention but were not, with the reason (for the report of what stayed)."""
    from torch._guards import detect_fake_mode

    declined = []
    for node in list(graph.nodes):
        if node.op != "call_function" or tensor_value(node) is None:
            continue
        if node.target not in SOFTMAX_OPS and node.target not in (aten.div.Tensor, aten.where.self):
            continue
        fake_mode = detect_fake_mode([node.meta["val"]])
        try:
            found = recognise(node, fake_mode)
        except NotAttention as reason:
            declined.append((node, str(reason)))
            continue
        except Exception as error:  # noqa: BLE001 - a bug here must not fail the compile: later stages still try
            log.warning("intfa: the structural matcher failed at %s (%s: %s); left to the other stages",
                        node.name, type(error).__name__, error)
            declined.append((node, f"the structural matcher failed ({type(error).__name__})"))
            continue
        if found is None or not context.decide(found.site):
            continue
        try:
            replace(graph, found, fake_mode, context.settings, context.site_key(found.site))
        except Exception as error:  # noqa: BLE001 - any failure keeps the original attention (or raises)
            context.rewrite_failed(found.site, error)
    return declined
