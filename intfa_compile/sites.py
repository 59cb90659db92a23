"""What happened to each attention site: one record per site, logged and collected for ``explain``.

The passes run deep inside Inductor, where the model's module structure is gone; the backend hands
them (in their compile context) the module path of every node of the graph Dynamo traced
(``module_paths_of``), and the passes follow a node's provenance (``meta["from_node"]``) back to it.
The records of a ``collect_sites`` block are the one state kept across compilations: the user opens it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from .pv_formats import PV_FORMATS

log = logging.getLogger("intfa_compile")

LEFT_ALONE = "left alone"
"""The outcome of a site the rewrite did not take (a rewritten one records its P·V format's ``outcome``)."""


def rewritten_sites(intfa_counters: dict) -> int:
    """Sites rewritten to the INT8 op in any P·V format, from ``torch._dynamo.utils.counters["intfa"]``."""
    return sum(intfa_counters.get(fmt.counter, 0) for fmt in PV_FORMATS.values())


@dataclass(frozen=True)
class SiteRecord:
    """One attention site and its outcome."""

    module: str
    """Module path of the attention in the model (e.g. ``encoder.layer.0.attention.self``)."""
    source: str
    """The user's source line that computes it (``file.py:LINE function``)."""
    form: str
    """How it was written: ``sdpa`` (which aten form) or the hand-written pattern that matched."""
    shapes: str
    """q, k (and v) shapes, B×H×N×D."""
    mask: str
    """``none``, ``bool`` or ``additive`` with its shape."""
    causal: bool
    gqa: str
    """``Hq/Hk`` when query heads share KV heads, else empty."""
    outcome: str
    """``INT8``, ``half-INT8`` or ``left alone``."""
    reason: str
    """Why it was left alone (empty otherwise)."""
    node: str = ""
    """Name of the graph node the site was found at (to match later records of the same site)."""


_records: contextvars.ContextVar[list[SiteRecord] | None] = contextvars.ContextVar("intfa_records", default=None)


def retract(site: SiteRecord) -> None:
    """Drop ``site`` from the collection (its rewrite failed after all, or a later stage reported the site)."""
    records = _records.get()
    if records is not None:
        records[:] = [kept for kept in records if kept is not site]


def record(site: SiteRecord, warn: bool = False) -> None:
    """Log one line for ``site`` (a warning if ``warn``) and add it to the ``collect_sites`` collection."""
    if site.outcome == LEFT_ALONE:
        (log.warning if warn else log.info)("intfa: attention at %s [%s] left alone: %s", site.module, site.source,
                                            site.reason)
    else:
        log.info("intfa: attention at %s [%s] runs %s (%s, mask %s, causal %s)", site.module, site.source,
                 site.outcome, site.shapes, site.mask, site.causal)
    records = _records.get()
    if records is not None:
        records.append(site)


@contextlib.contextmanager
def collect_sites() -> Iterator[list[SiteRecord]]:
    """Collect the records of every site compiled inside the ``with`` block."""
    records: list[SiteRecord] = []
    token = _records.set(records)
    try:
        yield records
    finally:
        _records.reset(token)


def _clean_module_path(dynamo_path: str) -> str:
    # Dynamo names modules from the frame's locals: "L['self'].encoder.layer[0]", "L['args'][0].layers[1]".
    path = re.sub(r"^L\['[^']*'\](\[\d+\])?\.?", "", dynamo_path)
    path = re.sub(r"\[(\d+)\]", r".\1", path).replace("['", ".").replace("']", "")
    return path.strip(".") or "<model>"


def module_paths_of(gm: torch.fx.GraphModule) -> dict[str, str]:
    """The module path of each node of Dynamo's graph ``gm``, by node name."""
    # A node outside every submodule belongs to the compiled module itself.
    return {node.name: _stack_module_path(node, "<model>") for node in gm.graph.nodes}


def _stack_module_path(node: torch.fx.Node, default: str) -> str:
    """The innermost module of ``node``'s ``nn_module_stack``, or ``default`` where it has none."""
    stack = node.meta.get("nn_module_stack")
    return _clean_module_path(list(stack.values())[-1][0]) if stack else default


def _root_source_name(node: torch.fx.Node) -> str | None:
    sources = node.meta.get("from_node")
    name = None
    while sources:
        source = sources[-1] if isinstance(sources, list) else sources
        name = source.name
        sources = source.from_node
    return name


def module_path(node: torch.fx.Node, paths: Mapping[str, str], max_hops: int = 6) -> str:
    """Module path of the model code that produced ``node`` (``paths``: ``module_paths_of`` Dynamo's graph), or
    ``<unknown>``.

    A node made by a graph rewrite may have lost its provenance; then the nearest input that kept
    it (within ``max_hops``) speaks for it.
    """
    frontier, seen = [node], {node}
    for _ in range(max_hops):
        for candidate in frontier:
            name = _root_source_name(candidate)
            if name in paths:
                return paths[name]
        frontier = [n for c in frontier for n in c.all_input_nodes if n not in seen]
        seen.update(frontier)
    if node.name in paths:
        return paths[node.name]
    return _stack_module_path(node, "<unknown>")  # a graph no Dynamo trace names (an exported program's, say)


SITE_STAMP = "intfa_site"
"""``node.meta`` key under which a stage leaves a site's (module path, source line, site key) on its query and the
query's shape-only ancestors (``stamp_site``), for a later stage that meets the same attention in a form a graph
rewrite made without provenance (``stamped_site``)."""

_SHAPE_ONLY = frozenset({"view", "reshape", "_unsafe_view", "expand", "clone", "permute", "transpose", "contiguous",
                         "unsqueeze", "squeeze", "alias", "t"})
"""Ops (by overload packet name) that move a tensor without changing its values: a query's way to the products."""


def _shape_only_chain(node: torch.fx.Node, hops: int) -> list[torch.fx.Node]:
    """``node`` and up to ``hops`` ancestors reached through its first argument while the ops only move data."""
    chain = [node]
    while len(chain) <= hops:
        target = getattr(chain[-1].target, "__name__", str(chain[-1].target)).split(".")[0]
        first = chain[-1].args[0] if chain[-1].args else None
        if chain[-1].op != "call_function" or target not in _SHAPE_ONLY or not isinstance(first, torch.fx.Node):
            break
        chain.append(first)
    return chain


def stamp_site(query: torch.fx.Node, site: SiteRecord, key: str, hops: int = 4) -> None:
    """Leave ``site``'s module path, source line and site ``key`` (static scales are found by it) on ``query`` and
    its shape-only ancestors (see ``SITE_STAMP``).

    Inductor's attention fusion turns hand-written attention a stage left alone into SDPA; before torch 2.13 its
    pattern replacement copies neither ``stack_trace`` nor ``from_node`` onto the new node, which would then
    report as a second, unnamed site (and key static scales as ``<unknown>``)."""
    for node in _shape_only_chain(query, hops):
        node.meta.setdefault(SITE_STAMP, (site.module, site.source, key))


def stamped_site(query: torch.fx.Node, hops: int = 4) -> tuple[str, str, str] | None:
    """The (module path, source line, site key) an earlier stage left on ``query`` or a shape-only ancestor."""
    for node in _shape_only_chain(query, hops):
        if SITE_STAMP in node.meta:
            return node.meta[SITE_STAMP]
    return None


def has_provenance(node: torch.fx.Node) -> bool:
    """Whether ``node`` says where it came from (a stack trace or a source node)."""
    return bool(node.meta.get("stack_trace") or node.meta.get("from_node"))


def source_line(node: torch.fx.Node) -> str:
    """The innermost user frame of ``node``'s stack trace as ``file.py:LINE function``."""
    frames = [line.strip() for line in node.meta.get("stack_trace", "").splitlines()
              if line.strip().startswith("File ")]
    if not frames:
        return node.name
    path, line, func = frames[-1][len("File "):].split(", ", 2)
    return f"{path.strip(chr(34)).rsplit('/', 1)[-1]}:{line.split()[-1]} {func.removeprefix('in ')}"
