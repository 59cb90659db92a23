"""Graph nodes for symbolic sizes, so a replacement traced under dynamic shapes can be inlined into a graph.

Under ``torch.compile(..., dynamic=True)`` sizes are ``SymInt``s. A replacement that needs one it cannot read
from its own tensor inputs (the head count of a (B·H, N, D) operand, say) takes it as an input, and the graph
must hold a node computing it: a placeholder that carries it (Dynamo passes every symbolic size as one), or a
``sym_size`` of a tensor that has it as a dimension. Sizes are compared by value for every value the symbols
may take (``statically_known_true``), never by guessing, and no guard is added.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

aten = torch.ops.aten

SIZE_QUERIES = (aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default, aten.sym_storage_offset.default)
"""Ops that read a tensor's sizes, not its values."""


def value_users(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The users of ``node`` that read its values, not only its sizes (``sym_size`` under dynamic shapes)."""
    return [user for user in node.users if user.target not in SIZE_QUERIES]


def is_symbolic(size: Any) -> bool:
    return isinstance(size, torch.SymInt)


class SizeNodes:
    """Where each symbolic size a rewrite needs can be read in ``graph``: a placeholder holding it, or a dimension
    of one of ``tensors`` (nodes that stay in the graph: the replacement's inputs)."""

    def __init__(self, graph: torch.fx.Graph, tensors: Iterable[torch.fx.Node]) -> None:
        self.graph = graph
        self.placeholders = [node for node in graph.nodes
                             if node.op == "placeholder" and is_symbolic(node.meta.get("val"))]
        self.tensors = [node for node in tensors if isinstance(node.meta.get("val"), torch.Tensor)]
        self._made: dict[tuple[torch.fx.Node, int], torch.fx.Node] = {}

    def _source(self, size: torch.SymInt) -> torch.fx.Node | tuple[torch.fx.Node, int] | None:
        for node in self.placeholders:
            if statically_known_true(node.meta["val"] == size):
                return node
        for node in self.tensors:
            for dim, extent in enumerate(node.meta["val"].shape):
                if statically_known_true(extent == size):
                    return node, dim
        return None

    def readable(self, sizes: Sequence[Any]) -> bool:
        """Whether every symbolic size in ``sizes`` can be read in the graph."""
        return all(self._source(size) is not None for size in sizes if is_symbolic(size))

    def node(self, size: torch.SymInt) -> torch.fx.Node:
        """A node whose value is ``size`` and that comes before every user of the tensors it was read from."""
        source = self._source(size)
        if source is None:
            raise ValueError(f"no node of the graph holds the size {size}")
        if isinstance(source, torch.fx.Node):
            return source
        if source not in self._made:
            tensor, dim = source
            # After the tensor, and after every placeholder: Inductor expects its inputs first.
            where = tensor if tensor.op != "placeholder" else [n for n in self.graph.nodes if n.op == "placeholder"][-1]
            with self.graph.inserting_after(where):
                made = self.graph.call_function(aten.sym_size.int, (tensor, dim))
            made.meta["val"] = tensor.meta["val"].shape[dim]
            self._made[source] = made
        return self._made[source]

    def rehome_size_queries(self, dying: Iterable[torch.fx.Node]) -> None:
        """Point the ``sym_size`` readers of nodes a rewrite removes at a surviving node of the same value, so
        that reading a size does not keep the removed computation alive. A size no surviving node holds keeps
        its reader (and the computation stays, correct but wasted)."""
        for node in dying:
            for user in list(node.users):
                if user.target is aten.sym_size.int and is_symbolic(user.meta.get("val")) and \
                        self._source(user.meta["val"]) is not None:
                    user.replace_all_uses_with(self.node(user.meta["val"]))
