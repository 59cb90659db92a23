"""Attention recognised by what it computes, in whatever style it was written.

A softmax over the last dimension whose input is a product Q·Kᵀ (``bmm``, ``baddbmm`` or ``mm``, as
``matmul``, ``einsum`` and ``baddbmm`` all reach the graph) and whose output is the left operand of a
product with V is attention. Between the products and the softmax this module walks through what does
not change the meaning, and reads what does:

- layout ops (views, reshapes, permutes, (un)squeezes, no-op expands), clones and casts. Their effect on
  which score lands where is checked, not assumed: the walk replays them on a probe tensor whose strides
  map each position back to the product's (batch, query, key) element, and accepts only layouts where
  the softmax runs over the keys of each query of each batch, in the product's order (``_Probe``);
- the scale: multiplications and divisions by a number (a Python float or a one-element constant);
  ``baddbmm``'s ``alpha``; a scale on Q or K needs no reading (per-token quantization absorbs it);
- additive terms (masks, position biases such as T5's or ALiBi's; ``baddbmm``'s input times ``beta``),
  and fills of dropped positions (``where``/``masked_fill`` with −inf or a very negative number).

What it recognises becomes one ``AttentionSite`` over (B, H, N, D) views of the products' operands, which
the guards, the causal-mask folding and the rewrite take like any other site. It runs before Inductor's
own pattern passes, so what it covers does not depend on Inductor's attention fusion.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._inductor.pattern_matcher import fwd_only
from torch.fx.experimental.symbolic_shapes import statically_known_true

from intfa_compile.config import Settings

from .attention_site import AttentionSite
from .causal_masks import fold_causal_mask
from .context import CompileContext
from .graph_values import uniform_value
from .rewrite import int8_attention
from .symbolic_sizes import SizeNodes, is_symbolic, value_users

aten = torch.ops.aten
prims = torch.ops.prims
log = logging.getLogger("intfa_compile")

_PRODUCTS = (aten.bmm.default, aten.baddbmm.default, aten.mm.default)
_SAME_VALUES = (aten.clone.default, prims.convert_element_type.default, aten._to_copy.default,
                aten.alias.default)
_LAYOUT = (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
           aten.transpose.int, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
           aten.expand.default, aten.t.default)
_SOFTMAX_OPS = (aten._softmax.default, aten.softmax.int, aten._safe_softmax.default)

DROPPING_FILL = -1e4
"""A fill at or below this drops its score (exp underflows to 0 against any real score maximum): −inf,
``finfo.min`` (Hugging Face) and GPT-2's historical −10⁴."""


class NotAttention(Exception):
    """The structure around a softmax is not attention the INT8 op can take; the message says why."""


@dataclass(frozen=True)
class Softmax:
    """A softmax over the last dimension: its input scores and the node holding the probabilities."""

    scores: torch.fx.Node
    probs: torch.fx.Node
    inner: frozenset[torch.fx.Node]


def _last_dim(dim: int, ndim: int) -> bool:
    return dim in (-1, ndim - 1)


def _val(node: Any) -> torch.Tensor | None:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


def softmax_at(node: torch.fx.Node, exact: bool = True) -> Softmax | None:
    """``node`` as the output of a softmax over the last dimension, in any of the forms a graph holds it:
    the ``_softmax``/``softmax``/``_safe_softmax`` ops or their decomposition exp(x − amax x) / Σ exp(…).

    Not ``exact``: any exp(·) / Σ exp(·) over the last dimension, as Inductor's own passes rewrite the shift (the
    report of what stayed uses this; a rewrite needs the exact form, whose input is the scores)."""
    if node.op != "call_function":
        return None
    value = _val(node)
    if value is None:
        return None
    if node.target in _SOFTMAX_OPS:
        return Softmax(node.args[0], node, frozenset()) if _last_dim(node.args[1], value.dim()) else None
    if node.target is aten.where.self:
        return _safe_softmax_at(node, exact)
    if node.target is not aten.div.Tensor or len(node.args) != 2:
        return None
    exp, total = node.args
    if not (isinstance(exp, torch.fx.Node) and exp.target is aten.exp.default and isinstance(total, torch.fx.Node)
            and total.target is aten.sum.dim_IntList and total.args[0] is exp and len(total.args[1]) == 1
            and _last_dim(total.args[1][0], value.dim())):
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
        if target is aten.any.dim and not _last_dim(node_in_test.args[1], _val(node_in_test).dim()):
            return None
        if target is aten.eq.Scalar:
            break
        test.append(node_in_test.args[0])
    compared = test[-1]
    # Not exact: the inner softmax's input is the shifted scores, the row test reads the scores themselves.
    if (exact and compared.args[0] is not inner.scores) or compared.args[1] != float("-inf"):
        return None
    return Softmax(inner.scores, node, frozenset({*inner.inner, inner.probs, *test, zeros}))


