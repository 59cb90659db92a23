"""The walks from the softmax back to Q·Kᵀ (reading the scale, added terms and drops) and on to P·V, and the
repeated KV heads of GQA undone."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ..graph_values import uniform_value
from ..symbolic_sizes import value_users
from .graph_ops import DROPPING_FILL, LAYOUT_OPS, PRODUCTS, SAME_VALUES, NotAttention, op_name, tensor_value
from .layout_probe import LayoutProbe
from .softmax_forms import Softmax

aten = torch.ops.aten


def reaches_product(node: Any, depth: int = 16) -> bool:
    """Whether ``node`` is a matrix product, or computed from one through the ops a scores chain may hold."""
    if depth == 0 or not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return False
    target = node.target
    if target in PRODUCTS:
        return True
    if target in SAME_VALUES or target in LAYOUT_OPS or target in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
        return reaches_product(node.args[0], depth - 1)
    if target in (aten.mul.Tensor, aten.div.Tensor, aten.add.Tensor, aten.sub.Tensor):
        return any(reaches_product(arg, depth - 1) for arg in node.args[:2])
    if target is aten.where.self:
        return any(reaches_product(arg, depth - 1) for arg in node.args[1:])
    return False


def is_random(node: torch.fx.Node) -> bool:
    """A random op (``rand``, ``bernoulli``, ``native_dropout``, Inductor's random ops…): dropout's ingredients."""
    name = str(node.target)
    return any(word in name for word in ("rand", "bernoulli", "dropout", "uniform"))


def random_within(node: Any, depth: int = 4) -> bool:
    """Whether ``node`` is computed from a random op within ``depth`` steps (a dropout mask)."""
    if depth == 0 or not isinstance(node, torch.fx.Node):
        return False
    return is_random(node) or any(random_within(arg, depth - 1) for arg in node.all_input_nodes)


@dataclass
class Scores:
    """What the walk from the softmax back to Q·Kᵀ read: the product, the scale and the terms added."""

    product: torch.fx.Node
    scale: float = 1.0
    additive: list[tuple[torch.fx.Node, float, tuple]] = field(default_factory=list)
    """(term, coefficient, layout of the scores where it was added: ``LayoutProbe.layout``)."""
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
        if node.target in PRODUCTS:
            return node, chain[::-1]
        allowed_users = {node}
        check_cast(node)
        step = _SCORE_STEPS.get(node.target)
        if step is None:
            raise NotAttention(f"'{op_name(node)}' stands between Q·Kᵀ and the softmax")
        source = step.source(node)
        chain.append((node, source))
        node = source


def check_cast(node: torch.fx.Node) -> None:
    """A cast on the way is a change of precision only if it stays floating point."""
    value = tensor_value(node)
    if node.target in SAME_VALUES and value is not None and not value.dtype.is_floating_point:
        raise NotAttention(f"the scores or weights are cast to {value.dtype}")


def same_shape(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(statically_known_true(x == y) for x, y in zip(a, b, strict=True))


def same_layout(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(
        same_shape((size_a,), (size_b,)) and (stride_a is None) == (stride_b is None)
        and (stride_a is None or statically_known_true(stride_a == stride_b))
        for (size_a, stride_a), (size_b, stride_b) in zip(a, b, strict=True))


def _flows_through_first(node: torch.fx.Node) -> torch.fx.Node:
    return node.args[0]


def _flows_through_arithmetic(node: torch.fx.Node) -> torch.fx.Node:
    """The one operand of a mul/div/add/sub computed from the product (the other is the scale or the term)."""
    tensors = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
    leading = [a for a in tensors if reaches_product(a)]
    if len(leading) != 1:
        raise NotAttention("the scores combine two matrix products" if leading
                           else "the softmax input does not come from a matrix product")
    if node.target is aten.div.Tensor and node.args[1] is leading[0]:
        raise NotAttention("the scores divide a number")
    if node.target is aten.sub.Tensor and node.args[1] is leading[0]:
        raise NotAttention("the scores are subtracted from a term")
    return leading[0]


def _flows_through_where(node: torch.fx.Node) -> torch.fx.Node:
    leading = [a for a in node.args[1:] if reaches_product(a)]
    if len(leading) != 1:
        raise NotAttention("a where() between Q·Kᵀ and softmax does not select scores against a fill")
    return leading[0]


def _read_layout(node: torch.fx.Node, chain_input: torch.fx.Node, found: Scores, probe: LayoutProbe) -> None:
    probe.replay(node)


def _read_nothing(node: torch.fx.Node, chain_input: torch.fx.Node, found: Scores, probe: LayoutProbe) -> None:
    """A clone or a floating cast: the values stay (``check_cast`` refused the others on the way)."""


def _read_scale(node: torch.fx.Node, chain_input: torch.fx.Node, found: Scores, probe: LayoutProbe) -> None:
    """A factor of the scale: a number (folded into ``found.scale`` and the terms added so far) or one known only
    at run time (kept in ``found.factors``)."""
    other = _other(node, chain_input)
    factor = uniform_value(other)
    if factor is None:
        if not run_time_number(other):
            raise NotAttention("the scores are multiplied by a tensor, not a number")
        if found.additive or found.drops:
            raise NotAttention("a term is added to the scores before a scale known only at run time")
        found.factors.append((other, 1 if node.target is aten.mul.Tensor else -1))
        return
    factor = factor if node.target is aten.mul.Tensor else 1.0 / factor
    found.scale *= factor
    found.additive = [(term, coefficient * factor, at) for term, coefficient, at in found.additive]
    if factor <= 0 and found.drops:
        raise NotAttention("dropped scores are scaled by a non-positive number")


def _read_term(node: torch.fx.Node, chain_input: torch.fx.Node, found: Scores, probe: LayoutProbe) -> None:
    """A term added to (or subtracted from) the scores; a number the same for every score is no term."""
    term = _other(node, chain_input)
    number = uniform_value(term)
    if (number is not None and math.isfinite(number)) or is_zeros(term):
        return  # the same for every score: softmax does not see it
    if not isinstance(term, torch.fx.Node) or tensor_value(term) is None:
        raise NotAttention("something other than a tensor or a finite number is added to the scores")
    alpha = uniform_value(node.kwargs.get("alpha", 1.0))
    if alpha is None:
        raise NotAttention("a term is added to the scores with a tensor alpha")
    found.additive.append((term, alpha if node.target is aten.add.Tensor else -alpha, probe.layout()))


def _read_where(node: torch.fx.Node, chain_input: torch.fx.Node, found: Scores, probe: LayoutProbe) -> None:
    condition, kept, filled = node.args
    fill = uniform_value(filled if kept is chain_input else kept)
    if fill is None or fill > DROPPING_FILL:
        raise NotAttention("a where() fills scores with something other than a dropping value")
    found.drops.append((condition, kept is not chain_input, probe.layout()))


def _read_masked_fill(node: torch.fx.Node, chain_input: torch.fx.Node, found: Scores, probe: LayoutProbe) -> None:
    fill = uniform_value(node.args[2])
    if fill is None or fill > DROPPING_FILL:
        raise NotAttention("masked_fill fills scores with something other than a dropping value")
    found.drops.append((node.args[1], True, probe.layout()))


@dataclass(frozen=True)
class _ScoreStep:
    """What one op between Q·Kᵀ and the softmax is to the walk: the argument the scores flow through (found
    walking back from the softmax) and what it does to them (read walking forward from the product)."""

    source: Callable[[torch.fx.Node], torch.fx.Node]
    read: Callable[[torch.fx.Node, torch.fx.Node, Scores, LayoutProbe], None]


_SCORE_STEPS: dict[Any, _ScoreStep] = {
    **{target: _ScoreStep(_flows_through_first, _read_layout) for target in LAYOUT_OPS},
    **{target: _ScoreStep(_flows_through_first, _read_nothing) for target in SAME_VALUES},
    aten.mul.Tensor: _ScoreStep(_flows_through_arithmetic, _read_scale),
    aten.div.Tensor: _ScoreStep(_flows_through_arithmetic, _read_scale),
    aten.add.Tensor: _ScoreStep(_flows_through_arithmetic, _read_term),
    aten.sub.Tensor: _ScoreStep(_flows_through_arithmetic, _read_term),
    aten.where.self: _ScoreStep(_flows_through_where, _read_where),
    aten.masked_fill.Scalar: _ScoreStep(_flows_through_first, _read_masked_fill),
    aten.masked_fill.Tensor: _ScoreStep(_flows_through_first, _read_masked_fill),
}
"""Every op the walk between Q·Kᵀ and the softmax goes through, and how: one table for finding the chain and for
reading it, so the two cannot disagree on what stands between."""


def read_scores(softmax: Softmax, fake_mode: Any) -> tuple[Scores, LayoutProbe]:
    """The product, scale and terms of the scores a softmax normalizes, and the probe of their layout."""
    product, chain = _scores_chain(softmax.scores, softmax.inner, softmax.probs)
    found = Scores(product, region={product, *(node for node, _ in chain)})
    probe = LayoutProbe(product.meta["val"].shape, fake_mode)
    if product.target is aten.baddbmm.default:
        alpha = uniform_value(product.kwargs.get("alpha", 1.0))
        beta = uniform_value(product.kwargs.get("beta", 1.0))
        if alpha is None or beta is None:
            raise NotAttention("baddbmm's alpha or beta is not a number")
        found.scale = alpha
        if beta != 0.0 and not is_zeros(product.args[0]):
            found.additive.append((product.args[0], beta, probe.layout()))
    for node, chain_input in chain:
        _SCORE_STEPS[node.target].read(node, chain_input, found, probe)
    if not math.isfinite(found.scale) or found.scale <= 0:
        raise NotAttention(f"the scores' scale {found.scale} is not a positive number")
    return found, probe


def run_time_number(node: Any) -> bool:
    """A number the graph computes when it runs: a one-element floating tensor or a symbolic float or int."""
    if not isinstance(node, torch.fx.Node):
        return False
    value = node.meta.get("val")
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return True
    return (isinstance(value, torch.Tensor) and value.dtype.is_floating_point
            and statically_known_true(value.numel() == 1))


def is_zeros(node: Any) -> bool:
    """A tensor of zeros made in the graph (GPT-NeoX's ``baddbmm`` input): adding it changes nothing."""
    return (isinstance(node, torch.fx.Node) and node.op == "call_function"
            and node.target in (aten.full.default, aten.zeros.default)
            and (node.target is aten.zeros.default or uniform_value(node.args[1]) == 0.0))


def probs_to_value_product(softmax: Softmax, fake_mode: Any, lead: Sequence[Any], product_shape: Sequence[Any]
                           ) -> tuple[torch.fx.Node, list[torch.fx.Node]]:
    """The product P·V the probabilities feed as left operand, and the ops on the way to it; checks that it
    receives them laid out as Q·Kᵀ produced them (``product_shape``)."""
    node, walked = softmax.probs, []
    probe = LayoutProbe([*lead, *node.meta["val"].shape[-2:]], fake_mode)
    while True:
        users = value_users(node)
        if len(users) != 1:
            raise NotAttention("its attention weights are also used elsewhere (returned by the model or saved "
                               "for backward)")
        (user,) = users
        if user.target in PRODUCTS and user.target is not aten.baddbmm.default:
            if user.args[0] is not node:
                raise NotAttention("the attention weights are the right operand of their product")
            if not probe.row_major() or not same_shape(probe.tensor.shape, product_shape):
                raise NotAttention("the attention weights are re-laid out before P·V")
            return user, walked
        if is_random(user) or (user.target is aten.mul.Tensor and random_within(user)):
            raise NotAttention("dropout in training mode between the softmax and P·V; the INT8 kernel has none")
        check_cast(user)
        if user.target in LAYOUT_OPS:
            probe.replay(user)
        elif user.target not in SAME_VALUES:
            raise NotAttention(f"'{op_name(user)}' stands between the softmax and P·V")
        walked.append(user)
        node = user


def repeated_heads(operand: torch.fx.Node, lead: tuple[int, ...], transposed: bool, fake_mode: Any
                    ) -> torch.fx.Node | None:
    """The un-repeated (B, Hk, N, D) tensor behind a product operand made by repeating KV heads as Hugging Face's
    ``repeat_kv`` does (unsqueeze, expand, reshape to (B, Hk·rep, N, D)), or None. ``operand`` is (B·H, D, N)
    (``transposed``: K in Q·Kᵀ) or (B·H, N, D) (V); the layout from the repeated tensor to it is checked with a
    probe, so only the matmul's own view of (B, H, N, D) heads is accepted."""
    if len(lead) != 2:
        return None
    chain, node = [], operand
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and (
            node.target in LAYOUT_OPS or node.target in SAME_VALUES):
        if node.target is aten.expand.default:
            source = node.args[0]
            if (isinstance(source, torch.fx.Node) and source.target is aten.unsqueeze.default
                    and source.args[1] == 2 and tensor_value(source.args[0]) is not None
                    and tensor_value(source.args[0]).dim() == 4):
                break
        chain.append(node)
        node = node.args[0]
    else:
        return None
    unrepeated = node.args[0].args[0]
    batch, kv_heads, n, dim = tensor_value(unrepeated).shape
    after = [op for op in reversed(chain) if op.target not in SAME_VALUES]
    if not after or after[0].target not in (aten.view.default, aten._unsafe_view.default, aten.reshape.default):
        return None
    merged = tuple(tensor_value(after[0]).shape)
    if not same_shape(merged, (batch, lead[1], n, dim)) or not same_shape(merged[:2], lead):
        return None
    probe = LayoutProbe(merged, fake_mode)
    for op in after[1:]:
        probe.replay(op)
    expected = LayoutProbe(merged, fake_mode)
    with fake_mode:
        heads = expected.tensor.transpose(-1, -2) if transposed else expected.tensor
        expected.tensor = heads.reshape(-1, *heads.shape[-2:])
    same = same_shape(probe.tensor.shape, expected.tensor.shape) and all(
        statically_known_true(size == 1) or statically_known_true(a == b)
        for size, a, b in zip(probe.tensor.shape, probe.tensor.stride(), expected.tensor.stride(), strict=True))
    return unrepeated if same else None
