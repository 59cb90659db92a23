"""Attention compiled with symbolic sizes (``torch.compile(..., dynamic=True)``): one graph serves every call,
each call runs INT8, and what the kernel cannot take when the op runs (a head dim above its limit) is computed
exactly inside the op, logged once per shape."""

from __future__ import annotations

import logging
import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

import intfa_compile
from intfa_compile import exact_fallback, ops
from intfa_compile.attention_call import kernel_shape_problem
from intfa_compile.numerics import INT8_MAX, MAX_HEAD_DIM
from intfa_compile.ops import fold_factor, int8_sdpa, scale_and_factor
from intfa_compile.sites import collect_sites
from tests.helpers import DEFAULT_OUTCOME, END_TO_END_COSINE, cosine


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def scaled_by_size(q, k, v):
    """The scale computed from the symbolic head dim in the model's code (a 0-d tensor in the graph)."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return scores.softmax(-1) @ v


def gpt2_style(q, k, v):
    """GPT-2's ``torch.full`` divisor from the value's head dim and a causal ``where`` with finfo.min."""
    weights = q @ k.transpose(-1, -2)
    weights = weights / torch.full([], v.size(-1) ** 0.5, dtype=weights.dtype, device=weights.device)
    n = q.shape[-2]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool, device=q.device))
    weights = torch.where(causal, weights, torch.finfo(weights.dtype).min)
    return weights.softmax(-1) @ v


# (B, H, N, D): all sizes distinct and above 1 from the first call, so Dynamo's own specialisation (0/1 sizes,
# equal sizes sharing a symbol) does not force a second graph; the last head dim is above the kernel's limit.
SHAPES = [(2, 3, 16, 32), (2, 3, 24, 48), (3, 5, 40, 64), (2, 3, 8, 320)]


def _calls_through(fn):
    """Count the calls of the INT8 CPU kernel and of the exact fallback while ``fn`` runs."""
    seen = {"int8": 0, "exact": 0}
    int8_impl, exact_impl = ops.fast_int8_attention_cpu, ops.exact_attention

    def int8(*args, **kwargs):
        seen["int8"] += 1
        return int8_impl(*args, **kwargs)

    def exact(*args, **kwargs):
        seen["exact"] += 1
        return exact_impl(*args, **kwargs)

    with mock.patch.object(ops, "fast_int8_attention_cpu", int8), mock.patch.object(ops, "exact_attention", exact):
        out = fn()
    return out, seen


@pytest.mark.parametrize("attention", [sdpa, scaled_by_size, gpt2_style], ids=lambda f: f.__name__)
@pytest.mark.parametrize("inductor_fusion", [False, True], ids=["our-matcher-alone", "inductor-fusion-on"])
def test_one_graph_serves_changing_lengths_and_head_dims(attention, inductor_fusion, caplog):
    """dynamic=True: one graph for every call; INT8 on each call whose head dim the kernel takes, the exact
    attention (logged once) for a head dim above its limit."""
    torch._dynamo.reset()
    counters.clear()
    exact_fallback._log_once.cache_clear()  # once per shape and process: an earlier test may have logged it
    compiled = torch.compile(attention, backend="intfa", dynamic=True)
    gen = torch.Generator().manual_seed(0)
    with inductor_config.patch(pattern_matcher=inductor_fusion, fx_graph_cache=False), collect_sites() as sites, \
            caplog.at_level(logging.WARNING, logger="intfa_compile"):
        for shape in SHAPES:
            q, k, v = (torch.randn(*shape, generator=gen) for _ in range(3))
            out, seen = _calls_through(lambda q=q, k=k, v=v: compiled(q, k, v))
            eager = attention(q, k, v)
            if shape[-1] <= MAX_HEAD_DIM:
                assert seen == {"int8": 1, "exact": 0}, shape
                assert cosine(out, eager) >= END_TO_END_COSINE, shape
            else:
                assert seen == {"int8": 0, "exact": 1}, shape
                torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
            out_again, _ = _calls_through(lambda q=q, k=k, v=v: compiled(q, k, v))
            torch.testing.assert_close(out_again, out, rtol=0, atol=0)
    assert counters["stats"]["unique_graphs"] == 1
    (site,) = sites
    assert site.outcome == DEFAULT_OUTCOME, site
    assert "s" in site.shapes  # symbolic sizes in the record: the site was compiled once for all of them
    fallbacks = [r.getMessage() for r in caplog.records if "computed exactly" in r.getMessage()]
    assert len(fallbacks) == 1 and "head dim 320 is above" in fallbacks[0], fallbacks


def test_sdpa_math_path_with_another_value_head_dim_is_read_and_left_alone_with_its_reason():
    """SDPA with value's head dim other than query's decomposes to its math path (a decomposed ``_safe_softmax``);
    the matcher reads it as attention, and the guards give the true reason it stays."""
    torch._dynamo.reset()
    compiled = torch.compile(sdpa, backend="intfa", dynamic=True)
    gen = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 3, 16, 32, generator=gen), torch.randn(2, 3, 16, 32, generator=gen), \
        torch.randn(2, 3, 16, 48, generator=gen)
    with inductor_config.patch(fx_graph_cache=False), collect_sites() as sites:
        out = compiled(q, k, v)
    torch.testing.assert_close(out, sdpa(q, k, v), rtol=1e-5, atol=1e-5)
    (site,) = sites
    assert site.outcome == "left alone" and "value head dim" in site.reason and "differs" in site.reason, site


@pytest.mark.parametrize("shapes", [((1, 4, 8, 320), (1, 2, 8, 320), (1, 2, 8, 320)),
                                    ((1, 4, 8, 32), (1, 4, 8, 32), (1, 4, 8, 48))], ids=["head-dim-320", "value-48"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_the_op_computes_exactly_what_its_kernel_cannot_take(shapes, is_causal):
    """Given its exact inputs (a site compiled with symbolic shapes), the op computes shapes the kernel cannot take
    as SDPA would, with the run-time scale factor applied; the output is contiguous with value's head dim, as
    the op's fake says whatever the sizes."""
    gen = torch.Generator().manual_seed(5)
    query, key, value = (torch.randn(*shape, generator=gen) for shape in shapes)
    factor = torch.tensor(0.7)
    q8 = torch.zeros(query.shape, dtype=torch.int8)
    k8, v8 = torch.zeros(key.shape, dtype=torch.int8), torch.zeros(value.shape, dtype=torch.int8)
    out = torch.ops.intfa.int8_attention(q8, k8, v8, torch.ones(query.shape[:3]), torch.ones(key.shape[:3]),
                                         torch.ones(*value.shape[:2], value.shape[-1]), None, is_causal, 0.5,
                                         out_dtype="float32", exact_query=query, exact_key=key,
                                         exact_value=value, scale_factor=factor)
    expected = F.scaled_dot_product_attention(query, key, value, is_causal=is_causal, scale=0.35,
                                              enable_gqa=query.shape[1] != key.shape[1])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous()


