"""Recognize a mask that only says "causal" (or "causal within a sliding window") and turn it into the
kernel's causal flag.

Such masks reach the graph materialized: ``causal_lower_right(Nq, Nk)`` and
``torch.ones(Nq, Nk).tril(d)`` as ``(cols − rows) <= d`` (Inductor's decomposition of ``tril``),
Hugging Face's eager masks as ``kv_positions <= q_positions`` built from ``arange`` (the cache
positions), and-ed with ``kv_positions > q_positions − window`` for sliding-window models (Mistral),
then often turned additive by ``where(keep, 0, fill)`` and broadcast over batch and heads. Each is a
band of diagonals, lo <= j − i <= hi. Passed on as a mask, the kernel would read Nq·Nk mask entries
and compute every block; as ``is_causal`` with ``causal_offset = hi`` and ``window_left = hi − lo``
it reads none and skips the blocks outside the band.

The two compute the same thing when the fill is -inf. Hugging Face fills with ``finfo(dtype).min``
instead; that is the same too as long as every query keeps at least one key: the masked scores sit
about 65504 (fp16) or 3.4e38 below any kept one, so their exp2 is exactly 0 in fp32. Where a query
keeps no key, finfo.min gives a uniform average and -inf gives zeros, so such a mask stays a mask;
so does anything and-ed with padding.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.fx import Node

from .attention_site import AttentionSite
from .graph_values import uniform_value

aten = torch.ops.aten

_BROADCASTS = (aten.unsqueeze.default, aten.expand.default, aten.view.default, aten.reshape.default)
_NEGATIONS = (aten.bitwise_not.default, aten.logical_not.default)
_ANDS = (aten.logical_and.default, aten.bitwise_and.Tensor)
_ORS = (aten.logical_or.default, aten.bitwise_or.Tensor)
# Comparisons of key positions with query positions, and of their difference with a constant.
_COMPARISONS = (aten.le.Tensor, aten.lt.Tensor, aten.ge.Tensor, aten.gt.Tensor)
_SCALAR_COMPARISONS = {aten.le.Scalar: aten.le.Tensor, aten.lt.Scalar: aten.lt.Tensor,
                       aten.ge.Scalar: aten.ge.Tensor, aten.gt.Scalar: aten.gt.Tensor}
_MIRROR = {aten.le.Tensor: aten.ge.Tensor, aten.ge.Tensor: aten.le.Tensor, aten.lt.Tensor: aten.gt.Tensor,
           aten.gt.Tensor: aten.lt.Tensor}
_LOWEST = {torch.finfo(dtype).min for dtype in (torch.float16, torch.bfloat16, torch.float32)}


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
            start, end = node.args
            if not isinstance(start, int) or not isinstance(end, int):  # symbolic: nodes, not numbers
                return None
            length = end - start
            break
        else:
            return None
    else:
        return None
    if not isinstance(length, int) or not isinstance(start, int) or length != max(shape, default=1):
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


@dataclasses.dataclass(frozen=True)
class _Band:
    """Query i keeps key j iff lo <= j − i <= hi (None: unbounded on that side)."""

    lo: int | None
    hi: int | None

    def __and__(self, other: _Band) -> _Band:
        los = [b for b in (self.lo, other.lo) if b is not None]
        his = [b for b in (self.hi, other.hi) if b is not None]
        return _Band(max(los) if los else None, min(his) if his else None)

    def negated(self) -> _Band | None:
        """The complement, if it is a band: only a one-sided band has one."""
        if self.lo is None and self.hi is not None:
            return _Band(self.hi + 1, None)
        if self.hi is None and self.lo is not None:
            return _Band(None, self.lo - 1)
        return None


def _compared(op: object, keys: _Positions, queries: _Positions, bound: int) -> _Band:
    """The band of "key_pos − query_pos <op> bound", where key_pos − query_pos = j − i + shift."""
    shift = keys.start - queries.start
    if op is aten.le.Tensor:
        return _Band(None, bound - shift)
    if op is aten.lt.Tensor:
        return _Band(None, bound - shift - 1)
    if op is aten.ge.Tensor:
        return _Band(bound - shift, None)
    return _Band(bound - shift + 1, None)  # gt


def _comparison_band(node: Node, n_q: int, n_k: int) -> _Band | None:
    """The band of ``key_pos <op> query_pos`` (either order) or ``(key_pos − query_pos) <op> c`` (either order)."""
    if node.target in _SCALAR_COMPARISONS:
        op, difference, bound = _SCALAR_COMPARISONS[node.target], node.args[0], node.args[1]
        if not isinstance(bound, int) or isinstance(bound, bool) or not isinstance(difference, Node):
            return None
        if difference.target is not aten.sub.Tensor:
            return None
        left, right = difference.args
    else:
        op, (left, right), bound = node.target, node.args, 0
    pair = _keys_and_queries(left, right, n_q, n_k)
    if pair is not None:
        return _compared(op, *pair, bound)
    pair = _keys_and_queries(right, left, n_q, n_k)
    if pair is not None:  # query_pos − key_pos <op> c  ⇔  key_pos − query_pos <mirrored op> −c
        return _compared(_MIRROR[op], *pair, -bound)
    return None


def _band(node: object, n_q: int, n_k: int, negated: bool = False) -> _Band | None:
    """Which keys the boolean ``node`` keeps (or, ``negated``, drops) for (n_q, n_k) scores, if a band."""
    node = _strip_broadcasts(node)
    if not isinstance(node, Node):
        return None
    if node.target in _NEGATIONS:
        return _band(node.args[0], n_q, n_k, not negated)
    if node.target in _ANDS or node.target in _ORS:
        left, right = node.args
        if _is_all_true(right) and node.target in _ANDS:
            return _band(left, n_q, n_k, negated)
        if _is_all_true(left) and node.target in _ANDS:
            return _band(right, n_q, n_k, negated)
        if (node.target in _ANDS) == negated:  # ¬(A ∧ B) or A ∨ B: a union, not a band
            return None
        # A ∧ B, or ¬(A ∨ B) = ¬A ∧ ¬B
        sides = _band(left, n_q, n_k, negated), _band(right, n_q, n_k, negated)
        return sides[0] & sides[1] if sides[0] is not None and sides[1] is not None else None
    if node.target in (aten.tril.default, aten.triu.default):
        diagonal = node.args[1] if len(node.args) > 1 else node.kwargs.get("diagonal", 0)
        if not isinstance(diagonal, int) or _shape(node) != (n_q, n_k) or not _is_all_true(node.args[0]):
            return None
        band = _Band(None, diagonal) if node.target is aten.tril.default else _Band(diagonal, None)
    elif node.target in _COMPARISONS or node.target in _SCALAR_COMPARISONS:
        band = _comparison_band(node, n_q, n_k)
    else:
        return None
    return band.negated() if band is not None and negated else band


def causal_band_of(mask: Node | None, n_q: object, n_k: object, drops: bool = False) -> tuple[int, int] | None:
    """(causal_offset, window_left) if ``mask`` keeps exactly the keys i + causal_offset − window_left <= j <=
    i + causal_offset of query i (window_left −1: no left edge), and nothing else distinguishes its entries.

    ``mask`` is boolean (True = keep, or True = drop when ``drops``, as ``masked_fill`` takes it) or
    additive (``where`` of a boolean between 0 and -inf, or finfo.min when no query is left without keys).
    """
    if not isinstance(mask, Node) or not isinstance(n_q, int) or not isinstance(n_k, int):
        return None
    node = _strip_broadcasts(mask)
    if not isinstance(node, Node):
        return None
    fill = -math.inf
    if node.target is not aten.where.self:
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
            return None
        band = _band(node, n_q, n_k, negated=drops)
    elif drops:
        return None
    else:
        condition, if_true, if_false = node.args
        values = (uniform_value(if_true), uniform_value(if_false))
        if values[0] == 0.0 and _is_dropping_fill(values[1]):
            band, fill = _band(condition, n_q, n_k), values[1]
        elif values[1] == 0.0 and _is_dropping_fill(values[0]):
            band, fill = _band(condition, n_q, n_k, negated=True), values[0]
        else:
            return None
    if band is None or band.hi is None or (band.lo is not None and band.lo > band.hi):
        return None
    if fill != -math.inf and not _every_query_keeps_a_key(band, n_q, n_k):
        return None  # finfo.min: a query with no key averages uniformly, which the causal flag does not do
    return band.hi, (band.hi - band.lo if band.lo is not None else -1)


def _is_dropping_fill(value: float | None) -> bool:
    return value is not None and (value == -math.inf or value in _LOWEST)


def _every_query_keeps_a_key(band: _Band, n_q: int, n_k: int) -> bool:
    """Whether max(0, i + lo) <= min(n_k − 1, i + hi) for every query i (the first and last are the tightest)."""
    if band.hi is None or band.hi < 0 or n_k == 0:
        return False
    return band.lo is None or (band.lo <= band.hi and n_q - 1 + band.lo <= n_k - 1)


def fold_causal_mask(site: AttentionSite, drops: bool = False) -> AttentionSite:
    """``site`` with a causal-only mask replaced by ``is_causal``, its diagonal offset and sliding window."""
    q, k, _ = site.tensors
    if site.is_causal or site.attn_mask is None or q is None or k is None:
        return site
    band = causal_band_of(site.attn_mask, q.shape[-2], k.shape[-2], drops)
    if band is None:
        return site
    return dataclasses.replace(site, form=f"{site.form}, causal mask as flag", attn_mask=None, is_causal=True,
                               causal_offset=band[0], window_left=band[1])
