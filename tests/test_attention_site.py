"""passes/attention_site.py: one attention site as both stages see it (its nodes, fake values in (B, H, N, D)) and
its line in the explain table."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from intfa_compile.passes.attention_site import AttentionSite
from torch.fx.experimental.proxy_tensor import make_fx


def _sdpa_site(**fields) -> AttentionSite:
    def attend(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    gm = make_fx(attend, tracing_mode="fake")(torch.randn(2, 4, 8, 16), torch.randn(2, 2, 10, 16),
                                              torch.randn(2, 2, 10, 16), torch.ones(2, 1, 1, 10, dtype=torch.bool))
    q, k, v, mask = [node for node in gm.graph.nodes if node.op == "placeholder"]
    anchor = next(node for node in gm.graph.nodes if node.op == "call_function" and "attention" in str(node.target))
    return AttentionSite(anchor, "sdpa", q, k, v, mask, False, None, **fields)


def test_the_record_names_shapes_mask_and_gqa():
    record = _sdpa_site().record({}, "INT8")
    assert (record.shapes, record.mask, record.gqa, record.causal) == ("q 2×4×8×16, kv 2×2×10×16", "bool 2×1×1×10",
                                                                        "4/2", False)
    assert record.outcome == "INT8" and record.form == "sdpa"


def test_the_causal_band_is_part_of_the_form():
    record = _sdpa_site(causal_offset=2, window_left=5).record({}, "left alone", "why")
    assert record.form == "sdpa, causal offset 2, window 5" and record.reason == "why"


def test_a_batch_of_one_gets_its_batch_dimension_back():
    site = _sdpa_site()
    three_d = torch.empty(4, 8, 16, device="meta")
    site.query.meta["val"] = three_d
    assert site.tensors[0].dim() == 3
    squeezed = AttentionSite(site.anchor, site.form, site.query, site.key, site.value, None, False, None,
                             batch_of_one=True)
    assert squeezed.tensors[0].shape == (1, 4, 8, 16) and squeezed.record({}, "INT8").mask == "none"
