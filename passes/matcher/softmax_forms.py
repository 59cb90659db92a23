"""A softmax over the last dimension, in every form a graph holds it (the ops, their decomposition, SDPA's
``_safe_softmax``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..graph_values import uniform_value
from .graph_ops import SOFTMAX_OPS, tensor_value

aten = torch.ops.aten


@dataclass(frozen=True)
class Softmax:
    """A softmax over the last dimension: its input scores and the node holding the probabilities."""

    scores: torch.fx.Node
    probs: torch.fx.Node
    inner: frozenset[torch.fx.Node]


def over_last_dim(dim: int, ndim: int) -> bool:
    """Whether dimension ``dim`` of an ``ndim``-D tensor is its last (either way of naming it)."""
    return dim in (-1, ndim - 1)


def softmax_at(node: torch.fx.Node, exact: bool = True) -> Softmax | None:
    """``node`` as the output of a softmax over the last dimension, in any of the forms a graph holds it:
    the ``_softmax``/``softmax``/``_safe_softmax`` ops or their decomposition exp(x − amax x) / Σ exp(…).

    Not ``exact``: any exp(·) / Σ exp(·) over the last dimension, as Inductor's own passes rewrite the shift (the
    report of what stayed uses this; a rewrite needs the exact form, whose input is the scores)."""
    if node.op != "call_function":
        return None
    value = tensor_value(node)
    if value is None:
        return None
    if node.target in SOFTMAX_OPS:
        return Softmax(node.args[0], node, frozenset()) if over_last_dim(node.args[1], value.dim()) else None
    if node.target is aten.where.self:
        return _safe_softmax_at(node, exact)
    if node.target is not aten.div.Tensor or len(node.args) != 2:
        return None
    exp, total = node.args
    if not (isinstance(exp, torch.fx.Node) and exp.target is aten.exp.default and isinstance(total, torch.fx.Node)
            and total.target is aten.sum.dim_IntList and total.args[0] is exp and len(total.args[1]) == 1
            and over_last_dim(total.args[1][0], value.dim())):
        return None
    shifted = exp.args[0]
    if not exact:
        return Softmax(shifted, node, frozenset((exp, total)))
    if not (isinstance(shifted, torch.fx.Node) and shifted.target is aten.sub.Tensor):
        return None
    scores, peak = shifted.args
    if not (isinstance(peak, torch.fx.Node) and peak.target is aten.amax.default and peak.args[0] is scores):
        return None
    return Softmax(scores, node, frozenset((exp, total, shifted, peak)))


def _safe_softmax_at(node: torch.fx.Node, exact: bool) -> Softmax | None:
    """``_safe_softmax`` decomposed (SDPA's math path): where(no key of the row is kept, 0, softmax(x)), the row
    test read from x as ``logical_not(any(logical_not(x == −inf)))``. The INT8 kernel gives such rows 0 too."""
    condition, zeros, probs = node.args
    if uniform_value(zeros) != 0.0 or not isinstance(probs, torch.fx.Node) or probs.target is aten.where.self:
        return None
    inner = softmax_at(probs, exact)
    if inner is None or not isinstance(condition, torch.fx.Node):
        return None
    test = [condition]
    for target in (aten.logical_not.default, aten.any.dim, aten.logical_not.default, aten.eq.Scalar):
        node_in_test = test[-1]
        if not isinstance(node_in_test, torch.fx.Node) or node_in_test.target is not target:
            return None
        if target is aten.any.dim and not over_last_dim(node_in_test.args[1], tensor_value(node_in_test).dim()):
            return None
        if target is aten.eq.Scalar:
            break
        test.append(node_in_test.args[0])
    compared = test[-1]
    # Not exact: the inner softmax's input is the shifted scores, the row test reads the scores themselves.
    if (exact and compared.args[0] is not inner.scores) or compared.args[1] != float("-inf"):
        return None
    return Softmax(inner.scores, node, frozenset({*inner.inner, inner.probs, *test, zeros}))
