"""``passes/matcher/score_walk.py``: the walk from a softmax back to Q·Kᵀ reads the scale wherever it is, added
terms in any layout the probe can map (refusing the others), and K/V heads repeated for GQA."""

from __future__ import annotations

import math

import pytest
import torch
from torch._inductor import config as inductor_config

from intfa_compile.sites import collect_sites
from tests.helpers import DEFAULT_OUTCOME, END_TO_END_COSINE, cosine
from tests.matcher_cases import Fn, compile_fn, only_site, qkv


@pytest.mark.parametrize("style", ["mul", "div", "full-divisor", "no-scale", "query-scaled", "sqrt-both"])
def test_the_scale_is_read_wherever_it_is(style):
    """The scale on the scores (multiplied, divided, by a ``torch.full`` tensor, absent) or on Q or split as √ over
    Q and K: the same attention either way, INT8 and close to eager."""
    def attend(q, k, v):
        d = q.shape[-1]
        if style == "query-scaled":
            q = q * d**-0.5
        if style == "sqrt-both":
            q, k = q * d**-0.25, k * d**-0.25
        s = q @ k.transpose(-1, -2)
        if style == "mul":
            s = s * d**-0.5
        elif style == "div":
            s = s / math.sqrt(d)
        elif style == "full-divisor":
            s = s / torch.full([], d**0.5, dtype=s.dtype)
        return s.softmax(-1) @ v

    eager, compiled, sites = compile_fn(attend, *qkv())
    assert only_site(sites).outcome == DEFAULT_OUTCOME
    assert cosine(compiled, eager) >= END_TO_END_COSINE


def test_repeated_kv_heads_reach_the_kernel_unrepeated():
    """Hugging Face's repeat_kv (GQA): the site's K and V are the 2 KV heads, not the 4 repeated ones."""
    def attend(q, k, v):
        k = k[:, :, None].expand(2, 2, 2, 32, 16).reshape(2, 4, 32, 16)
        v = v[:, :, None].expand(2, 2, 2, 32, 16).reshape(2, 4, 32, 16)
        return (q @ k.transpose(2, 3) * 0.25).softmax(-1) @ v

    eager, compiled, sites = compile_fn(attend, *qkv(kv_heads=2))
    site = only_site(sites)
    assert site.outcome == DEFAULT_OUTCOME and site.gqa == "4/2" and "repeated KV heads" in site.form
    assert cosine(compiled, eager) >= END_TO_END_COSINE


def test_an_additive_term_in_the_products_frame_is_laid_out_as_the_softmax_sees_it():
    """``baddbmm`` adds its input over (B·H, Nq, Nk) while the softmax runs over (B, H, Nq, Nk): the term is
    carried into the softmax's layout, head by head (a bias that differs per head tells a wrong layout)."""
    gen = torch.Generator().manual_seed(3)
    bias = torch.randn(8, 32, 32, generator=gen)

    def attend(q, k, v):
        q3, k3, v3 = (t.reshape(8, 32, 16) for t in (q, k, v))
        s = torch.baddbmm(bias, q3, k3.transpose(1, 2), beta=0.5, alpha=0.25).view(2, 4, 32, 32)
        return torch.bmm(s.softmax(-1).view(8, 32, 32), v3)

    eager, compiled, sites = compile_fn(attend, *qkv())
    assert only_site(sites).outcome == DEFAULT_OUTCOME
    assert cosine(compiled, eager) >= END_TO_END_COSINE


@pytest.mark.parametrize("mask_shape", [(2, 1, 32, 32), (2, 4, 32, 32), (2, 1, 1, 32)])
def test_a_term_added_in_a_heads_view_between_flat_products_is_read(mask_shape):
    """Causal-LM code that runs its products over (B·H, N, D) and adds the mask in a (B, H, Nq, Nk) view of the
    scores: the kernel runs (B, H) from that view, and the mask (a per-head one tells a wrong layout) reaches it
    as the scores received it."""
    gen = torch.Generator().manual_seed(4)
    mask = torch.randn(*mask_shape, generator=gen)
    mask[..., 0, 5:9] = float("-inf")

    def attend(q, k, v):
        q3, k3, v3 = (t.reshape(8, 32, 16) for t in (q, k, v))
        s = (torch.bmm(q3, k3.transpose(1, 2)) * 0.25).view(2, 4, 32, 32) + mask
        return torch.bmm(s.view(8, 32, 32).softmax(-1), v3).view(2, 4, 32, 16)

    eager, compiled, sites = compile_fn(attend, *qkv())
    site = only_site(sites)
    assert site.outcome == DEFAULT_OUTCOME, site.reason
    assert cosine(compiled, eager) >= END_TO_END_COSINE


def test_a_heads_view_of_symbolic_sizes_is_read():
    """The same code compiled with dynamic shapes: B and H of the view are symbolic sizes the op reads from its
    inputs; every length runs in INT8, as close to eager as the static case."""

    def attend(q, k, v, mask):
        b, h, n, d = q.shape
        q3, k3, v3 = (t.reshape(b * h, n, d) for t in (q, k, v))
        s = (torch.bmm(q3, k3.transpose(1, 2)) * d**-0.5).view(b, h, n, n) + mask
        return torch.bmm(s.view(b * h, n, n).softmax(-1), v3).view(b, h, n, d)

    module = Fn(attend)
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="intfa", dynamic=True)
    with torch.no_grad(), inductor_config.patch(pattern_matcher=False, fx_graph_cache=False), \
            collect_sites() as sites:
        for n in (32, 48):
            q, k, v = qkv(n=n)
            mask = torch.zeros(2, 1, n, n).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            assert cosine(compiled(q, k, v, mask), module(q, k, v, mask)) >= END_TO_END_COSINE
    assert sites and all(site.outcome == DEFAULT_OUTCOME for site in sites), [site.reason for site in sites]


def test_a_term_added_in_another_layout_is_refused_and_a_number_is_ignored():
    """A bias added while the (square) scores are transposed lands on other positions than one added in the
    softmax's layout: the matcher refuses it rather than guess. A number added to every score changes nothing
    the softmax sees: still INT8."""
    gen = torch.Generator().manual_seed(5)
    bias = torch.randn(32, 32, generator=gen)

    def transposed_bias(q, k, v):
        s = (q @ k.transpose(-1, -2) * 0.25).transpose(-1, -2) + bias
        return s.transpose(-1, -2).softmax(-1) @ v

    eager, compiled, sites = compile_fn(transposed_bias, *qkv())
    site = only_site(sites)
    assert site.outcome == "left alone" and "layout" in site.reason
    assert torch.allclose(compiled, eager, atol=1e-5)

    def plus_number(q, k, v):
        return (q @ k.transpose(-1, -2) * 0.25 + 3.0).softmax(-1) @ v

    eager, compiled, sites = compile_fn(plus_number, *qkv())
    assert only_site(sites).outcome == DEFAULT_OUTCOME and cosine(compiled, eager) >= END_TO_END_COSINE
