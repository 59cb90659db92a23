"""Recognize a mask that only says "causal" and turn it into the kernel's causal flag.

``torch.nn.attention.bias.causal_lower_right`` (and code that writes ``torch.ones(Nq, Nk).tril(d)``)
reaches the graph as a materialized (Nq, Nk) mask: ``tril(ones)`` of booleans (which Inductor
decomposes into ``(cols − rows) <= d``), possibly turned into ``where(keep, 0, -inf)`` by SDPA's
decomposition and broadcast with ``unsqueeze``/``expand``. Passed on as a mask, the kernel would
read Nq·Nk mask entries and compute every block; as ``is_causal`` with ``causal_offset = d`` it
reads none and skips the blocks above the diagonal. The two compute the same thing: a kept key adds
0, a dropped one -inf, and a row that keeps no key gives zeros either way. A mask filled with
``finfo.min`` instead of -inf, or and-ed with padding, means something else and stays a mask.
"""

from __future__ import annotations

import math

import torch
from torch.fx import Node

aten = torch.ops.aten

_BROADCASTS = (aten.unsqueeze.default, aten.expand.default, aten.view.default, aten.reshape.default)


def _constant(arg: object) -> float | None:
    """The value of a Python number or of a uniform constant node (``scalar_tensor``, ``full``)."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return float(arg)
    if isinstance(arg, Node):
        if arg.target is aten.scalar_tensor.default:
            return _constant(arg.args[0])
        if arg.target is aten.full.default:
            return _constant(arg.args[1])
    return None


def _is_all_true(node: object, n_q: int, n_k: int) -> bool:
    """Whether ``node`` is a constant boolean (n_q, n_k) tensor of True (``ones`` or ``full(..., True)``)."""
    if not isinstance(node, Node):
        return False
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool or tuple(value.shape) != (n_q, n_k):
        return False
    if node.target is aten.ones.default:
        return True
    return node.target is aten.full.default and node.args[1] in (True, 1, 1.0)


def _keeps_last_two_dims(node: Node, n_q: int, n_k: int) -> bool:
    """A broadcast step whose input and output both end in (n_q, n_k) with only size-1 dims before."""
    for value in (node.meta.get("val"), node.args[0].meta.get("val") if isinstance(node.args[0], Node) else None):
        if not isinstance(value, torch.Tensor) or tuple(value.shape[-2:]) != (n_q, n_k):
            return False
    source = node.args[0].meta["val"]
    return node.target is aten.expand.default or all(s == 1 for s in source.shape[:-2])


def _positions(node: object, length: int, dim: int) -> bool:
    """Whether ``node`` is 0, 1, ..., length − 1 (``iota``/``arange``) unsqueezed into a 2-D column (dim -1)
    or row (dim -2)."""
    if not isinstance(node, Node) or node.target is not aten.unsqueeze.default or node.args[1] not in (dim, dim + 2):
        return False
    source = node.args[0]
    if not isinstance(source, Node):
        return False
    if source.target is torch.ops.prims.iota.default:
        return (source.args[0] == length and source.kwargs.get("start", 0) == 0
                and source.kwargs.get("step", 1) == 1)
    if source.target is aten.arange.default:
        return source.args[0] == length
    if source.target is aten.arange.start:
        return source.args[0] == 0 and source.args[1] == length
    return False


def _tril_diagonal(node: object, n_q: int, n_k: int) -> int | None:
    """d for a boolean (n_q, n_k) ``tril(ones, d)``, as written or as Inductor decomposes it:
    ``(cols − rows) <= d``, possibly and-ed with a tensor of True."""
    if not isinstance(node, Node):
        return None
    if node.target is aten.tril.default:
        diagonal = node.args[1] if len(node.args) > 1 else node.kwargs.get("diagonal", 0)
        return diagonal if isinstance(diagonal, int) and _is_all_true(node.args[0], n_q, n_k) else None
    if node.target is aten.logical_and.default:
        left, right = node.args
        if _is_all_true(right, n_q, n_k):
            return _tril_diagonal(left, n_q, n_k)
        if _is_all_true(left, n_q, n_k):
            return _tril_diagonal(right, n_q, n_k)
        return None
    if node.target is aten.le.Scalar and isinstance(node.args[1], int) and not isinstance(node.args[1], bool):
        difference = node.args[0]
        if (isinstance(difference, Node) and difference.target is aten.sub.Tensor
                and _positions(difference.args[0], n_k, -2) and _positions(difference.args[1], n_q, -1)):
            return node.args[1]
    return None


def _strip_broadcasts(node: object, n_q: int, n_k: int) -> object:
    while isinstance(node, Node) and node.target in _BROADCASTS:
        if not _keeps_last_two_dims(node, n_q, n_k):
            return None
        node = node.args[0]
    return node


def causal_offset_of(mask: Node | None, n_q: object, n_k: object) -> int | None:
    """d if ``mask`` keeps exactly the keys j <= i + d of query i (a ``tril(ones(n_q, n_k), d)`` mask), else None."""
    if not isinstance(mask, Node) or not isinstance(n_q, int) or not isinstance(n_k, int):
        return None
    node = _strip_broadcasts(mask, n_q, n_k)
    if isinstance(node, Node) and node.target is aten.where.self:  # additive: 0 where kept, -inf where dropped
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (n_q, n_k):
            return None
        condition, if_true, if_false = node.args
        if (_constant(if_true), _constant(if_false)) == (0.0, -math.inf):
            node = condition
        elif ((_constant(if_true), _constant(if_false)) == (-math.inf, 0.0) and isinstance(condition, Node)
              and condition.target in (aten.bitwise_not.default, aten.logical_not.default)):
            node = condition.args[0]
        else:
            return None
        node = _strip_broadcasts(node, n_q, n_k)
    return _tril_diagonal(node, n_q, n_k)
