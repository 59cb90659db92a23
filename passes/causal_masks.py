"""Recognize a mask that only says "causal" and turn it into the kernel's causal flag.

Causal masks reach the graph materialized: ``causal_lower_right(Nq, Nk)`` and
``torch.ones(Nq, Nk).tril(d)`` as ``(cols − rows) <= d`` (Inductor's decomposition of ``tril``),
Hugging Face's eager masks as ``kv_positions <= q_positions`` built from ``arange`` (the cache
positions), then often turned additive by ``where(keep, 0, fill)`` and broadcast over batch and
heads. Passed on as a mask, the kernel would read Nq·Nk mask entries and compute every block; as
``is_causal`` with ``causal_offset = d`` it reads none and skips the blocks above the diagonal.

The two compute the same thing when the fill is -inf. Hugging Face fills with ``finfo(dtype).min``
instead; that is the same too as long as every query keeps at least one key (d >= 0): the masked
scores sit about 65504 (fp16) or 3.4e38 below any kept one, so their exp2 is exactly 0 in fp32. With
d < 0 the first queries keep no key, where finfo.min gives a uniform average and -inf gives zeros,
so such a mask stays a mask; so does anything and-ed with padding.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable

import torch
from torch.fx import Node

from .attention_site import AttentionSite

aten = torch.ops.aten

_BROADCASTS = (aten.unsqueeze.default, aten.expand.default, aten.view.default, aten.reshape.default)
_NEGATIONS = (aten.bitwise_not.default, aten.logical_not.default)
# Comparisons of query position i against key position j, as "keep key j iff j <op> i + d".
_COMPARISONS: dict[object, Callable[[int, int], bool]] = {
    aten.le.Tensor: operator.le, aten.lt.Tensor: operator.lt, aten.ge.Tensor: operator.ge,
    aten.gt.Tensor: operator.gt,
}
_SCALAR_COMPARISONS = {aten.le.Scalar: aten.le.Tensor, aten.lt.Scalar: aten.lt.Tensor,
                       aten.ge.Scalar: aten.ge.Tensor, aten.gt.Scalar: aten.gt.Tensor}
_COMPLEMENT = {aten.le.Tensor: aten.gt.Tensor, aten.gt.Tensor: aten.le.Tensor, aten.lt.Tensor: aten.ge.Tensor,
               aten.ge.Tensor: aten.lt.Tensor}
_MIRROR = {aten.le.Tensor: aten.ge.Tensor, aten.ge.Tensor: aten.le.Tensor, aten.lt.Tensor: aten.gt.Tensor,
           aten.gt.Tensor: aten.lt.Tensor}
_LOWEST = {torch.finfo(dtype).min for dtype in (torch.float16, torch.bfloat16, torch.float32)}


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


def _shape(node: object) -> tuple[int, ...] | None:
    value = node.meta.get("val") if isinstance(node, Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _is_all_true(node: object) -> bool:
    """Whether ``node`` is a constant boolean tensor of True (``ones`` or ``full(..., True)``)."""
    if not isinstance(node, Node):
        return False
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
        return False
    return node.target is aten.ones.default or (node.target is aten.full.default and node.args[1] in (True, 1, 1.0))


def _strip_broadcasts(node: object) -> object:
    """Follow ``unsqueeze``/``expand``/``view``/``reshape`` back while they keep the last two dims (queries,
    keys) as they are and only add or drop size-1 or broadcast dims in front."""
    while isinstance(node, Node) and node.target in _BROADCASTS:
        out, source = _shape(node), _shape(node.args[0])
        if out is None or source is None or len(out) < 2 or len(source) < 2 or out[-2:] != source[-2:]:
            return node
        if node.target in (aten.view.default, aten.reshape.default) and any(s != 1 for s in (*out[:-2], *source[:-2])):
            return node
        node = node.args[0]
    return node


@dataclasses.dataclass(frozen=True)
class _Positions:
    """start, start + 1, …, start + length − 1 laid along one axis (-1: keys, -2: queries; None when length 1)."""

    length: int
    start: int
    axis: int | None


def _positions(node: object) -> _Positions | None:
    """``node`` as consecutive integer positions: ``iota``/``arange`` plus integer constants, unsqueezed."""
    shape = _shape(node)
    if shape is None or not all(isinstance(s, int) for s in shape):
        return None
    long_axes = [axis - len(shape) for axis, size in enumerate(shape) if size != 1]
    if len(long_axes) > 1 or (long_axes and long_axes[0] not in (-1, -2)):
        return None
    offset = 0
    while isinstance(node, Node):
        if node.target in (aten.unsqueeze.default, aten.view.default, aten.reshape.default):
            node = node.args[0]
        elif node.target in (aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar):
            term = node.args[1]
            if not isinstance(term, int) or isinstance(term, bool):
                return None
            offset += term if node.target in (aten.add.Tensor, aten.add.Scalar) else -term
            node = node.args[0]
        elif node.target is torch.ops.prims.iota.default:
            if node.kwargs.get("step", 1) != 1 or not isinstance(node.kwargs.get("start", 0), int):
                return None
            length, start = node.args[0], node.kwargs.get("start", 0)
            break
        elif node.target is aten.arange.default:
            length, start = node.args[0], 0
            break
        elif node.target is aten.arange.start and len(node.args) == 2:
            start, length = node.args[0], node.args[1] - node.args[0]
            break
        else:
            return None
    else:
        return None
    if not isinstance(length, int) or length != max(shape, default=1):
        return None
    return _Positions(length, start + offset, long_axes[0] if long_axes else None)


def _keys_and_queries(left: object, right: object, n_q: int, n_k: int) -> tuple[_Positions, _Positions] | None:
    """(key positions, query positions) if ``left`` runs along the keys and ``right`` along the queries."""
    keys, queries = _positions(left), _positions(right)
    if keys is None or queries is None or keys.length != n_k or queries.length != n_q:
        return None
    if keys.axis not in (-1, None) or queries.axis not in (-2, None):
        return None
    return keys, queries


def _diagonal(op: object, keys: _Positions, queries: _Positions, bound: int) -> int | None:
    """d such that "key_pos − query_pos <op> bound" keeps exactly the keys j <= i + d (None if not causal)."""
    # key_pos − query_pos = (j + keys.start) − (i + queries.start) = j − i + shift
    shift = keys.start - queries.start
    if op is aten.le.Tensor:  # j − i + shift <= bound
        return bound - shift
    if op is aten.lt.Tensor:  # j − i + shift < bound
        return bound - shift - 1
    return None  # >= or > keeps the upper triangle: anti-causal, left as a mask


def _keep_diagonal(node: object, n_q: int, n_k: int, negated: bool = False) -> int | None:
    """d if the boolean ``node`` (or its negation) is True exactly where key j <= i + d, for (n_q, n_k) scores."""
    node = _strip_broadcasts(node)
    while isinstance(node, Node) and node.target in _NEGATIONS:
        negated = not negated
        node = _strip_broadcasts(node.args[0])
    if not isinstance(node, Node):
        return None
    if node.target is aten.logical_and.default:  # and-ed with a tensor of True: the other side alone
        left, right = node.args
        if _is_all_true(right):
            return _keep_diagonal(left, n_q, n_k, negated)
        if _is_all_true(left):
            return _keep_diagonal(right, n_q, n_k, negated)
        return None
    if node.target is aten.tril.default and not negated:
        diagonal = node.args[1] if len(node.args) > 1 else node.kwargs.get("diagonal", 0)
        shape = _shape(node)
        if isinstance(diagonal, int) and shape == (n_q, n_k) and _is_all_true(node.args[0]):
            return diagonal
        return None
    if node.target in _SCALAR_COMPARISONS:  # (key_pos − query_pos) <op> c, or (query_pos − key_pos) <op> c
        op, difference, bound = _SCALAR_COMPARISONS[node.target], node.args[0], node.args[1]
        if not isinstance(bound, int) or isinstance(bound, bool) or not isinstance(difference, Node):
            return None
        if difference.target is not aten.sub.Tensor:
            return None
        if negated:
            op = _COMPLEMENT[op]
        pair = _keys_and_queries(*difference.args, n_q, n_k)
        if pair is not None:
            return _diagonal(op, *pair, bound)
        pair = _keys_and_queries(*reversed(difference.args), n_q, n_k)
        if pair is not None:  # query_pos − key_pos <op> c  ⇔  key_pos − query_pos <mirror op> −c
            return _diagonal(_MIRROR[op], *pair, -bound)
        return None
    if node.target in _COMPARISONS:  # key_pos <op> query_pos, or query_pos <op> key_pos
        op = _COMPLEMENT[node.target] if negated else node.target
        pair = _keys_and_queries(*node.args, n_q, n_k)
        if pair is not None:
            return _diagonal(op, *pair, 0)
        pair = _keys_and_queries(*reversed(node.args), n_q, n_k)
        if pair is not None:
            return _diagonal(_MIRROR[op], *pair, 0)
    return None


def causal_offset_of(mask: Node | None, n_q: object, n_k: object, drops: bool = False) -> int | None:
    """d if ``mask`` keeps exactly the keys j <= i + d of query i and nothing else distinguishes its entries.

    ``mask`` is boolean (True = keep, or True = drop when ``drops``, as ``masked_fill`` takes it) or
    additive (``where`` of a boolean between 0 and -inf, or finfo.min when no query is left without keys).
    """
    if not isinstance(mask, Node) or not isinstance(n_q, int) or not isinstance(n_k, int):
        return None
    node = _strip_broadcasts(mask)
    if not isinstance(node, Node):
        return None
    if node.target is not aten.where.self:
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
            return None
        return _keep_diagonal(node, n_q, n_k, negated=drops)
    if drops:
        return None
    condition, if_true, if_false = node.args
    values = (_constant(if_true), _constant(if_false))
    if values[0] == 0.0 and values[1] is not None and (values[1] == -math.inf or values[1] in _LOWEST):
        diagonal, fill = _keep_diagonal(condition, n_q, n_k), values[1]
    elif values[1] == 0.0 and values[0] is not None and (values[0] == -math.inf or values[0] in _LOWEST):
        diagonal, fill = _keep_diagonal(condition, n_q, n_k, negated=True), values[0]
    else:
        return None
    if diagonal is None or (fill != -math.inf and diagonal < 0):
        return None
    return diagonal


def fold_causal_mask(site: AttentionSite, drops: bool = False) -> AttentionSite:
    """``site`` with a causal-only mask replaced by ``is_causal`` and its diagonal offset (else unchanged)."""
    q, k, _ = site.tensors
    if site.is_causal or site.attn_mask is None or q is None or k is None:
        return site
    offset = causal_offset_of(site.attn_mask, q.shape[-2], k.shape[-2], drops)
    if offset is None:
        return site
    return dataclasses.replace(site, attn_mask=None, is_causal=True, causal_offset=offset)