class _Temperature(torch.nn.Module):
    """Attention with a learned temperature: a one-element parameter the scores are multiplied by."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.temperature = torch.nn.Parameter(torch.tensor(value))

    def forward(self, q, k, v):
        return ((q @ k.transpose(-1, -2)) * self.temperature).softmax(-1) @ v


@pytest.mark.parametrize("value", [0.2, -0.2])
def test_a_learned_temperature_runs_int8(value):
    """A scale known only at run time joins Q's quantization scales; a negative one flips Q's integers, so every
    query scale stays ≥ 0 as the kernel's folded exponent needs."""
    torch._dynamo.reset()
    model = _Temperature(value).eval()
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 4, 32, 16, generator=gen) for _ in range(3))
    with torch.no_grad(), inductor_config.patch(fx_graph_cache=False), collect_sites() as sites:
        out = torch.compile(model, backend="intfa")(q, k, v)
        eager = model(q, k, v)
    assert [s.outcome for s in sites] == [DEFAULT_OUTCOME], sites
    assert cosine(out, eager) >= END_TO_END_COSINE


def test_a_tensor_scale_computes_what_the_same_number_does():
    """``int8_sdpa`` with the scale as a 0-d tensor and as a float: the same integers; only the fp32 product of
    the query scale and the softmax scale is rounded in another order, which can move a P entry by at most one
    INT8 level (1/127 of its row's value range)."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 64, 32, generator=gen) for _ in range(3))
    as_number = int8_sdpa(q, k, v, scale=0.3)
    as_tensor = int8_sdpa(q, k, v, scale=torch.tensor(0.3))
    assert (as_number - as_tensor).abs().max() <= 2 * v.abs().max() / INT8_MAX
    negative = int8_sdpa(q, k, v, scale=torch.tensor(-0.3))
    assert cosine(negative, F.scaled_dot_product_attention(q, k, v, scale=-0.3)) >= END_TO_END_COSINE


def test_scale_and_factor_and_fold_factor():
    q = torch.randn(1, 1, 4, 8)
    assert scale_and_factor(None, q) == (8**-0.5, None)
    assert scale_and_factor(2, q) == (2.0, None)
    sm_scale, factor = scale_and_factor(torch.tensor([0.5]), q)
    assert sm_scale == 1.0 and factor.shape == () and factor.item() == 0.5
    with pytest.raises(ValueError, match="one number"):
        scale_and_factor(torch.ones(2), q)
    with pytest.raises(TypeError, match="bool"):
        scale_and_factor(True, q)
    q_int8, q_scale = torch.tensor([[5, -7]], dtype=torch.int8), torch.tensor([[0.1, 0.2]])
    flipped, scaled = fold_factor(q_int8, q_scale, torch.tensor(-2.0))
    assert flipped.tolist() == [[-5, 7]] and torch.allclose(scaled, torch.tensor([[0.2, 0.4]]))
    assert fold_factor(q_int8, q_scale, None) == (q_int8, q_scale)


def test_kernel_shape_problem_decides_plain_sizes():
    assert kernel_shape_problem((1, 4, 8, 64), (1, 2, 8, 64), (1, 2, 8, 64)) == (None, True)
    reason, takes = kernel_shape_problem((1, 4, 8, 320), (1, 4, 8, 320), (1, 4, 8, 320))
    assert not takes and "above the INT8 kernel's 256" in reason
    reason, _ = kernel_shape_problem((1, 3, 8, 64), (1, 2, 8, 64), (1, 2, 8, 64))
    assert "not a multiple" in reason
    reason, _ = kernel_shape_problem((1, 4, 8, 64), (1, 4, 8, 64), (1, 4, 8, 32))
    assert "value head dim 32" in reason


def test_calibration_records_q_without_a_run_time_scale():
    """Under calibration a run-time scale is applied to Q after its range is observed, as the INT8 rewrite
    quantizes Q before applying it; the observed attention is exact."""
    torch._dynamo.reset()
    model = _Temperature(3.0).eval()
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=gen) for _ in range(3))
    prepared = intfa_compile.prepare(model)
    with torch.no_grad(), inductor_config.patch(fx_graph_cache=False):
        out = prepared(q, k, v)
        torch.testing.assert_close(out, model(q, k, v), rtol=1e-5, atol=1e-5)
    scales = intfa_compile.collect(prepared)
    (entry,) = scales.sites.values()
    assert entry["q"] == pytest.approx(q.abs().amax(dim=(0, 2, 3)).tolist())
    assert math.isfinite(entry["k"][0])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["BERT [eager]", "LLaMA (GQA) [sdpa]"])
def test_zoo_models_compiled_dynamic_run_int8_at_every_length(name):
    """Hugging Face models compiled with dynamic=True: one graph for two sequence lengths, every attention layer
    through the INT8 kernel on each call."""
    from tests.model_zoo import ZOO, output_tensor

    (entry,) = [entry for entry in ZOO if entry.name == name]
    torch._dynamo.reset()
    counters.clear()
    model, inputs = entry.build()
    shorter = {key: value[:, :17].contiguous() for key, value in inputs.items()}
    compiled = torch.compile(model, backend="intfa", dynamic=True)
    with torch.no_grad(), inductor_config.patch(fx_graph_cache=False):
        for batch in (inputs, shorter):
            out, seen = _calls_through(lambda batch=batch: output_tensor(compiled(**batch)))
            assert seen == {"int8": entry.layers, "exact": 0}
            assert cosine(out, output_tensor(model(**batch))) >= END_TO_END_COSINE
    assert counters["stats"]["unique_graphs"] == 1
