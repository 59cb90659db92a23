"""intfa_compile/attention_scales.py: calibrated ranges as data, validated whole when made, hashed by content (the
compiled graph's cache key), saved and loaded as the portable JSON of ``scales_format``."""

from __future__ import annotations

import pytest

from intfa_compile.attention_scales import AttentionScales

SITES = {"layers.0.attn#0": {"q": [1.0, 2.0], "k": [3.0], "v": [[0.5, 0.25]]}}


def test_the_fingerprint_follows_the_content_only():
    same, other = AttentionScales(SITES), AttentionScales({"layers.0.attn#0": {**SITES["layers.0.attn#0"], "k": [4.0]}})
    assert AttentionScales(SITES).fingerprint() == same.fingerprint() and hash(same) == hash(AttentionScales(SITES))
    assert other.fingerprint() != same.fingerprint()
    assert AttentionScales(SITES, observer="percentile").fingerprint() != same.fingerprint()


def test_save_and_load_give_the_same_scales(tmp_path):
    path = tmp_path / "scales.json"
    AttentionScales(SITES, observer="moving_average").save(path)
    loaded = AttentionScales.load(path)
    assert loaded == AttentionScales(SITES, observer="moving_average") and loaded.sites == SITES


def test_ranges_are_validated_when_made_naming_the_site_and_field():
    with pytest.raises(ValueError, match=r"site 'layers.0.attn#0', field 'v'"):
        AttentionScales({"layers.0.attn#0": {**SITES["layers.0.attn#0"], "v": [[0.5, float("nan")]]}})
    with pytest.raises(ValueError, match="observer"):
        AttentionScales(SITES, observer="median")
