"""``passes/matcher/recognition.py``: what makes a softmax→product structure attention the op takes (einsum in
any layout), and the reason given for one it does not take."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from intfa_compile.passes.matcher.graph_ops import NotAttention
from intfa_compile.passes.matcher.recognition import heads_layout

from tests.helpers import DEFAULT_OUTCOME, END_TO_END_COSINE, cosine
from tests.matcher_cases import compile_fn, only_site, qkv


def test_a_softmax_over_the_queries_is_not_attention():
    """Transposing the scores before the softmax normalizes over queries: the probe of the layout sees it and the
    site keeps its original computation, with that reason."""
    def attend(q, k, v):
        return (q @ k.transpose(-1, -2)).transpose(-1, -2).softmax(-1) @ v

    eager, compiled, sites = compile_fn(attend, *qkv())
    site = only_site(sites)
    assert site.outcome == "left alone" and "each query's keys" in site.reason
    assert torch.allclose(compiled, eager, atol=1e-5)


def test_returned_weights_and_two_products_are_left_alone_with_their_reason():
    def returns_weights(q, k, v):
        weights = (q @ k.transpose(-1, -2) * 0.25).softmax(-1)
        return weights @ v, weights

    _, _, sites = compile_fn(returns_weights, *qkv())
    assert "used elsewhere" in only_site(sites).reason

    def two_products(q, k, v):
        return (q @ k.transpose(-1, -2) + k @ q.transpose(-1, -2)).softmax(-1) @ v

    _, _, sites = compile_fn(two_products, *qkv())
    assert "two matrix products" in only_site(sites).reason


def test_dropout_in_training_is_named_as_the_reason():
    def attend(q, k, v):
        return F.dropout((q @ k.transpose(-1, -2) * 0.25).softmax(-1), p=0.1, training=True) @ v

    q, k, v = qkv()
    _, _, sites = compile_fn(attend, q, k, v)
    assert "dropout" in only_site(sites).reason


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

    eager, compiled, sites = compile_fn(attend, *qkv())
    assert only_site(sites).outcome == DEFAULT_OUTCOME
    assert cosine(compiled, eager) >= END_TO_END_COSINE


def test_the_kernels_batch_and_heads_come_from_the_softmaxs_batch_dimensions():
    """(B, H) as the kernel runs them: two batch dimensions as they are, one as heads of a batch of one, more
    flattened into the batch unless a mask needs their layout (refused, with the reason)."""
    assert heads_layout((2, 4), masked=True) == (2, 4)
    assert heads_layout((8,), masked=False) == (1, 8) and heads_layout((), masked=False) == (1, 1)
    assert heads_layout((2, 3, 4), masked=False) == (6, 4)
    with pytest.raises(NotAttention, match="3 batch dimensions and a mask"):
        heads_layout((2, 3, 4), masked=True)
