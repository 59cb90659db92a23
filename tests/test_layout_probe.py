"""``passes/matcher/layout_probe.py``: the strided map of where each element of Q·Kᵀ lands after the layout ops
between the product and the softmax."""

from __future__ import annotations

import pytest
import torch
from intfa_compile.passes.matcher.graph_ops import NotAttention
from intfa_compile.passes.matcher.layout_probe import LayoutProbe, is_row_major
from torch._subclasses.fake_tensor import FakeTensorMode

aten = torch.ops.aten


def _probe_after(*steps: tuple) -> LayoutProbe:
    """A probe of a (2, 3, 5) product after replaying ``steps`` ((op, *arguments) each) as graph nodes."""
    graph = torch.fx.Graph()
    node = graph.placeholder("scores")
    probe = LayoutProbe((2, 3, 5), FakeTensorMode())
    for op, *arguments in steps:
        node = graph.call_function(op, (node, *arguments))
        probe.replay(node)
    return probe


def test_a_layout_undone_lists_the_product_in_order_again():
    assert _probe_after().row_major()
    transposed = _probe_after((aten.transpose.int, -1, -2))
    assert not transposed.row_major() and transposed.layout() == ((2, 15), (5, 1), (3, 5))
    back = _probe_after((aten.transpose.int, -1, -2), (aten.permute.default, [0, 2, 1]), (aten.view.default, [6, 5]))
    assert back.row_major() and back.layout() == ((6, 5), (5, 1))
    heads = _probe_after((aten.view.default, [1, 2, 3, 5]), (aten.squeeze.dim, 0), (aten.unsqueeze.default, 1))
    assert heads.row_major() and heads.layout() == ((2, 15), (1, None), (3, 5), (5, 1))


def test_a_regrouping_the_map_cannot_follow_and_a_broadcast_are_refused():
    with pytest.raises(NotAttention, match="cannot follow"):
        _probe_after((aten.transpose.int, -1, -2), (aten.view.default, [2, 15]))
    with pytest.raises(NotAttention, match="broadcast"):
        _probe_after((aten.unsqueeze.default, 1), (aten.expand.default, [2, 4, 3, 5]))
    _probe_after((aten.expand.default, [2, 3, 5]))  # expanding to the same sizes moves nothing


def test_row_major_is_a_contiguous_tensors_strides_size_one_dimensions_aside():
    assert is_row_major(((4, 6), (2, 3), (3, 1))) and is_row_major(((4, 6), (1, None), (6, 1)))
    assert not is_row_major(((4, 1), (6, 4))) and not is_row_major(((4, 6), (6, 2)))
