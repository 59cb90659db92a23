"""passes/symbolic_sizes.py: where a rewrite under dynamic shapes reads the symbolic sizes it needs, and which users
of a node read its values rather than its sizes."""

from __future__ import annotations

import pytest
import torch
from intfa_compile.passes.symbolic_sizes import SizeNodes, is_symbolic, value_users
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten


def _symbolic_graph() -> torch.fx.GraphModule:
    def scaled(x: torch.Tensor) -> torch.Tensor:
        return (x * 2).sum(-1) / x.shape[-1]

    return make_fx(scaled, tracing_mode="symbolic")(torch.randn(3, 5))


def test_sizes_are_read_from_a_surviving_tensor_after_it():
    gm = _symbolic_graph()
    (x,) = [node for node in gm.graph.nodes if node.op == "placeholder"]
    doubled = next(node for node in gm.graph.nodes if node.target is aten.mul.Tensor)
    rows, cols = doubled.meta["val"].shape
    assert is_symbolic(rows) and not is_symbolic(5)
    sizes = SizeNodes(gm.graph, [doubled])
    assert sizes.readable([rows, cols, 7])
    made = sizes.node(cols)
    assert made.target is aten.sym_size.int and made.args == (doubled, 1) and sizes.node(cols) is made  # once
    order = list(gm.graph.nodes)
    assert order.index(made) > order.index(doubled) and order.index(made) > order.index(x)


def test_a_size_no_node_holds_is_not_readable():
    gm = _symbolic_graph()
    doubled = next(node for node in gm.graph.nodes if node.target is aten.mul.Tensor)
    rows = doubled.meta["val"].shape[0]
    sizes = SizeNodes(torch.fx.Graph(), [])
    assert not sizes.readable([rows])
    with pytest.raises(ValueError, match="no node of the graph holds the size"):
        sizes.node(rows)


def test_value_users_leave_out_size_queries():
    gm = _symbolic_graph()
    (x,) = [node for node in gm.graph.nodes if node.op == "placeholder"]
    assert any(user.target is aten.sym_size.int for user in x.users)
    assert all(user.target is not aten.sym_size.int for user in value_users(x)) and value_users(x)
