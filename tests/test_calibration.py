"""Observers and the prepare → calibrate → collect → save → load → compile flow of static scales."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import intfa_compile
from intfa_compile.calibration import AttentionScales
from tests.helpers import DEFAULT_OPTIONS_TAIL, END_TO_END_COSINE, NO_EXACT_INPUTS, cosine
from tests.model_zoo import ZOO


def test_collect_before_calibration_refuses():
    prepared = intfa_compile.prepare(torch.nn.Linear(4, 4))
    with pytest.raises(RuntimeError, match="run calibration batches"):
        intfa_compile.collect(prepared)


def _amax_reductions(code: str) -> int:
    """Calls of generated kernels that reduce with amax (one definition may be called per layer)."""
    return len(re.findall(r"^\s+cpp_fused_\w*amax\w*\(", code, flags=re.MULTILINE))


def test_minilm_calibrate_save_load_compile(tmp_path):
    """The whole flow on the real all-MiniLM-L6-v2: static and dynamic scales both ≥ 0.999 cosine, and
    static scales leave no per-call reduction over Q, K, V in the generated code."""
    from examples.minilm_demo import SENTENCES, load_minilm

    model, tokenizer = load_minilm()
    batches = [tokenizer(SENTENCES[i:i + 4], padding=True, return_tensors="pt") for i in (0, 4)]
    prepared = intfa_compile.prepare(model)
    with torch.no_grad():
        for batch in batches:
            prepared(**batch)
    scales = intfa_compile.collect(prepared)
    assert len(scales.sites) == model.config.num_hidden_layers
    scales.save(tmp_path / "scales.json")
    loaded = AttentionScales.load(tmp_path / "scales.json")
    assert loaded == scales

    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        eager = model(**batch).last_hidden_state
        torch._dynamo.reset()
        static, static_code = run_and_get_code(torch.compile(model, backend="intfa", options={"scales": loaded}),
                                               **batch)
        torch._dynamo.reset()
        dynamic, dynamic_code = run_and_get_code(torch.compile(model, backend="intfa"), **batch)
    assert cosine(static.last_hidden_state, eager) >= END_TO_END_COSINE
    assert cosine(dynamic.last_hidden_state, eager) >= END_TO_END_COSINE
    static_code, dynamic_code = "\n".join(static_code), "\n".join(dynamic_code)
    assert "intfa.static_amax" in static_code and "intfa.int8_attention" in static_code
    assert _amax_reductions(dynamic_code) >= model.config.num_hidden_layers
    assert _amax_reductions(static_code) == 0


def test_missing_or_mismatched_sites_fall_back_to_dynamic_scales_with_a_log_line(caplog):
    entry = ZOO[[z.name for z in ZOO].index("timm-style ViT attention")]
    model, inputs = entry.build()
    wrong_heads = AttentionScales(sites={"<model>#0": {"q": [1.0] * 3, "k": [1.0] * 3, "v": [[1.0] * 16] * 3}})
    missing = AttentionScales(sites={"elsewhere#0": {"q": [1.0], "k": [1.0], "v": [[1.0]]}})
    with torch.no_grad():
        eager = model(**inputs)
        for scales, message in ((wrong_heads, "<model>#0: query heads: 3 in the scales, 4 at the site; KV heads: 3 "
                                              "in the scales, 4 at the site"),
                                (missing, "no entry for this site (they hold 1 site(s): elsewhere#0)")):
            torch._dynamo.reset()
            with caplog.at_level(logging.INFO, logger="intfa_compile"):
                out, code = run_and_get_code(torch.compile(model, backend="intfa", options={"scales": scales}),
                                             **inputs)
            assert any(message in record.getMessage() for record in caplog.records)
            assert "intfa.static_amax" not in "\n".join(code)
            assert cosine(out, eager) >= END_TO_END_COSINE


def test_static_scales_with_smooth_k_is_a_clear_error():
    scales = AttentionScales(sites={})
    with pytest.raises(ValueError, match="smooth_k"):
        intfa_compile.config.resolve({"scales": scales, "smooth_k": True})


def test_calibrating_a_sliding_window_site_observes_the_same_attention_and_compiles_static():
    """A mask folded into the causal flag with a diagonal offset and a window is spelled back as a mask for the
    fp observer: the prepared model computes what the model does; its static scales then run INT8 with the
    window."""
    from tests.model_zoo import HandWrittenCausal

    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 48, 32, generator=gen)
    k, v = (torch.randn(2, 4, 112, 32, generator=gen) for _ in range(2))
    model = HandWrittenCausal("positions_sliding_window")
    prepared = intfa_compile.prepare(model)
    with torch.no_grad():
        eager, observed = model(q, k, v), prepared(q, k, v)
        scales = intfa_compile.collect(prepared)
        torch._dynamo.reset()
        out, code = run_and_get_code(torch.compile(model, backend="intfa", options={"scales": scales}), q, k, v)
    # The observer runs fp32 SDPA with the band as a boolean mask; eager adds finfo.min: same probabilities.
    torch.testing.assert_close(observed, eager, rtol=1e-5, atol=1e-5)
    assert len(scales.sites) == 1
    code = "\n".join(code)
    assert "intfa.static_amax" in code
    assert re.search(rf"int8_attention\.default\(.*, None, True, .*, 64, 39{DEFAULT_OPTIONS_TAIL}{NO_EXACT_INPUTS}\)",
                     code)
    assert cosine(out, eager) >= END_TO_END_COSINE


class _Attend(torch.nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_a_calibration_session_lives_as_long_as_its_prepared_model():
    """The prepared model owns its session (observers and all): once the model is gone, nothing of it is kept, and
    a graph still holding the session's id says so instead of recording into a new one."""
    import gc
    import weakref

    from intfa_compile import calibration

    torch._dynamo.reset()
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    prepared = intfa_compile.prepare(_Attend())
    with torch.no_grad():
        prepared(q, k, v)
    assert intfa_compile.collect(prepared).sites
    session = weakref.ref(prepared._intfa_calibration)
    (session_id,) = [key for key, value in calibration._sessions.items() if value is session()]
    del prepared
    gc.collect()
    assert session() is None and session_id not in calibration._sessions
    with pytest.raises(RuntimeError, match="session .* has ended"):
        torch.ops.intfa.observed_attention(q, k, v, None, False, None, session_id, "site")
    torch._dynamo.reset()
