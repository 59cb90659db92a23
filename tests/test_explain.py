"""intfa_compile/explain.py: ``explain(model, *args)`` compiles afresh, runs once and tables every attention site:
where it is, its shapes, what runs, and why a site was left alone."""

from __future__ import annotations

import pytest
import torch

import intfa_compile
from tests.helpers import DEFAULT_OUTCOME
from tests.model_zoo import TimmStyleAttention


def test_explain_lists_sites_with_module_shapes_and_outcome():
    model = TimmStyleAttention().eval()
    x = torch.randn(2, 24, 64)
    report = intfa_compile.explain(model, x)
    (site,) = report.sites
    assert site.outcome == DEFAULT_OUTCOME
    assert site.module == "<model>"
    assert site.shapes == "q 2×4×24×16, kv 2×4×24×16"
    assert site.form.startswith("hand-written")
    assert "| module |" in str(report) and "INT8" in str(report)
    with_min_len = intfa_compile.explain(model, x, options={"min_seq_len": 64})
    assert with_min_len.sites[0].outcome == "left alone"
    assert "below min_seq_len=64" in with_min_len.sites[0].reason


def test_weights_returned_by_the_model_are_reported_not_rewritten():
    class ReturnsWeights(torch.nn.Module):
        def forward(self, q, k, v):
            weights = torch.softmax(q @ k.transpose(-2, -1) * 0.25, dim=-1)
            return weights @ v, weights

    q, k, v = torch.randn(3, 1, 2, 16, 16)
    report = intfa_compile.explain(ReturnsWeights(), q, k, v)
    (site,) = report.sites
    assert site.outcome == "left alone"
    assert "used elsewhere" in site.reason


def test_explain_checks_its_arguments_before_compiling():
    with pytest.raises(TypeError, match="explain: model must be"):
        intfa_compile.explain("not a model", torch.randn(1))
    with pytest.raises(ValueError, match="valid options are"):
        intfa_compile.explain(TimmStyleAttention(), torch.randn(2, 24, 64), options={"pv_fromat": "int8"})