def _reaches_product(node: Any, depth: int = 16) -> bool:
    """Whether ``node`` is a matrix product, or computed from one through the ops a scores chain may hold."""
    if depth == 0 or not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return False
    target = node.target
    if target in _PRODUCTS:
        return True
    if target in _SAME_VALUES or target in _LAYOUT or target in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
        return _reaches_product(node.args[0], depth - 1)
    if target in (aten.mul.Tensor, aten.div.Tensor, aten.add.Tensor, aten.sub.Tensor):
        return any(_reaches_product(arg, depth - 1) for arg in node.args[:2])
    if target is aten.where.self:
        return any(_reaches_product(arg, depth - 1) for arg in node.args[1:])
    return False


def _is_random(node: torch.fx.Node) -> bool:
    """A random op (``rand``, ``bernoulli``, ``native_dropout``, Inductor's random ops…): dropout's ingredients."""
    name = str(node.target)
    return any(word in name for word in ("rand", "bernoulli", "dropout", "uniform"))


def _random_within(node: Any, depth: int = 4) -> bool:
    """Whether ``node`` is computed from a random op within ``depth`` steps (a dropout mask)."""
    if depth == 0 or not isinstance(node, torch.fx.Node):
        return False
    return _is_random(node) or any(_random_within(arg, depth - 1) for arg in node.all_input_nodes)


class _Probe:
    """Where each element of a tensor came from in the product Q·Kᵀ, as a strided map.

    It starts as a contiguous empty tensor of the product's shape (batch, queries, keys) (fake, so
    symbolic sizes work); each layout op on the way is replayed on it as a view, so its strides say which
    element of the product each position holds. A replay that would need a copy is a layout the map
    cannot follow, and the site is left alone.
    """

    def __init__(self, shape: Sequence[Any], fake_mode: Any) -> None:
        self.fake_mode = fake_mode
        with fake_mode:
            self.tensor = torch.empty(list(shape), device="meta")

    def replay(self, node: torch.fx.Node) -> None:
        def arg(value: Any) -> Any:
            if isinstance(value, torch.fx.Node):
                return value.meta["val"]
            if isinstance(value, (list, tuple)):
                return [arg(v) for v in value]
            return value

        x, rest = self.tensor, [arg(a) for a in node.args[1:]]
        target = node.target
        with self.fake_mode:
            if target in (aten.view.default, aten._unsafe_view.default, aten.reshape.default):
                try:
                    self.tensor = x.view(rest[0])
                except RuntimeError as error:  # the regrouping mixes dimensions a strided map cannot follow
                    raise NotAttention("the scores are re-laid out in a way the layout check cannot follow") \
                        from error
            elif target is aten.permute.default:
                self.tensor = x.permute(rest[0])
            elif target is aten.transpose.int:
                self.tensor = x.transpose(rest[0], rest[1])
            elif target is aten.t.default:
                self.tensor = x.t()
            elif target is aten.unsqueeze.default:
                self.tensor = x.unsqueeze(rest[0])
            elif target in (aten.squeeze.dim, aten.squeeze.dims):
                self.tensor = x.squeeze(rest[0])
            elif target is aten.squeeze.default:
                self.tensor = x.squeeze()
            elif target is aten.expand.default:
                if not all(statically_known_true(a == b) for a, b in zip(rest[0], x.shape, strict=True)):
                    raise NotAttention("the scores are broadcast between Q·Kᵀ and P·V")
            else:  # pragma: no cover - callers pass layout ops only
                raise NotAttention(f"unexpected layout op {target}")

    def layout(self) -> tuple:
        """Shape and strides (strides of size-1 dimensions left out: they map nothing): two points of a walk
        with the same layout see the product's elements at the same positions."""
        return tuple((size, None if statically_known_true(size == 1) else stride)
                     for size, stride in zip(self.tensor.shape, self.tensor.stride(), strict=True))

    def row_major(self) -> bool:
        """Whether the current tensor lists the product's elements in their order (its strides are those of a
        contiguous tensor of its shape, size-1 dimensions aside)."""
        expected = 1
        for size, stride in reversed(list(zip(self.tensor.shape, self.tensor.stride(), strict=True))):
            if not statically_known_true(size == 1) and not statically_known_true(stride == expected):
                return False
            expected = expected * size
        return True


