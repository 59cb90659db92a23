"""Any model: every attention layer of every zoo model runs INT8 and the output stays close to eager fp32.

Accuracy bar: cosine ≥ 0.999 to eager fp32 on the model's output, the issue's end-to-end criterion;
the per-op error bounds are derived and tested in test_ops.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import intfa_compile
from tests.helpers import DEFAULT_COUNTER, DEFAULT_OUTCOME, END_TO_END_COSINE
from tests.model_zoo import ZOO, MultiheadAttentionBlock, TimmStyleAttention, run


@pytest.mark.parametrize("entry", ZOO, ids=[entry.name for entry in ZOO])
def test_every_attention_layer_runs_int8(entry):
    eager, compiled, sites = run(entry)
    reasons = [f"{site.module}: {site.reason}" for site in sites if site.outcome != DEFAULT_OUTCOME]
    assert sum(site.outcome == DEFAULT_OUTCOME for site in sites) == entry.layers, reasons
    assert not reasons
    assert len({site.module for site in sites}) == entry.layers  # one record per layer, each at its module
    assert not any(site.module == "<unknown>" for site in sites)
    cosine = F.cosine_similarity(eager.double().flatten(), compiled.double().flatten(), dim=0).item()
    assert cosine >= END_TO_END_COSINE
    assert not torch.equal(eager, compiled)


@pytest.mark.parametrize("name, window", [("LLaMA (GQA) [eager]", None), ("Qwen2 (GQA) [eager]", None),
                                          ("Mistral (GQA) [eager]", 4095)])
def test_decoder_eager_masks_run_as_the_causal_flag(name, window):
    """Hugging Face's eager decoders pass a causal mask built from positions (and Mistral's sliding window): each
    site runs with the causal flag, reading no mask; the window is 4096 keys including the query's own."""
    entry = ZOO[[z.name for z in ZOO].index(name)]
    model, inputs = entry.build()
    report = intfa_compile.explain(model, **inputs)
    assert report.count(DEFAULT_OUTCOME) == entry.layers
    for site in report.sites:
        assert site.causal and site.mask == "none" and "causal mask as flag" in site.form
        assert (f"window {window}" in site.form) if window else ("window" not in site.form)


class QueryDividedAttention(torch.nn.Module):
    """Scale divided out of q before the product, additive mask, softmax upcast to fp32 and cast back."""

    def forward(self, q, k, v, bias):
        scores = (q / q.shape[-1] ** 0.5) @ k.transpose(-2, -1) + bias
        return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def test_scale_on_q_by_division_with_mask_and_upcast():
    q, k, v = torch.randn(3, 2, 4, 40, 32)
    bias = torch.randn(2, 1, 40, 40)
    report = intfa_compile.explain(QueryDividedAttention(), q, k, v, bias)
    assert [site.outcome for site in report.sites] == [DEFAULT_OUTCOME]


@pytest.mark.parametrize("model_factory", [TimmStyleAttention, lambda: MultiheadAttentionBlock()],
                         ids=["hand-written", "sdpa"])
def test_symbolic_sequence_length_compiles_once(model_factory):
    model = model_factory().eval()
    compiled = torch.compile(model, backend="intfa")
    with torch.no_grad():
        for n in (64, 100, 130):
            x = torch.randn(2, n, 64)
            torch._dynamo.mark_dynamic(x, 1)
            out = compiled(x)
            assert F.cosine_similarity(out.flatten(), model(x).flatten(), dim=0).item() >= END_TO_END_COSINE
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["intfa"][DEFAULT_COUNTER] == 1
