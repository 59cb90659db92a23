"""Rewrite scaled-dot-product attention in Inductor's post-grad graph into INT-FlashAttention.

Each aten form of SDPA that a device produces (``_scaled_dot_product_flash_attention_for_cpu``,
``_scaled_dot_product_flash_attention``, ``_scaled_dot_product_efficient_attention``,
``_scaled_dot_product_cudnn_attention``) is matched. A site the INT8 kernel can compute is
replaced by per-token quantization of Q and K, per-channel quantization of V (plain aten ops,
which Inductor fuses with their neighbours) and ``intfa::int8_attention``. Any other site stays as
it was, with one log line saying why, unless ``fallback="error"``.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch._dynamo.utils import counters
from torch._inductor.pattern_matcher import (
    MULTIPLE,
    CallFunction,
    CallFunctionVarArgs,
    Match,
    PatternMatcherPass,
    register_graph_pattern,
)

from intfa_compile.ops import int8_sdpa, mask_broadcasts_to

log = logging.getLogger("intfa_compile")
aten = torch.ops.aten

_MAX_HEAD_DIM = 256
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

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


class UnsupportedAttentionError(RuntimeError):
    """Raised for an attention site the INT8 rewrite cannot handle when ``fallback="error"``."""


@dataclass(frozen=True)
class AttentionSite:
    """One SDPA call in the graph, with its arguments normalized across the aten forms."""

    node: torch.fx.Node
    query: torch.fx.Node
    key: torch.fx.Node
    value: torch.fx.Node
    attn_mask: torch.fx.Node | None
    dropout_p: float
    is_causal: bool
    scale: float | None

    @property
    def name(self) -> str:
        """Where the site is: the user's source line that called attention when known, else the node name."""
        frames = [line.strip() for line in self.node.meta.get("stack_trace", "").splitlines()
                  if line.strip().startswith("File ")]
        if not frames:
            return self.node.name
        # 'File "/path/to/model.py", line 13, in forward' -> 'model.py:13 in forward'
        path, line, func = frames[-1][len("File "):].split(", ", 2)
        return f"{path.strip(chr(34)).rsplit('/', 1)[-1]}:{line.split()[-1]} {func}"


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


def attention_site(node: torch.fx.Node) -> AttentionSite:
    """Read one SDPA node's arguments, whichever aten form it is."""
    bound = _bind_arguments(node)
    mask_arg = SDPA_OPS[node.target]
    return AttentionSite(
        node=node,
        query=bound["query"],
        key=bound["key"],
        value=bound["value"],
        attn_mask=bound.get(mask_arg) if mask_arg else None,
        dropout_p=float(bound.get("dropout_p") or 0.0),
        is_causal=bool(bound.get("is_causal")),
        scale=bound.get("scale"),
    )


def _other_outputs_used(site: AttentionSite, output_getitem: torch.fx.Node) -> bool:
    return any(user is not output_getitem for user in site.node.users)


def unsupported_reason(site: AttentionSite, output_getitem: torch.fx.Node, settings: dict[str, Any]) -> str | None:
    """Why the INT8 kernel cannot compute this site under ``settings``, or None if it can."""
    if _other_outputs_used(site, output_getitem):
        return "its logsumexp or RNG state is used (a training graph); INT8 attention is inference-only"
    if site.dropout_p != 0.0:
        return f"dropout_p={site.dropout_p}; the INT8 kernel has no dropout"
    q, k, v = (n.meta.get("val") for n in (site.query, site.key, site.value))
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return "no shape information on q, k or v"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return f"q, k, v are {q.dim()}-D; the INT8 kernel takes (B, H, N, D)"
    if q.dtype not in _FLOAT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes {q.dtype}, {k.dtype}, {v.dtype}; the INT8 kernel takes one of fp16, bf16, fp32"
    head_dim, v_head_dim = q.shape[-1], v.shape[-1]
    if head_dim != v_head_dim:
        return f"value head dim {v_head_dim} differs from query head dim {head_dim}"
    if not isinstance(head_dim, int) or head_dim > _MAX_HEAD_DIM:
        return f"head dim {head_dim} is above the INT8 kernel's {_MAX_HEAD_DIM}"
    heads_q, heads_k = q.shape[1], k.shape[1]
    if heads_q % heads_k != 0:
        return f"{heads_q} query heads are not a multiple of {heads_k} KV heads"
    if site.attn_mask is not None:
        mask = site.attn_mask.meta.get("val")
        if not isinstance(mask, torch.Tensor):
            return "the mask has no shape information"
        if mask.dtype != torch.bool and mask.dtype not in _FLOAT_DTYPES:
            return f"mask dtype {mask.dtype} is neither bool nor floating"
        if not mask_broadcasts_to(mask.shape, (q.shape[0], heads_q, q.shape[2], k.shape[2])):
            return f"mask shape {tuple(mask.shape)} does not broadcast to the scores"
    n_k = k.shape[2]
    min_len = settings["min_seq_len"]
    if min_len:
        if not isinstance(n_k, int):
            return f"key length {n_k} is symbolic and min_seq_len={min_len} is set"
        if n_k < min_len:
            return f"key length {n_k} is below min_seq_len={min_len}"
    return None


def _replacement(site: AttentionSite, settings: dict[str, Any]) -> tuple[Callable[..., torch.Tensor], list]:
    quantize_pv, p_scale = settings["quantize_pv"], settings["p_scale"]
    is_causal, scale = site.is_causal, site.scale
    args = [site.query, site.key, site.value]
    if site.attn_mask is None:

        def replacement(query, key, value):
            return int8_sdpa(query, key, value, None, is_causal, scale, quantize_pv, p_scale)

        return replacement, args

    def replacement_with_mask(query, key, value, attn_mask):
        return int8_sdpa(query, key, value, attn_mask, is_causal, scale, quantize_pv, p_scale)

    return replacement_with_mask, [*args, site.attn_mask]


class SdpaToInt8:
    """The pattern-matcher pass that rewrites SDPA under one set of settings (see ``config``)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = dict(settings)
        self.patterns = PatternMatcherPass(pass_name="intfa_sdpa_to_int8")
        sdpa = CallFunctionVarArgs(list(SDPA_OPS), users=MULTIPLE)
        register_graph_pattern(CallFunction(operator.getitem, sdpa, 0), pass_dict=self.patterns)(self._rewrite)

    def __call__(self, graph: torch.fx.Graph) -> int:
        return self.patterns.apply(graph)

    def _rewrite(self, match: Match, *args: Any, **kwargs: Any) -> None:
        output_getitem = match.output_node()
        site = attention_site(output_getitem.args[0])
        reason = unsupported_reason(site, output_getitem, self.settings)
        if reason is not None:
            counters["intfa"]["left_alone"] += 1
            if self.settings["fallback"] == "error":
                raise UnsupportedAttentionError(f"attention at {site.name}: {reason}")
            log.warning("intfa: attention at %s left as it was: %s", site.name, reason)
            return
        replacement, replacement_args = _replacement(site, self.settings)
        match.replace_by_example(replacement, replacement_args)
        kind = "int8" if self.settings["quantize_pv"] else "half_int8"
        counters["intfa"][f"{kind}_sites"] += 1
        log.info("intfa: attention at %s runs %s (causal=%s, mask=%s)", site.name, kind.replace("_", "-"),
                 site.is_causal, site.attn_mask is not None)
