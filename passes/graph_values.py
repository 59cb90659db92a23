"""Values a graph holds as constants: what a scale, a fill or a bias term is, where it is a number."""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

aten = torch.ops.aten
prims = torch.ops.prims


def uniform_value(arg: Any) -> float | None:
    """A number, or the value of a node holding one everywhere: ``full``, ``scalar_tensor``, a one-element
    ``torch.tensor(x)`` lifted into the graph, a cast or copy of one."""
    if isinstance(arg, bool):
        return None
    if isinstance(arg, (int, float)):
        return float(arg)
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":  # a tensor constant the model built
        constant = getattr(arg.graph.owning_module, arg.target, None)
        if not isinstance(constant, torch.Tensor) or constant.numel() != 1:
            return None
        with unset_fake_temporarily():  # passes run under the graph's fake mode; this is a real tensor
            return float(constant.item())
    if not isinstance(arg, torch.fx.Node) or arg.op != "call_function":
        return None
    if arg.target is aten.full.default:
        return uniform_value(arg.args[1])
    if arg.target is aten.scalar_tensor.default:
        return uniform_value(arg.args[0])
    if arg.target in (prims.convert_element_type.default, aten._to_copy.default, aten.clone.default,
                      aten.lift_fresh_copy.default):
        return uniform_value(arg.args[0])
    return None
