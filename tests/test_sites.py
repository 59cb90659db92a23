"""Site identity across stages (``intfa_compile.sites``): a node a graph rewrite made without provenance (Inductor's
attention fusion before torch 2.13) is named by what an earlier stage left on its query, so it is neither a second
unnamed site in ``explain`` nor keyed ``<unknown>#n`` for static scales."""

from __future__ import annotations

import torch
from intfa_compile.passes.attention_site import AttentionSite
from intfa_compile.passes.context import CompileContext

from intfa_compile import config
from intfa_compile.sites import LEFT_ALONE, SITE_STAMP, stamp_site, stamped_site

STACK = 'File "model.py", line 42, in forward\n    out = attention(q, k, v)'


def _graph() -> tuple[torch.fx.Graph, dict[str, torch.fx.Node]]:
    """q → transpose → view (as a structural site's operand) and q → SDPA (as Inductor's fusion leaves it)."""
    graph = torch.fx.Graph()
    q, k, v = (graph.placeholder(name) for name in "qkv")
    for node in (q, k, v):
        node.meta["val"] = torch.empty(1, 2, 8, 16)
    moved = graph.call_function(torch.ops.aten.transpose.int, (q, 1, 2))
    operand = graph.call_function(torch.ops.aten.view.default, (moved, [1, 2, 8, 16]))
    operand.meta["val"] = torch.empty(1, 2, 8, 16)
    softmax = graph.call_function(torch.ops.aten._softmax.default, (operand, -1, False), name="softmax")
    softmax.meta["val"] = torch.empty(1, 2, 8, 16)
    softmax.meta["stack_trace"] = STACK
    fused = graph.call_function(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default, (q, k, v))
    fused.meta["val"] = torch.empty(1, 2, 8, 16)
    return graph, {"q": q, "k": k, "v": v, "operand": operand, "softmax": softmax, "fused": fused}


def _site(nodes: dict, anchor: str, query: str) -> AttentionSite:
    return AttentionSite(anchor=nodes[anchor], form="test", query=nodes[query], key=nodes["k"], value=nodes["v"],
                         attn_mask=None, is_causal=False, scale=None)


def test_a_site_left_alone_names_the_provenance_less_node_a_later_stage_meets():
    _, nodes = _graph()
    paths = {"softmax": "layers.3.attn"}
    first = CompileContext(config.resolve({"min_seq_len": 1000}), paths)
    first.begin_stage()
    assert not first.decide(_site(nodes, "softmax", "operand"))  # left alone: 8 keys < min_seq_len
    assert nodes["q"].meta[SITE_STAMP] == ("layers.3.attn", "model.py:42 forward", "layers.3.attn#0")

    later = _site(nodes, "fused", "q").record(paths, LEFT_ALONE)
    assert (later.module, later.source) == ("layers.3.attn", "model.py:42 forward")
    assert first.site_key(_site(nodes, "fused", "q")) == "layers.3.attn#0"


def test_a_node_with_its_own_provenance_keeps_it():
    _, nodes = _graph()
    stamp_site(nodes["q"], _site(nodes, "softmax", "operand").record({"softmax": "elsewhere"}, LEFT_ALONE), "k#0")
    nodes["fused"].meta["stack_trace"] = 'File "other.py", line 7, in forward\n    sdpa(q, k, v)'
    record = _site(nodes, "fused", "q").record({}, LEFT_ALONE)
    assert record.source == "other.py:7 forward"


def test_stamps_follow_shape_only_ops_and_stop_at_arithmetic():
    graph, nodes = _graph()
    scaled = graph.call_function(torch.ops.aten.mul.Tensor, (nodes["q"], 2.0))
    viewed = graph.call_function(torch.ops.aten.view.default, (scaled, [2, 8, 16]))
    stamp_site(viewed, _site(nodes, "softmax", "operand").record({}, LEFT_ALONE), "k#0")
    assert stamped_site(scaled) is not None
    assert stamped_site(nodes["q"]) is None  # the multiplication changes values: not the same query
