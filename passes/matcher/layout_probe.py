"""Which element of Q·Kᵀ each position of a re-laid-out tensor holds: the check that a softmax runs over each
query's keys, whatever views and permutes stand between."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .graph_ops import NotAttention

aten = torch.ops.aten


class LayoutProbe:
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
                except (RuntimeError, ValueError) as error:  # a regrouping a strided map cannot follow (fake
                    # tensors raise ValueError from torch._refs, real ones RuntimeError)
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
        """Whether the current tensor lists the product's elements in their order (``is_row_major``)."""
        return is_row_major(self.layout())


def is_row_major(layout: tuple) -> bool:
    """Whether a ``LayoutProbe.layout`` lists the product's elements in their order: its strides are those of a
    contiguous tensor of its shape, size-1 dimensions aside."""
    expected = 1
    for size, stride in reversed(layout):
        if stride is not None and not statically_known_true(stride == expected):
            return False
        expected = expected * size
    return True
