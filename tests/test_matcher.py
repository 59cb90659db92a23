"""The structural matcher (``passes/matcher/``) on small attention functions: what it takes, what it reads
(scale, terms, layout, repeated heads) and the reasons it gives for what it does not take."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from intfa_compile.passes.graph_values import uniform_value
from intfa_compile.passes.matcher import softmax_at
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

import intfa_compile
from intfa_compile.sites import collect_sites
from tests.helpers import DEFAULT_OUTCOME, END_TO_END_COSINE, cosine


class _Fn(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _compile(fn, *args, training: bool = False):
    """(eager output, compiled output, site records), Inductor's own attention fusion off."""
    torch._dynamo.reset()
    counters.clear()
    module = _Fn(fn).train(training)
    with inductor_config.patch(pattern_matcher=False, fx_graph_cache=False), collect_sites() as sites:
        if training:
            compiled = torch.compile(module, backend="intfa")(*args)
            eager = module(*args)
        else:
            with torch.no_grad():
                eager = module(*args)
                compiled = torch.compile(module, backend="intfa")(*args)
    return eager, compiled, list(sites)


def _qkv(batch=2, heads=4, n=32, dim=16, kv_heads=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kv_heads = kv_heads or heads
    return (torch.randn(batch, heads, n, dim, generator=gen), torch.randn(batch, kv_heads, n, dim, generator=gen),
            torch.randn(batch, kv_heads, n, dim, generator=gen))


def _only_site(sites):
    (site,) = sites
    return site


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

    eager, compiled, sites = _compile(attend, *_qkv())
    assert _only_site(sites).outcome == DEFAULT_OUTCOME
    assert cosine(compiled, eager) >= END_TO_END_COSINE


def test_a_softmax_over_the_queries_is_not_attention():
    """Transposing the scores before the softmax normalizes over queries: the probe of the layout sees it and the
    site keeps its original computation, with that reason."""
    def attend(q, k, v):
        return (q @ k.transpose(-1, -2)).transpose(-1, -2).softmax(-1) @ v

    eager, compiled, sites = _compile(attend, *_qkv())
    site = _only_site(sites)
    assert site.outcome == "left alone" and "each query's keys" in site.reason
    assert torch.allclose(compiled, eager, atol=1e-5)


def test_returned_weights_and_two_products_are_left_alone_with_their_reason():
    def returns_weights(q, k, v):
        weights = (q @ k.transpose(-1, -2) * 0.25).softmax(-1)
        return weights @ v, weights

    _, _, sites = _compile(returns_weights, *_qkv())
    assert "used elsewhere" in _only_site(sites).reason

    def two_products(q, k, v):
        return (q @ k.transpose(-1, -2) + k @ q.transpose(-1, -2)).softmax(-1) @ v

    _, _, sites = _compile(two_products, *_qkv())
    assert "two matrix products" in _only_site(sites).reason


def test_dropout_in_training_is_named_as_the_reason():
    def attend(q, k, v):
        return F.dropout((q @ k.transpose(-1, -2) * 0.25).softmax(-1), p=0.1, training=True) @ v

    q, k, v = _qkv()
    _, _, sites = _compile(attend, q, k, v)
    assert "dropout" in _only_site(sites).reason


def test_repeated_kv_heads_reach_the_kernel_unrepeated():
    """Hugging Face's repeat_kv (GQA): the site's K and V are the 2 KV heads, not the 4 repeated ones."""
    def attend(q, k, v):
        k = k[:, :, None].expand(2, 2, 2, 32, 16).reshape(2, 4, 32, 16)
        v = v[:, :, None].expand(2, 2, 2, 32, 16).reshape(2, 4, 32, 16)
        return (q @ k.transpose(2, 3) * 0.25).softmax(-1) @ v

    eager, compiled, sites = _compile(attend, *_qkv(kv_heads=2))
    site = _only_site(sites)
    assert site.outcome == DEFAULT_OUTCOME and site.gqa == "4/2" and "repeated KV heads" in site.form
    assert cosine(compiled, eager) >= END_TO_END_COSINE


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
        torch.compile(_Block(), backend="intfa")(*_qkv())
    assert _only_site(sites).outcome == DEFAULT_OUTCOME
    (meta,) = seen
    assert "the P·V line the rewrite's nodes must name" in meta.get("stack_trace", "")
    assert any(path.endswith("attention") and "_HandWritten" in str(kind)
               for path, kind in meta.get("nn_module_stack", {}).values())


@pytest.mark.parametrize("layout", ["bhid", "bihd", "(bh)id"])
def test_einsum_in_any_layout(layout):
    def attend(q, k, v):
        b, h, n, d = q.shape
        if layout == "bhid":
            s = torch.einsum("bhid,bhjd->bhij", q, k) * d**-0.5
            return torch.einsum("bhij,bhjd->bhid", s.softmax(-1), v)
        if layout == "bihd":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            s = torch.einsum("bihd,bjhd->bhij", q, k) * d**-0.5
            return torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v)
        q, k, v = (t.reshape(b * h, n, d) for t in (q, k, v))
        s = torch.einsum("xid,xjd->xij", q, k) * d**-0.5
        return torch.einsum("xij,xjd->xid", s.softmax(-1), v)

    eager, compiled, sites = _compile(attend, *_qkv())
    assert _only_site(sites).outcome == DEFAULT_OUTCOME
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

    eager, compiled, sites = _compile(attend, *_qkv())
    assert _only_site(sites).outcome == DEFAULT_OUTCOME
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

    eager, compiled, sites = _compile(attend, *_qkv())
    site = _only_site(sites)
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

    module = _Fn(attend)
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="intfa", dynamic=True)
    with torch.no_grad(), inductor_config.patch(pattern_matcher=False, fx_graph_cache=False), \
            collect_sites() as sites:
        for n in (32, 48):
            q, k, v = _qkv(n=n)
            mask = torch.zeros(2, 1, n, n).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            assert cosine(compiled(q, k, v, mask), module(q, k, v, mask)) >= END_TO_END_COSINE
    assert sites and all(site.outcome == DEFAULT_OUTCOME for site in sites), [site.reason for site in sites]


