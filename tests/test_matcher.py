"""The structural matcher (``passes/matcher/``) as a whole: every site it sees gets one record, with the real
cause where it is left alone, whichever stage sees it last. Its parts are tested in the files of their names
(``test_softmax_forms.py``, ``test_score_walk.py``, ``test_layout_probe.py``, ``test_recognition.py``,
``test_replacement.py``, ``test_graph_ops.py``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._inductor import config as inductor_config

import intfa_compile


class _ReturnsWeights(torch.nn.Module):
    def forward(self, q, k, v):
        weights = (q @ k.transpose(-1, -2) / 4.0).softmax(-1)
        return weights @ v, weights


class _IntegerMask(torch.nn.Module):
    def forward(self, q, k, v, mask):
        return ((q @ k.transpose(-1, -2) / 4.0) + mask).softmax(-1) @ v


class _WiderValues(torch.nn.Module):
    """SDPA with value's head dim above query's: its math path (a decomposed ``_safe_softmax``)."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class _TrainingDropout(torch.nn.Module):
    def forward(self, q, k, v):
        return F.dropout((q @ k.transpose(-1, -2) / 4.0).softmax(-1), 0.1, training=True) @ v


@pytest.mark.parametrize("inductor_fusion", [False, True], ids=["our-matcher-alone", "inductor-fusion-on"])
@pytest.mark.parametrize("case", [
    (_ReturnsWeights, "its attention weights are also used elsewhere"),
    (_IntegerMask, "mask dtype torch.int64 is neither bool nor floating"),
    (_WiderValues, "value head dim 24 differs from query head dim 16"),
    (_TrainingDropout, "dropout in training mode"),
], ids=["weights-returned", "integer-mask", "wider-values", "training-dropout"])
def test_explain_reports_each_site_left_alone_once_with_its_cause(case, inductor_fusion):
    """Every softmax→product site gets exactly one record, whichever stage sees it last, and its reason is the
    real cause."""
    model_type, cause = case
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 16, 16, generator=gen), torch.randn(1, 2, 16, 16, generator=gen)
    v = torch.randn(1, 2, 16, 24 if model_type is _WiderValues else 16, generator=gen)
    args = (q, k, v, torch.ones(16, 16, dtype=torch.int64)) if model_type is _IntegerMask else (q, k, v)
    torch._dynamo.reset()
    with inductor_config.patch(pattern_matcher=inductor_fusion):
        report = intfa_compile.explain(model_type(), *args)
    (site,) = report.sites
    assert site.outcome == "left alone" and cause in site.reason, site
