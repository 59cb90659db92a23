"""The aten ops the matcher walks through, what it raises when a structure is not attention, and small reads of
FX nodes the other modules share."""

from __future__ import annotations

from typing import Any

import torch

aten = torch.ops.aten
prims = torch.ops.prims

PRODUCTS = (aten.bmm.default, aten.baddbmm.default, aten.mm.default)
"""The matrix products Q·Kᵀ and P·V reach the graph as (``matmul``, ``einsum`` and ``baddbmm`` all lower to these)."""
SAME_VALUES = (aten.clone.default, prims.convert_element_type.default, aten._to_copy.default, aten.alias.default)
"""Ops that keep the values (a cast is checked to stay floating point: ``check_cast``)."""
LAYOUT_OPS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
              aten.transpose.int, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
              aten.expand.default, aten.t.default)
"""Ops that move values: replayed on the layout probe to check where each score lands."""
SOFTMAX_OPS = (aten._softmax.default, aten.softmax.int, aten._safe_softmax.default)
"""The softmax as one op (its decompositions: ``softmax_forms``)."""

DROPPING_FILL = -1e4
"""A fill at or below this drops its score (exp underflows to 0 against any real score maximum): −inf,
``finfo.min`` (Hugging Face) and GPT-2's historical −10⁴."""


class NotAttention(Exception):
    """The structure around a softmax is not attention the INT8 op can take; the message says why."""


def tensor_value(node: Any) -> torch.Tensor | None:
    """The (fake) tensor a node computes, from its metadata; None for a non-tensor or a non-node."""
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


def op_name(node: torch.fx.Node) -> str:
    """The op's short name, for the reasons a site is left alone."""
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]
