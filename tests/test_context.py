"""The compile context (``passes/context.py``) and the frozen settings it carries: decisions, records, site keys
and the hand-over between stages, on small hand-made graphs."""

from __future__ import annotations

import pytest
import torch
from intfa_compile.passes.attention_site import AttentionSite
from intfa_compile.passes.context import CompileContext, UnsupportedAttentionError
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

import intfa_compile
from intfa_compile import config
from intfa_compile.sites import collect_sites
from tests.helpers import DEFAULT_COUNTER, DEFAULT_OUTCOME


def _sites(count: int, head_dim: int = 16, module: str = "layers.0.attn") -> tuple[list[AttentionSite], dict]:
    """``count`` attention sites in one small graph, all in ``module``."""
    graph = torch.fx.Graph()
    q, k, v = (graph.placeholder(name) for name in "qkv")
    for node in (q, k, v):
        node.meta["val"] = torch.empty(1, 2, 8, head_dim)
    sites, paths = [], {}
    for index in range(count):
        anchor = graph.call_function(torch.ops.aten.clone.default, (v,), name=f"attention_{index}")
        anchor.meta["val"] = torch.empty(1, 2, 8, head_dim)
        paths[anchor.name] = module
        sites.append(AttentionSite(anchor=anchor, form="test", query=q, key=k, value=v, attn_mask=None,
                                   is_causal=False, scale=None))
    return sites, paths


def _context(paths: dict, **overrides) -> CompileContext:
    context = CompileContext(config.resolve(overrides), paths)
    context.begin_stage()
    return context


def test_a_decision_is_taken_once_and_recorded_once():
    counters.clear()
    (site,), paths = _sites(1)
    context = _context(paths)
    with collect_sites() as records:
        assert context.decide(site) and context.decide(site)
    assert [r.outcome for r in records] == [DEFAULT_OUTCOME] and counters["intfa"][DEFAULT_COUNTER] == 1
    assert context.already_reported(site.anchor)


def test_site_keys_count_the_sites_of_a_module_in_order():
    sites, paths = _sites(3)
    context = _context(paths)
    assert [context.site_key(site) for site in sites] == ["layers.0.attn#0", "layers.0.attn#1", "layers.0.attn#2"]
    assert context.site_key(sites[0]) == "layers.0.attn#0"


def test_what_the_kernel_cannot_take_is_left_alone_or_raises_under_fallback_error():
    (site,), paths = _sites(1, head_dim=512)
    with collect_sites() as records:
        assert not _context(paths).decide(site)
    (record,) = records
    assert record.outcome == "left alone" and "head dim 512" in record.reason
    with pytest.raises(UnsupportedAttentionError, match="layers.0.attn: head dim 512"):
        _context(paths, fallback="error").decide(site)


def test_a_failed_rewrite_withdraws_the_int8_record():
    counters.clear()
    (site,), paths = _sites(1)
    context = _context(paths)
    with collect_sites() as records:
        assert context.decide(site)
        context.rewrite_failed(site, RuntimeError("boom"))
    (record,) = records
    assert record.outcome == "left alone" and "RuntimeError: boom" in record.reason
    assert counters["intfa"][DEFAULT_COUNTER] == 0 and counters["intfa"]["left_alone"] == 1
    with pytest.raises(RuntimeError, match="boom"):
        strict = _context(paths, fallback="error")
        strict.decide(site)
        strict.rewrite_failed(site, RuntimeError("boom"))


def test_a_later_stage_replaces_what_an_earlier_one_left_alone_at_the_same_place():
    """Inductor may turn attention the first stage left alone into SDPA, which the next stage rewrites: one
    record, the later one. Two sites on one line within one stage both stand."""
    counters.clear()
    sites, paths = _sites(2)
    context = _context(paths, min_seq_len=100)
    with collect_sites() as records:
        assert not context.decide(sites[0]) and not context.decide(sites[1])
        assert len(records) == 2
        context.settings = config.resolve()  # the next stage (here: other settings, so it rewrites)
        context.begin_stage()
        assert context.decide(sites[0])
    assert [r.outcome for r in records] == ["left alone", DEFAULT_OUTCOME], records
    assert counters["intfa"]["left_alone"] == 1


def test_two_compilations_share_nothing():
    (site,), paths = _sites(1)
    first, second = _context(paths), _context(paths, min_seq_len=100)
    with collect_sites():
        assert first.decide(site)
        assert not second.decide(site)
    assert first.site_keys == second.site_keys and first.site_keys is not second.site_keys


def test_a_site_left_alone_by_both_stages_is_reported_once():
    """Hand-written attention the structural matcher leaves alone (here: shorter than min_seq_len) that Inductor's
    own fusion then turns into SDPA, which the post-grad stage leaves alone too: one record."""

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return (q @ k.transpose(-1, -2) / 4.0).softmax(-1) @ v

    torch._dynamo.reset()
    q, k, v = (torch.randn(1, 2, 16, 16) for _ in range(3))
    with inductor_config.patch(pattern_matcher=True):
        report = intfa_compile.explain(Attention(), q, k, v, options={"min_seq_len": 1000})
    assert len(report.sites) == 1 and "min_seq_len=1000" in report.sites[0].reason, report
