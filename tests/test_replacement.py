"""``passes/matcher/replacement.py``: the recognised site is replaced through Inductor's own replacement
utilities, so the new nodes keep the site's provenance."""

from __future__ import annotations

import torch
from torch._inductor import config as inductor_config

from intfa_compile.sites import collect_sites
from tests.helpers import DEFAULT_OUTCOME
from tests.matcher_cases import only_site, qkv


class _HandWritten(torch.nn.Module):
    def forward(self, q, k, v):
        scores = torch.matmul(q, k.transpose(-1, -2)) * 0.25
        return torch.matmul(scores.softmax(-1), v)  # the P·V line the rewrite's nodes must name


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = _HandWritten()

    def forward(self, q, k, v):
        return self.attention(q, k, v)


def test_the_rewrites_nodes_keep_the_sites_provenance():
    """The nodes that replace hand-written attention carry its P·V product's stack trace and module path (the
    rewrite goes through Inductor's own ``replace_by_example``), so Inductor's provenance and generated code name
    the model's line. A hand-written copy of the traced nodes had neither."""
    from torch._inductor.custom_graph_pass import CustomGraphPass

    seen = []

    class Spy(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            seen.extend(node.meta for node in graph.nodes if node.target is torch.ops.intfa.int8_attention.default)

        def uuid(self) -> None:
            return None

    torch._dynamo.reset()
    with torch.no_grad(), inductor_config.patch(post_grad_custom_pre_pass=Spy(), pattern_matcher=False,
                                                fx_graph_cache=False), collect_sites() as sites:
        torch.compile(_Block(), backend="intfa")(*qkv())
    assert only_site(sites).outcome == DEFAULT_OUTCOME
    (meta,) = seen
    assert "the P·V line the rewrite's nodes must name" in meta.get("stack_trace", "")
    assert any(path.endswith("attention") and "_HandWritten" in str(kind)
               for path, kind in meta.get("nn_module_stack", {}).values())
