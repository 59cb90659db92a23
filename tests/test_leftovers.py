"""passes/leftovers.py: attention neither stage rewrote is still reported, with its reason: PyTorch's fused fast
path (and how to turn it off) and softmax-times-V structures the matcher declined."""

from __future__ import annotations

import torch

import intfa_compile
from tests.helpers import DEFAULT_OUTCOME


def test_fused_encoder_fast_path_is_reported_with_the_fix():
    """With PyTorch's MHA fast path on, attention hides in one fused op: explain says so and how to fix it."""
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    report = intfa_compile.explain(model, torch.randn(2, 24, 64))
    assert report.count(DEFAULT_OUTCOME) == 0
    assert len(report.sites) == 2
    assert all("set_fastpath_enabled(False)" in site.reason for site in report.sites)
    assert [site.module for site in report.sites] == ["layers.0", "layers.1"]
