"""Rewrite scaled-dot-product attention in Inductor's post-grad graph into INT-FlashAttention.

Each aten form of SDPA that a device produces (``_scaled_dot_product_flash_attention_for_cpu``,
``_scaled_dot_product_flash_attention``, ``_scaled_dot_product_efficient_attention``,
``_scaled_dot_product_cudnn_attention``) is matched. A site the INT8 kernel can compute is
replaced by per-token quantization of Q and K, per-channel quantization of V (plain aten ops,
which Inductor fuses with their neighbours) and ``intfa::int8_attention``; any other stays as it
was, with its reason recorded (``rewrite.decide``).
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import torch
from torch._inductor.pattern_matcher import (
    MULTIPLE,
    CallFunction,
    CallFunctionVarArgs,
    Match,
    PatternMatcherPass,
    register_graph_pattern,
)

from .attention_site import AttentionSite
from .causal_masks import fold_causal_mask
from .context import CompileContext
from .rewrite import int8_attention

aten = torch.ops.aten

# aten SDPA forms and the name their schema gives the mask.
_SDPA_MASK_ARG = {
    "_scaled_dot_product_flash_attention_for_cpu": "attn_mask",
    "_scaled_dot_product_flash_attention": None,
    "_scaled_dot_product_efficient_attention": "attn_bias",
    "_scaled_dot_product_cudnn_attention": "attn_bias",
}
SDPA_OPS = {
    getattr(aten, name).default: mask_arg for name, mask_arg in _SDPA_MASK_ARG.items() if hasattr(aten, name)
}


def _bind_arguments(node: torch.fx.Node) -> dict[str, Any]:
    schema = node.target._schema
    bound: dict[str, Any] = {}
    for index, argument in enumerate(schema.arguments):
        if index < len(node.args):
            bound[argument.name] = node.args[index]
        elif argument.name in node.kwargs:
            bound[argument.name] = node.kwargs[argument.name]
        else:
            bound[argument.name] = argument.default_value if argument.has_default_value() else None
    return bound


def sdpa_site(output_getitem: torch.fx.Node) -> AttentionSite:
    """The site of ``getitem(sdpa, 0)``, whichever aten form the SDPA node is; a mask that only says
    "causal" (``causal_lower_right``, ``tril(ones)``) becomes ``is_causal`` with its diagonal offset."""
    node = output_getitem.args[0]
    bound = _bind_arguments(node)
    mask_arg = SDPA_OPS[node.target]
    site = AttentionSite(
        anchor=output_getitem,
        form=f"sdpa ({node.target.__name__.split('.')[0]})",
        query=bound["query"],
        key=bound["key"],
        value=bound["value"],
        attn_mask=bound.get(mask_arg) if mask_arg else None,
        is_causal=bool(bound.get("is_causal")),
        scale=bound.get("scale"),
        dropout_p=float(bound.get("dropout_p") or 0.0),
        used_for_backward=any(user is not output_getitem for user in node.users),
    )
    return fold_causal_mask(site)


def _rewrite(context: CompileContext, match: Match, *args: Any, **kwargs: Any) -> None:
    site = sdpa_site(match.output_node())
    if not context.decide(site):
        return
    settings, site_key = context.settings, context.site_key(site)
    is_causal, causal_offset, window_left = site.is_causal, site.causal_offset, site.window_left
    masked = site.attn_mask is not None
    # A scale computed from symbolic sizes is a graph value: an input of the replacement like the tensors.
    scale_node = site.scale if isinstance(site.scale, torch.fx.Node) else None

    def replacement(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *rest: Any) -> torch.Tensor:
        attn_mask = rest[0] if masked else None
        scale = rest[-1] if scale_node is not None else site.scale
        return int8_attention(settings, site_key, query, key, value, attn_mask, is_causal, scale,
                              causal_offset if not masked else 0, window_left if not masked else -1)

    inputs = [site.query, site.key, site.value] + ([site.attn_mask] if masked else []) + (
        [scale_node] if scale_node is not None else [])
    try:
        match.replace_by_example(replacement, inputs)
    except Exception as error:  # the replacement is traced before the graph changes: nothing to undo
        context.rewrite_failed(site, error)


def sdpa_patterns(context: CompileContext) -> PatternMatcherPass:
    """A pattern pass that rewrites ``getitem(<any SDPA form>, 0)`` under ``context`` (one per pass run: the
    handler holds the compile's context)."""
    patterns = PatternMatcherPass(pass_name="intfa_sdpa_to_int8")
    sdpa = CallFunctionVarArgs(list(SDPA_OPS), users=MULTIPLE)
    register_graph_pattern(CallFunction(operator.getitem, sdpa, 0), pass_dict=patterns)(
        functools.partial(_rewrite, context))
    return patterns
