"""``passes/matcher/graph_ops.py``: the op sets the matcher walks through and its small reads of FX nodes."""

from __future__ import annotations

import torch
from intfa_compile.passes.matcher.graph_ops import LAYOUT_OPS, PRODUCTS, SAME_VALUES, SOFTMAX_OPS, op_name, tensor_value
from torch.fx.experimental.proxy_tensor import make_fx


def test_a_nodes_tensor_is_read_from_its_metadata():
    graph = make_fx(lambda a, b: torch.bmm(a, b).softmax(-1))(torch.randn(2, 3, 4), torch.randn(2, 4, 5)).graph
    product = next(node for node in graph.nodes if node.target in PRODUCTS)
    assert tensor_value(product).shape == (2, 3, 5) and op_name(product) == "bmm"
    softmax = next(node for node in graph.nodes if node.target in SOFTMAX_OPS)
    assert op_name(softmax) == "_softmax"
    product.meta["val"] = 3
    assert tensor_value(product) is None and tensor_value(2.0) is None and tensor_value(None) is None


def test_the_op_sets_do_not_overlap():
    """An op is a product, a value-keeping op, a layout op or a softmax, never two of them: each walk reads an op
    by the one set it is in."""
    sets = [set(PRODUCTS), set(SAME_VALUES), set(LAYOUT_OPS), set(SOFTMAX_OPS)]
    assert sum(len(s) for s in sets) == len(set().union(*sets))