@dataclass
class _Scores:
    """What the walk from the softmax back to Q·Kᵀ read: the product, the scale and the terms added."""

    product: torch.fx.Node
    scale: float = 1.0
    additive: list[tuple[torch.fx.Node, float, tuple]] = field(default_factory=list)
    """(term, coefficient, layout of the scores where it was added: ``_Probe.layout``)."""
    drops: list[tuple[torch.fx.Node, bool, tuple]] = field(default_factory=list)
    """(boolean mask, True if True drops a score, layout of the scores where it applied)."""
    factors: list[tuple[torch.fx.Node, int]] = field(default_factory=list)
    """Parts of the scale known only at run time, (node, +1 if it multiplies, −1 if it divides): a one-element
    tensor (a learned temperature, √D computed from a symbolic size) or a symbolic float."""
    region: set[torch.fx.Node] = field(default_factory=set)
    """The product and the ops from it to the softmax: what the rewrite removes."""


def _other(node: torch.fx.Node, chain: torch.fx.Node) -> Any:
    (other,) = [a for a in node.args[:2] if a is not chain]
    return other


def _scores_chain(scores: torch.fx.Node, inner: frozenset[torch.fx.Node], probs: torch.fx.Node
                  ) -> tuple[torch.fx.Node, list[tuple[torch.fx.Node, torch.fx.Node]]]:
    """The product behind the softmax input and the ops from it to the softmax, in the order they run, each with
    its argument the scores flow through."""
    chain: list[tuple[torch.fx.Node, torch.fx.Node]] = []
    node, allowed_users = scores, set(inner) | {probs}
    while True:
        if not isinstance(node, torch.fx.Node) or node.op != "call_function":
            raise NotAttention("the softmax input does not come from a matrix product")
        if any(user not in allowed_users for user in value_users(node)):
            raise NotAttention("the scores are also used elsewhere")
        if node.target in _PRODUCTS:
            return node, chain[::-1]
        allowed_users = {node}
        target = node.target
        _check_cast(node)
        if target in _SAME_VALUES or target in _LAYOUT:
            source = node.args[0]
        elif target in (aten.mul.Tensor, aten.div.Tensor, aten.add.Tensor, aten.sub.Tensor):
            tensors = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
            leading = [a for a in tensors if _reaches_product(a)]
            if len(leading) != 1:
                raise NotAttention("the scores combine two matrix products" if leading
                                   else "the softmax input does not come from a matrix product")
            if target is aten.div.Tensor and node.args[1] is leading[0]:
                raise NotAttention("the scores divide a number")
            if target is aten.sub.Tensor and node.args[1] is leading[0]:
                raise NotAttention("the scores are subtracted from a term")
            source = leading[0]
        elif target is aten.where.self:
            leading = [a for a in node.args[1:] if _reaches_product(a)]
            if len(leading) != 1:
                raise NotAttention("a where() between Q·Kᵀ and softmax does not select scores against a fill")
            source = leading[0]
        elif target in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
            source = node.args[0]
        else:
            raise NotAttention(f"'{_op_name(node)}' stands between Q·Kᵀ and the softmax")
        chain.append((node, source))
        node = source


def _check_cast(node: torch.fx.Node) -> None:
    """A cast on the way is a change of precision only if it stays floating point."""
    value = _val(node)
    if node.target in _SAME_VALUES and value is not None and not value.dtype.is_floating_point:
        raise NotAttention(f"the scores or weights are cast to {value.dtype}")