def test_softmax_forms_and_constants_are_recognised_on_a_traced_graph():
    """``softmax_at`` takes the op forms and the decomposition over the last dimension only; ``uniform_value``
    reads numbers and one-element constants."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def decomposed(x):
        shifted = x - x.amax(-1, keepdim=True)
        return shifted.exp() / shifted.exp().sum(-1, keepdim=True)

    x = torch.randn(2, 3, 5)
    for fn, last in ((lambda t: torch.softmax(t, -1), True), (lambda t: torch.softmax(t, 0), False),
                     (decomposed, False)):
        graph = make_fx(fn)(x).graph
        found = [softmax_at(node) for node in graph.nodes if node.op == "call_function"]
        assert any(f is not None for f in found) == last
    graph = make_fx(lambda t: torch.ops.aten._softmax(t, -1, False))(x).graph
    assert sum(softmax_at(node) is not None for node in graph.nodes) == 1
    graph = make_fx(lambda t: t / torch.full([], 4.0))(x).graph
    (full,) = [n for n in graph.nodes if n.target is torch.ops.aten.full.default]
    assert uniform_value(full) == 4.0 and uniform_value(2) == 2.0 and uniform_value(True) is None


def test_a_term_added_in_another_layout_is_refused_and_a_number_is_ignored():
    """A bias added while the (square) scores are transposed lands on other positions than one added in the
    softmax's layout: the matcher refuses it rather than guess. A number added to every score changes nothing
    the softmax sees: still INT8."""
    gen = torch.Generator().manual_seed(5)
    bias = torch.randn(32, 32, generator=gen)

    def transposed_bias(q, k, v):
        s = (q @ k.transpose(-1, -2) * 0.25).transpose(-1, -2) + bias
        return s.transpose(-1, -2).softmax(-1) @ v

    eager, compiled, sites = _compile(transposed_bias, *_qkv())
    site = _only_site(sites)
    assert site.outcome == "left alone" and "layout" in site.reason
    assert torch.allclose(compiled, eager, atol=1e-5)

    def plus_number(q, k, v):
        return (q @ k.transpose(-1, -2) * 0.25 + 3.0).softmax(-1) @ v

    eager, compiled, sites = _compile(plus_number, *_qkv())
    assert _only_site(sites).outcome == DEFAULT_OUTCOME and cosine(compiled, eager) >= END_TO_END_COSINE


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
