"""``passes/matcher/softmax_forms.py``: the softmax's op forms and decompositions over the last dimension."""

from __future__ import annotations

import torch
from intfa_compile.passes.graph_values import uniform_value
from intfa_compile.passes.matcher import softmax_at
from intfa_compile.passes.matcher.softmax_forms import over_last_dim


def test_softmax_forms_and_constants_are_recognised_on_a_traced_graph():
    """``softmax_at`` takes the op forms and the decomposition over the last dimension only; ``uniform_value``
    reads numbers and one-element constants."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def decomposed(x):
        shifted = x - x.amax(-1, keepdim=True)
        return shifted.exp() / shifted.exp().sum(-1, keepdim=True)

    x = torch.randn(2, 3, 5)
    for fn, last in ((lambda t: torch.softmax(t, -1), True), (lambda t: torch.softmax(t, 0), False),
                     (decomposed, False)):
        graph = make_fx(fn)(x).graph
        found = [softmax_at(node) for node in graph.nodes if node.op == "call_function"]
        assert any(f is not None for f in found) == last
    graph = make_fx(lambda t: torch.ops.aten._softmax(t, -1, False))(x).graph
    assert sum(softmax_at(node) is not None for node in graph.nodes) == 1
    graph = make_fx(lambda t: t / torch.full([], 4.0))(x).graph
    (full,) = [n for n in graph.nodes if n.target is torch.ops.aten.full.default]
    assert uniform_value(full) == 4.0 and uniform_value(2) == 2.0 and uniform_value(True) is None


def test_the_last_dimension_is_named_either_way():
    assert over_last_dim(-1, 4) and over_last_dim(3, 4)
    assert not over_last_dim(2, 4) and not over_last_dim(-2, 4)