def _same_shape(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(statically_known_true(x == y) for x, y in zip(a, b, strict=True))


def _same_layout(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(
        _same_shape((size_a,), (size_b,)) and (stride_a is None) == (stride_b is None)
        and (stride_a is None or statically_known_true(stride_a == stride_b))
        for (size_a, stride_a), (size_b, stride_b) in zip(a, b, strict=True))


def _op_name(node: torch.fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def read_scores(softmax: Softmax, fake_mode: Any) -> tuple[_Scores, _Probe]:
    """The product, scale and terms of the scores a softmax normalizes, and the probe of their layout."""
    product, chain = _scores_chain(softmax.scores, softmax.inner, softmax.probs)
    found = _Scores(product, region={product, *(node for node, _ in chain)})
    probe = _Probe(product.meta["val"].shape, fake_mode)
    if product.target is aten.baddbmm.default:
        alpha = uniform_value(product.kwargs.get("alpha", 1.0))
        beta = uniform_value(product.kwargs.get("beta", 1.0))
        if alpha is None or beta is None:
            raise NotAttention("baddbmm's alpha or beta is not a number")
        found.scale = alpha
        if beta != 0.0 and not _is_zeros(product.args[0]):
            found.additive.append((product.args[0], beta, probe.layout()))
    for node, chain_input in chain:
        target, shape = node.target, probe.layout()
        if target in _LAYOUT:
            probe.replay(node)
        elif target in _SAME_VALUES:
            continue
        elif target in (aten.mul.Tensor, aten.div.Tensor):
            other = _other(node, chain_input)
            factor = uniform_value(other)
            if factor is None:
                if not _run_time_number(other):
                    raise NotAttention("the scores are multiplied by a tensor, not a number")
                if found.additive or found.drops:
                    raise NotAttention("a term is added to the scores before a scale known only at run time")
                found.factors.append((other, 1 if target is aten.mul.Tensor else -1))
                continue
            factor = factor if target is aten.mul.Tensor else 1.0 / factor
            found.scale *= factor
            found.additive = [(term, coefficient * factor, at) for term, coefficient, at in found.additive]
            if factor <= 0 and found.drops:
                raise NotAttention("dropped scores are scaled by a non-positive number")
        elif target in (aten.add.Tensor, aten.sub.Tensor):
            term = _other(node, chain_input)
            number = uniform_value(term)
            if (number is not None and math.isfinite(number)) or _is_zeros(term):
                continue  # the same for every score: softmax does not see it
            if not isinstance(term, torch.fx.Node) or _val(term) is None:
                raise NotAttention("something other than a tensor or a finite number is added to the scores")
            alpha = uniform_value(node.kwargs.get("alpha", 1.0))
            if alpha is None:
                raise NotAttention("a term is added to the scores with a tensor alpha")
            found.additive.append((term, alpha if target is aten.add.Tensor else -alpha, shape))
        elif target is aten.where.self:
            condition, kept, filled = node.args
            fill = uniform_value(filled if kept is chain_input else kept)
            if fill is None or fill > DROPPING_FILL:
                raise NotAttention("a where() fills scores with something other than a dropping value")
            found.drops.append((condition, kept is not chain_input, shape))
        elif target in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
            fill = uniform_value(node.args[2])
            if fill is None or fill > DROPPING_FILL:
                raise NotAttention("masked_fill fills scores with something other than a dropping value")
            found.drops.append((node.args[1], True, shape))
    if not math.isfinite(found.scale) or found.scale <= 0:
        raise NotAttention(f"the scores' scale {found.scale} is not a positive number")
    return found, probe


def _run_time_number(node: Any) -> bool:
    """A number the graph computes when it runs: a one-element floating tensor or a symbolic float or int."""
    if not isinstance(node, torch.fx.Node):
        return False
    value = node.meta.get("val")
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return True
    return (isinstance(value, torch.Tensor) and value.dtype.is_floating_point
            and statically_known_true(value.numel() == 1))


def _is_zeros(node: Any) -> bool:
    """A tensor of zeros made in the graph (GPT-NeoX's ``baddbmm`` input): adding it changes nothing."""
    return (isinstance(node, torch.fx.Node) and node.op == "call_function"
            and node.target in (aten.full.default, aten.zeros.default)
            and (node.target is aten.zeros.default or uniform_value(node.args[1]) == 0.0))


def probs_to_value_product(softmax: Softmax, fake_mode: Any, lead: Sequence[Any], product_shape: Sequence[Any]
                           ) -> tuple[torch.fx.Node, list[torch.fx.Node]]:
    """The product P·V the probabilities feed as left operand, and the ops on the way to it; checks that it
    receives them laid out as Q·Kᵀ produced them (``product_shape``)."""
    node, walked = softmax.probs, []
    probe = _Probe([*lead, *node.meta["val"].shape[-2:]], fake_mode)
    while True:
        users = value_users(node)
        if len(users) != 1:
            raise NotAttention("its attention weights are also used elsewhere (returned by the model or saved "
                               "for backward)")
        (user,) = users
        if user.target in _PRODUCTS and user.target is not aten.baddbmm.default:
            if user.args[0] is not node:
                raise NotAttention("the attention weights are the right operand of their product")
            if not probe.row_major() or not _same_shape(probe.tensor.shape, product_shape):
                raise NotAttention("the attention weights are re-laid out before P·V")
            return user, walked
        if _is_random(user) or (user.target is aten.mul.Tensor and _random_within(user)):
            raise NotAttention("dropout in training mode between the softmax and P·V; the INT8 kernel has none")
        _check_cast(user)
        if user.target in _LAYOUT:
            probe.replay(user)
        elif user.target not in _SAME_VALUES:
            raise NotAttention(f"'{_op_name(user)}' stands between the softmax and P·V")
        walked.append(user)
        node = user


def _repeated_heads(operand: torch.fx.Node, lead: tuple[int, ...], transposed: bool, fake_mode: Any
                    ) -> torch.fx.Node | None:
    """The un-repeated (B, Hk, N, D) tensor behind a product operand made by repeating KV heads as Hugging Face's
    ``repeat_kv`` does (unsqueeze, expand, reshape to (B, Hk·rep, N, D)), or None. ``operand`` is (B·H, D, N)
    (``transposed``: K in Q·Kᵀ) or (B·H, N, D) (V); the layout from the repeated tensor to it is checked with a
    probe, so only the matmul's own view of (B, H, N, D) heads is accepted."""
    if len(lead) != 2:
        return None
    chain, node = [], operand
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and (
            node.target in _LAYOUT or node.target in _SAME_VALUES):
        if node.target is aten.expand.default:
            source = node.args[0]
            if (isinstance(source, torch.fx.Node) and source.target is aten.unsqueeze.default
                    and source.args[1] == 2 and _val(source.args[0]) is not None
                    and _val(source.args[0]).dim() == 4):
                break
        chain.append(node)
        node = node.args[0]
    else:
        return None
    unrepeated = node.args[0].args[0]
    batch, kv_heads, n, dim = _val(unrepeated).shape
    after = [op for op in reversed(chain) if op.target not in _SAME_VALUES]
    if not after or after[0].target not in (aten.view.default, aten._unsafe_view.default, aten.reshape.default):
        return None
    merged = tuple(_val(after[0]).shape)
    if not _same_shape(merged, (batch, lead[1], n, dim)) or not _same_shape(merged[:2], lead):
        return None
    probe = _Probe(merged, fake_mode)
    for op in after[1:]:
        probe.replay(op)
    expected = _Probe(merged, fake_mode)
    with fake_mode:
        heads = expected.tensor.transpose(-1, -2) if transposed else expected.tensor
        expected.tensor = heads.reshape(-1, *heads.shape[-2:])
    same = _same_shape(probe.tensor.shape, expected.tensor.shape) and all(
        statically_known_true(size == 1) or statically_known_true(a == b)
        for size, a, b in zip(probe.tensor.shape, probe.tensor.stride(), expected.tensor.stride(), strict=True))
    return unrepeated if same else None


@dataclass(frozen=True)
class Recognised:
    """Attention found around one softmax: the site the guards judge and what its replacement needs."""

    site: AttentionSite
    value_product: torch.fx.Node
    scale: float
    lead: tuple[int, ...]
    """The batch dimensions the softmax ran over (e.g. (B, H)); their product is the products' batch."""
    additive: tuple[tuple[torch.fx.Node, float, bool], ...]
    """(term, coefficient, added in the products' (batch, queries, keys) frame rather than the softmax's)."""
    drops: tuple[tuple[torch.fx.Node, bool, bool], ...]
    """(boolean mask, True if True drops, applied in the products' frame)."""
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
        heads = _heads_layout(self.lead, bool(self.additive or self.drops))
        sizes: list[torch.SymInt] = []
        for size in (*heads, *self.lead, *self.value_product.meta["val"].shape):
            if is_symbolic(size) and not any(statically_known_true(size == seen) for seen in sizes):
                sizes.append(size)
        return sizes


def _heads_layout(lead: tuple[int, ...], masked: bool) -> tuple[int, int]:
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
    replacement alike. A term added in the products' (B·H, Nq, Nk) frame is laid out as (B, H, Nq, Nk); with
    fewer than two batch dimensions the frames are one (the kernel runs them as (1, B·H) or (1, 1))."""

    def in_softmax_frame(term: torch.Tensor, product_frame: bool) -> torch.Tensor:
        if product_frame and len(lead) == 2:
            return term.expand(math.prod(lead), n_q, n_k).reshape(*lead, n_q, n_k)
        return term

    total = None
    for term, coefficient, product_frame in additive:
        term = in_softmax_frame(term, product_frame)
        if term.dtype == torch.bool:
            term = term.to(dtype)
        if coefficient != 1.0:
            term = term * coefficient
        total = term if total is None else total + term
    keep = None
    for mask, true_drops, product_frame in drops:
        mask = in_softmax_frame(mask, product_frame)
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
    if not probe.row_major() or not _same_shape(final[-2:], product_shape[-2:]):
        raise NotAttention("the softmax does not run over each query's keys as Q·Kᵀ laid them out")
    lead = final[:-2]
    value_product, walked = probs_to_value_product(softmax, fake_mode, lead, product_shape)
    lead = tuple(lead)
    if scores.product.target is aten.baddbmm.default:
        query, key_t = scores.product.args[1], scores.product.args[2]
    else:
        query, key_t = scores.product.args[0], scores.product.args[1]
    value = value_product.args[1]
    key_kv = _repeated_heads(key_t, lead, True, fake_mode)
    value_kv = _repeated_heads(value, lead, False, fake_mode) if key_kv is not None else None
    if value_kv is None:
        key_kv = None  # both or neither: the kernel takes K and V with the same heads
    final_layout, product_layout = probe.layout(), _Probe(product_shape, fake_mode).layout()

    def in_product_frame(at: tuple) -> bool:
        """Whether a term met the scores laid out as Q·Kᵀ made them rather than as the softmax reads them."""
        if _same_layout(at, final_layout):
            return False
        if _same_layout(at, product_layout):
            return True
        raise NotAttention("a term meets the scores in a layout that is neither Q·Kᵀ's nor the softmax's")

    additive = tuple((term, coefficient, in_product_frame(at)) for term, coefficient, at in scores.additive)
    drops = tuple((mask, true_drops, in_product_frame(at)) for mask, true_drops, at in scores.drops)
    heads = _heads_layout(lead, bool(additive or drops))
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


def _describe(product: torch.fx.Node, softmax: Softmax, additive: Sequence, drops: Sequence,
              repeated_heads: bool) -> str:
    parts = [_op_name(product), "decomposed softmax" if softmax.inner else _op_name(softmax.probs)]
    if repeated_heads:
        parts.append("repeated KV heads")
    if additive:
        parts.append(f"{len(additive)} additive term{'s' if len(additive) > 1 else ''}")
    if drops:
        parts.append("filled mask")
    return f"hand-written ({', '.join(parts)})"


@dataclass(frozen=True)
class SymbolSlot:
    """A symbolic size the traced replacement receives as its input number ``index`` among the sizes."""

    index: int


def replace(graph: torch.fx.Graph, found: Recognised, fake_mode: Any, settings: Settings, site_key: str) -> None:
    """Replace the attention ``found`` describes by the INT8 op, traced and inlined before its P·V product.

    The replacement is traced on the inputs' fake values; symbolic sizes it needs beyond their shapes (the
    head count of a (B·H, N, D) operand, the output's shape) are inputs too, read from the graph (``SizeNodes``)."""
    site = found.site
    heads = _heads_layout(found.lead, bool(found.additive or found.drops))
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
        traced = fwd_only(replacement, [n.meta["val"] for n in inputs] + symbols)
    env: dict[torch.fx.Node, Any] = {}
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    env.update(zip(placeholders, inputs + size_nodes, strict=True))
    result = None
    with graph.inserting_before(found.value_product):
        for node in traced.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                result = env[node.args[0]] if isinstance(node.args[0], torch.fx.Node) else env[node.args[0][0]]
                break
            if node.op == "get_attr":
                raise NotAttention("the replacement holds a constant tensor")  # never: it builds none
            env[node] = graph.node_copy(node, lambda arg: env[arg])
    found.value_product.replace_all_uses_with(result)
    sizes.rehome_size_queries(found.region)


def rewrite_attention(graph: torch.fx.Graph, context: CompileContext) -> list[tuple[torch.fx.Node, str]]:
    """Rewrite every attention the structure shows to INT8 (where ``decide`` approves); returns the softmax
    nodes that looked like attention but were not, with the reason (for the report of what stayed)."""
    from torch._guards import detect_fake_mode

    declined = []
    for node in list(graph.nodes):
        if node.op != "call_function" or _val(node) is None:
            continue
        if node.target not in _SOFTMAX_OPS and node.target not in (aten.div.Tensor, aten.where.self):
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
