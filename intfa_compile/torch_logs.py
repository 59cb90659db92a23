"""What intfa-compile writes to torch's logging: the ``intfa`` log (each site's decision, from ``sites.record``) and
the ``intfa_graph`` artifact, the FX graph around each attention site a rewrite is approved for.

The names are registered by the top-level ``intfa_compile_torch_logs`` module (see there for why it is separate);
importing this module registers them too, for ``torch._logging.set_logs(intfa=..., intfa_graph=True)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from intfa_compile_torch_logs import GRAPH_ARTIFACT, LOGGER, register

register()


def graph_logger() -> logging.Logger:
    """The ``intfa_graph`` artifact's logger (enabled by ``TORCH_LOGS="intfa_graph"``; writes at DEBUG)."""
    return torch._logging.getArtifactLogger(LOGGER, GRAPH_ARTIFACT)


def site_subgraph(anchor: torch.fx.Node, inputs: Iterable[torch.fx.Node | None]) -> list[torch.fx.Node]:
    """The nodes between an attention site's inputs and its output ``anchor``, inputs included, in graph order:
    what the rewrite replaces."""
    stops = {node for node in inputs if node is not None}
    seen, pending = {anchor}, [anchor]
    while pending:
        node = pending.pop()
        if node in stops:
            continue
        for parent in node.all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                pending.append(parent)
    order = {node: index for index, node in enumerate(anchor.graph.nodes)}
    return sorted(seen, key=order.__getitem__)


def log_site_graph(title: str, anchor: torch.fx.Node, inputs: Iterable[torch.fx.Node | None]) -> None:
    """Write the subgraph of one site to the ``intfa_graph`` artifact, if it is enabled."""
    log = graph_logger()
    if not log.isEnabledFor(logging.DEBUG):
        return
    lines = [node.format_node() or node.name for node in site_subgraph(anchor, inputs)]
    log.debug("%s\n    %s", title, "\n    ".join(lines))
