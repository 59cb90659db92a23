"""passes/rewrite.py: what replaces a site under one compile's settings: the INT8 op with the settings' quantization
and options, the static ranges of a calibrated site, or the observed attention while calibrating."""

from __future__ import annotations

import torch
from intfa_compile.passes.rewrite import int8_attention

from intfa_compile import config
from intfa_compile.attention_scales import AttentionScales
from intfa_compile.ops import KernelOptions, int8_sdpa

SITE = "layers.0#0"


def _inputs():
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(1, 4, 24, 32, generator=gen)
    k, v = (torch.randn(1, 2, 24, 32, generator=gen) for _ in range(2))
    return q, k, v


def test_the_replacement_runs_int8_sdpa_under_the_settings():
    q, k, v = _inputs()
    settings = config.resolve({"pv_format": "int8", "p_scale": "row_block", "qk_granularity": "per_block"})
    out = int8_attention(settings, SITE, q, k, v, None, True, None)
    expected = int8_sdpa(q, k, v, None, True, None, "int8", qk_granularity="per_block",
                         kernel_options=KernelOptions(p_scale="row_block"))
    assert torch.equal(out, expected)
    assert not torch.equal(out, int8_attention(config.resolve(), SITE, q, k, v, None, True, None))


def test_a_calibrated_site_runs_its_static_ranges_and_another_site_dynamic_ones():
    q, k, v = _inputs()
    ranges = {"q": q.abs().amax(dim=(0, 2, 3)).tolist(), "k": k.abs().amax(dim=(0, 2, 3)).tolist(),
              "v": v.abs().amax(dim=(0, 2)).tolist()}
    settings = config.resolve({"scales": AttentionScales({SITE: ranges})})
    static = int8_attention(settings, SITE, q, k, v, None, False, None)
    expected = int8_sdpa(q, k, v, None, False, None, static_amax=tuple(torch.tensor(ranges[x]) for x in "qkv"))
    assert torch.equal(static, expected)
    other_site = int8_attention(settings, "layers.1#0", q, k, v, None, False, None)
    assert torch.equal(other_site, int8_sdpa(q, k, v, None, False, None))


def test_while_calibrating_the_site_computes_the_original_attention():
    from intfa_compile import calibration

    q, k, v = _inputs()
    session = calibration.CalibrationSession("minmax")
    calibration._sessions["test-session"] = session
    settings = config.resolve({"calibrate": "test-session"})
    out = int8_attention(settings, SITE, q, k, v, None, True, None, causal_offset=0)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(out, expected, atol=1e-6) and SITE in session.sites
