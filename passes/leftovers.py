"""Find attention that is still written by hand after every rewrite, and say why it was not taken.

A softmax over the last dimension whose result feeds the left side of a batched matrix product is
attention; if no stage reported it (as rewritten or as left alone), no pattern matched it, and the
explain table should still show it, with the most likely reason.
"""

from __future__ import annotations

import torch

from intfa_compile.sites import LEFT_ALONE, SiteRecord, module_path, source_line

from .context import CompileContext
from .matcher import softmax_at

aten = torch.ops.aten
prims = torch.ops.prims

# Ops that pass the attention weights on unchanged (casts, reshapes, copies).
_TRANSPARENT = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.expand.default,
    aten.clone.default, aten._to_copy.default, prims.convert_element_type.default,
}
_MATMULS = {aten.bmm.default, aten.mm.default}


def _follow_to_matmul(probs: torch.fx.Node) -> tuple[torch.fx.Node | None, str]:
    """The matmul that consumes the attention weights as its left operand, and what stood between."""
    node, between = probs, ""
    for _ in range(8):
        if len(node.users) != 1:
            return None, between
        (user,) = node.users
        if user.target in _MATMULS:
            return (user, between) if user.args[0] is node else (None, between)
        if user.target not in _TRANSPARENT:
            between = str(user.target).split(".")[-2] if "." in str(user.target) else str(user.target)
        node = user
    return None, between


def _shape(node: torch.fx.Node) -> str:
    value = node.meta.get("val")
    return "×".join(str(s) for s in value.shape) if isinstance(value, torch.Tensor) else "?"


# PyTorch's fused inference fast paths: attention inside one opaque op.
_FUSED_FAST_PATHS = {
    name: getattr(aten, name).default
    for name in ("_transformer_encoder_layer_fwd", "_native_multi_head_attention")
    if hasattr(aten, name)
}


def _report_fused_fast_path(node: torch.fx.Node, name: str, context: CompileContext) -> None:
    context.report(SiteRecord(
        module=module_path(node, context.module_paths),
        source=source_line(node),
        form=f"fused ({name})",
        shapes=f"input {_shape(node.args[0])}",
        mask="?",
        causal=False,
        gqa="",
        outcome=LEFT_ALONE,
        reason=("PyTorch's fused inference fast path hides the attention in one op; call "
                "torch.backends.mha.set_fastpath_enabled(False) before compiling to run it as SDPA (then INT8)"),
    ), warn=True)


def report_unrewritten_attention(graph: torch.fx.Graph, context: CompileContext) -> None:
    """Record, once each, the attention sites that no rewrite reported: hand-written attention no
    pattern matched, and attention inside PyTorch's fused fast-path ops."""
    for node in graph.nodes:
        for name, op in _FUSED_FAST_PATHS.items():
            if node.target is op:
                _report_fused_fast_path(node, name, context)
        if softmax_at(node, exact=False) is None or _inside_a_larger_softmax(node):
            continue
        matmul, between = _follow_to_matmul(node)
        if matmul is None and len(node.users) > 1:
            # Weights used twice: find the P·V product among the users to anchor the report.
            for user in node.users:
                candidate, _ = _follow_to_matmul_single(user)
                if candidate is not None:
                    matmul = candidate
                    break
            reason = "its attention weights are also used elsewhere (returned by the model or saved for backward)"
        elif context.declined_reason(node) is not None:
            reason = context.declined_reason(node)
        elif between:
            reason = f"'{between}' stands between the softmax and P·V (dropout in training?)"
        else:
            reason = "written in a form that none of the INT8 patterns matches"
        if matmul is None:
            continue
        if context.already_reported(matmul) or any(context.already_reported(user) for user in matmul.users):
            continue
        context.reported.add(matmul.name)
        context.report(SiteRecord(
            module=module_path(matmul, context.module_paths),
            source=source_line(matmul),
            form="hand-written (unmatched)",
            shapes=f"weights {_shape(node)}, values {_shape(matmul.args[1])}",
            mask="?",
            causal=False,
            gqa="",
            outcome=LEFT_ALONE,
            reason=reason,
        ), warn=True)


def _inside_a_larger_softmax(node: torch.fx.Node) -> bool:
    """Whether ``node`` is the plain softmax inside a decomposed ``_safe_softmax`` (which reports the site)."""
    for user in node.users:
        outer = softmax_at(user, exact=False)
        if outer is not None and node in outer.inner:
            return True
    return False


def _follow_to_matmul_single(node: torch.fx.Node) -> tuple[torch.fx.Node | None, str]:
    if node.target in _MATMULS:
        return node, ""
    if node.target in _TRANSPARENT:
        return _follow_to_matmul(node)
    return None, ""
