"""passes/graph_values.py: the numbers a graph holds as constants (a scale, a fill, a bias), read where they are
the same everywhere, and nothing read where they are not."""

from __future__ import annotations

import torch
import torch.fx
from intfa_compile.passes.graph_values import uniform_value

aten = torch.ops.aten


def test_numbers_and_nodes_holding_one_number():
    assert uniform_value(2) == 2.0 and uniform_value(-0.5) == -0.5
    assert uniform_value(True) is None and uniform_value("x") is None  # a bool is no scale
    graph = torch.fx.Graph()
    full = graph.call_function(aten.full.default, ([4, 4], -1e9))
    scalar = graph.call_function(aten.scalar_tensor.default, (0.125,))
    cast = graph.call_function(torch.ops.prims.convert_element_type.default, (full, torch.float16))
    varying = graph.call_function(aten.arange.default, (4,))
    assert (uniform_value(full), uniform_value(scalar), uniform_value(cast)) == (-1e9, 0.125, -1e9)
    assert uniform_value(varying) is None


def test_a_lifted_one_element_constant_is_read_and_a_larger_one_is_not():
    module = torch.nn.Module()
    module.register_buffer("temperature", torch.tensor(0.25))
    module.register_buffer("bias", torch.ones(3))
    graph = torch.fx.Graph(owning_module=module)
    assert uniform_value(graph.get_attr("temperature")) == 0.25
    assert uniform_value(graph.get_attr("bias")) is None
