"""The ``intfa`` backend end to end on small modules: what it rewrites, what it leaves, and its toggles."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
import torch.nn.functional as F
from intfa_compile.passes.context import UnsupportedAttentionError
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code

import intfa_compile
from intfa_compile import config
from intfa_compile.reference import reference_attention
from tests.helpers import (
    DEFAULT_COUNTER,
    DEFAULT_OPTIONS_TAIL,
    END_TO_END_COSINE,
    NO_EXACT_INPUTS,
    cosine,
    op_call_arguments,
)
from tests.model_zoo import HandWrittenCausal

OP_NAME = "torch.ops.intfa.int8_attention.default"


def causal_call(offset: int, window_left: int = -1, head_dim: int = 32) -> str:
    """The tail of an ``int8_attention`` call in Inductor's code that runs with the causal flag and no mask
    (Inductor writes trailing defaults as keywords, others positionally)."""
    return (rf", None, True, {head_dim**-0.5}, (causal_offset=)?{offset}, (window_left=)?{window_left}"
            rf"{DEFAULT_OPTIONS_TAIL}{NO_EXACT_INPUTS}$")


class SelfAttention(torch.nn.Module):
    """Fused QKV projection and SDPA, laid out as (B, N, H, D) like most models."""

    def __init__(self, dim: int = 256, heads: int = 4, is_causal: bool = True, dropout_p: float = 0.0):
        super().__init__()
        self.heads, self.is_causal, self.dropout_p = heads, is_causal, dropout_p
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, n, dim = x.shape
        q, k, v = self.qkv(x).view(batch, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.is_causal,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(batch, n, dim)


def _compile_and_run(model, *args, **options):
    compiled = torch.compile(model, backend="intfa", options=options or None)
    with torch.no_grad():
        out, code = run_and_get_code(compiled, *args)
    return out, "\n".join(code)


@pytest.fixture
def model_and_input():
    torch.manual_seed(0)
    return SelfAttention().eval(), torch.randn(2, 384, 256)


def test_causal_sdpa_runs_int8_with_cosine_0999_at_384_d64(model_and_input):
    model, x = model_and_input
    with torch.no_grad():
        eager = model(x)
    out, code = _compile_and_run(model, x)
    assert OP_NAME in code
    assert counters["intfa"][DEFAULT_COUNTER] == 1
    assert cosine(out, eager) >= END_TO_END_COSINE
    assert not torch.equal(out, eager)  # quantization really happened


def test_profiler_shows_the_intfa_op(model_and_input):
    model, x = model_and_input
    compiled = torch.compile(model, backend="intfa")
    with torch.no_grad():
        compiled(x)
        with torch.profiler.profile() as prof:
            compiled(x)
    names = [event.key for event in prof.key_averages()]
    assert "intfa::int8_attention" in names


def test_quantization_fuses_into_one_kernel(model_and_input):
    """Q/K per-token and V per-channel quantization: Inductor emits them as one fused C++ kernel."""
    model, x = model_and_input
    _, code = _compile_and_run(model, x)
    kernels = re.findall(r"^(cpp_fused_\w+) = async_compile", code, flags=re.MULTILINE)
    assert len(kernels) == 1, kernels
    assert "abs_amax" in kernels[0] and "round" in kernels[0]


def test_masked_sdpa_with_padding_mask(model_and_input):
    model, x = model_and_input
    model.is_causal = False
    keep = torch.ones(2, 1, 1, 384, dtype=torch.bool)
    keep[1, ..., 300:] = False
    with torch.no_grad():
        eager = model(x, keep)
    out, code = _compile_and_run(model, x, keep)
    assert OP_NAME in code
    assert cosine(out, eager) >= END_TO_END_COSINE


def test_output_matches_the_op_on_the_same_inputs(model_and_input):
    """The compiled graph computes exactly the op on the projections (no other change to the model)."""
    model, x = model_and_input
    out, _ = _compile_and_run(model, x)
    with torch.no_grad():
        q, k, v = model.qkv(x).view(2, 384, 3, 4, 64).permute(2, 0, 3, 1, 4)
        direct = intfa_compile.int8_sdpa(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 384, 256)
        ref = reference_attention(q, k, v, None, True).out.transpose(1, 2).reshape(2, 384, 256)
    assert (out - direct).abs().max().item() <= 1e-5 * ref.abs().max().item() + (1 / 127) * v.abs().max().item()
    assert cosine(out, ref) >= END_TO_END_COSINE


def test_training_graph_is_left_alone_and_logged(model_and_input, caplog):
    model, x = model_and_input
    model.train()
    compiled = torch.compile(model, backend="intfa")
    with caplog.at_level(logging.WARNING, logger="intfa_compile"):
        out = compiled(x)
    out.sum().backward()
    assert counters["intfa"][DEFAULT_COUNTER] == 0
    assert counters["intfa"]["left_alone"] == 1
    assert any("inference-only" in record.getMessage() for record in caplog.records)
    assert torch.allclose(out, model(x), atol=1e-5)


def test_fallback_error_raises_for_unsupported_attention(model_and_input):
    model, x = model_and_input
    model.train()
    compiled = torch.compile(model, backend="intfa", options={"fallback": "error"})
    with pytest.raises(Exception, match="inference-only") as info:
        compiled(x)
    assert isinstance(info.value, UnsupportedAttentionError) or "UnsupportedAttentionError" in str(info.value)


def test_unknown_option_raises_naming_the_valid_ones(model_and_input):
    model, x = model_and_input
    with pytest.raises(Exception, match="valid options are") as info:
        torch.compile(model, backend="intfa", options={"pv_fromat": "int8"})(x)
    assert "pv_format" in str(info.value)


def test_enabled_false_compiles_what_inductor_alone_compiles(model_and_input):
    model, x = model_and_input
    out, code = _compile_and_run(model, x, enabled=False)
    assert OP_NAME not in code
    torch._dynamo.reset()
    with torch.no_grad():
        inductor = torch.compile(model, backend="inductor")(x)
    assert torch.equal(out, inductor)


def test_pv_format_fp16_runs_half_int8(model_and_input):
    model, x = model_and_input
    full, _ = _compile_and_run(model, x, pv_format="int8")
    assert counters["intfa"]["int8_sites"] == 1
    torch._dynamo.reset()
    counters.clear()
    half, code = _compile_and_run(model, x, pv_format="fp16")
    assert counters["intfa"]["half_int8_sites"] == 1
    assert "None, None, True" in code  # v_scale=None, no mask, causal: V stays 16/32-bit
    assert not torch.equal(full, half)


def test_pv_format_fp8_runs_fp8_pv_with_the_fixed_p_scale_only(model_and_input):
    model, x = model_and_input
    eager = model(x)
    fp8, code = _compile_and_run(model, x, pv_format="fp8")
    assert counters["intfa"]["fp8_pv_sites"] == 1 and "float8_e4m3fn" in code
    assert cosine(fp8, eager) >= END_TO_END_COSINE
    torch._dynamo.reset()
    with pytest.raises(Exception, match="fixed scale only"):
        _compile_and_run(model, x, pv_format="fp8", p_scale="row_block")


def test_p_scale_row_block_changes_the_result(model_and_input):
    model, x = model_and_input
    fixed, _ = _compile_and_run(model, x, pv_format="int8")
    torch._dynamo.reset()
    row_block, code = _compile_and_run(model, x, pv_format="int8", p_scale="row_block")
    assert "'row_block'" in code
    assert not torch.equal(fixed, row_block)
    with torch.no_grad():
        eager = model(x)
    assert cosine(row_block, eager) >= END_TO_END_COSINE


def test_min_seq_len_leaves_short_attention_alone(model_and_input, caplog):
    model, x = model_and_input
    with caplog.at_level(logging.INFO, logger="intfa_compile"):
        _, code = _compile_and_run(model, x, min_seq_len=385)
    assert OP_NAME not in code
    assert any("below min_seq_len=385" in record.getMessage() for record in caplog.records)
    torch._dynamo.reset()
    _, code = _compile_and_run(model, x, min_seq_len=384)
    assert OP_NAME in code


def test_changed_config_recompiles_the_compiled_model(model_and_input):
    model, x = model_and_input
    compiled = torch.compile(model, backend="intfa")
    with torch.no_grad():
        fixed = compiled(x)
        with config.patch(qk_granularity="per_head"):
            row_block = compiled(x)
        fixed_again = compiled(x)
    torch._dynamo.reset()
    expected_row_block, _ = _compile_and_run(model, x, qk_granularity="per_head")
    assert torch.equal(row_block, expected_row_block)
    assert torch.equal(fixed, fixed_again)
    assert not torch.equal(fixed, row_block)


def test_a_patch_in_another_thread_does_not_change_what_this_thread_runs(model_and_input):
    """A compiled model called by two threads at once, one of them under ``config.patch``: each runs the graph of
    its own settings (the patch is the other thread's only)."""
    model, x = model_and_input
    compiled = torch.compile(model, backend="intfa")
    patched, patch_in_force, may_leave = [], threading.Event(), threading.Event()

    def call_under_a_patch() -> None:
        with torch.no_grad(), config.patch(qk_granularity="per_head"):
            patched.append(compiled(x))
            patch_in_force.set()
            may_leave.wait(timeout=600)

    with torch.no_grad():
        fixed = compiled(x)
        thread = threading.Thread(target=call_under_a_patch)
        thread.start()
        try:
            assert patch_in_force.wait(timeout=600)
            meanwhile = compiled(x)
        finally:
            may_leave.set()
            thread.join()
    assert torch.equal(meanwhile, fixed)
    assert not torch.equal(patched[0], fixed)


def test_options_override_global_config(model_and_input):
    model, x = model_and_input
    with config.patch(enabled=False):
        _, code = _compile_and_run(model, x, enabled=True)
    assert OP_NAME in code


def test_backend_found_by_name_in_a_fresh_process():
    """The entry point alone must register 'intfa': the script never imports intfa_compile."""
    script = textwrap.dedent("""
        import sys, torch, torch.nn.functional as F
        def attend(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        q, k, v = torch.randn(3, 1, 2, 64, 32)
        assert "intfa_compile" not in sys.modules
        with torch.no_grad():
            out = torch.compile(attend, backend="intfa")(q, k, v)
        from torch._dynamo.utils import counters
        from intfa_compile.sites import rewritten_sites
        cos = F.cosine_similarity(out.flatten(), attend(q, k, v).flatten(), dim=0).item()
        print("sites", rewritten_sites(counters["intfa"]), "close", cos >= 0.999)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "TORCHINDUCTOR_FX_GRAPH_CACHE": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sites 1 close True" in result.stdout


@pytest.mark.parametrize("n_q, n_k", [(48, 112), (112, 48), (64, 64)])
@pytest.mark.parametrize("spelling", ["causal_lower_right", "tril_bool", "tril_additive"])
def test_causal_masks_run_as_the_causal_flag(n_q, n_k, spelling):
    """A mask that only says "causal" (bottom-right aligned, as KV-cache decoding uses) reaches the kernel as
    is_causal with its diagonal offset: no mask is read and blocks above the diagonal are skipped."""
    from torch.nn.attention.bias import causal_lower_right

    gen = torch.Generator().manual_seed(n_q + n_k)
    q = torch.randn(2, 4, n_q, 32, generator=gen)
    k, v = (torch.randn(2, 4, n_k, 32, generator=gen) for _ in range(2))
    offset = n_k - n_q

    def attend(q, k, v):
        if spelling == "causal_lower_right":
            mask = causal_lower_right(q.shape[-2], k.shape[-2])
        else:
            mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril(offset)
            if spelling == "tril_additive":
                mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))[None, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(attend, backend="intfa"), q, k, v)
        eager = attend(q, k, v)
        direct = intfa_compile.int8_sdpa(q, k, v, is_causal=True, causal_offset=offset)
    calls = re.findall(re.escape(OP_NAME) + r"\((.*)\)", "\n".join(code))
    assert len(calls) == 1, calls
    assert re.search(causal_call(offset), calls[0]), calls
    assert counters["intfa"][DEFAULT_COUNTER] == 1
    # Inductor's fused quantization may round a scale differently from eager: one P step of V at most.
    assert (out - direct).abs().max().item() <= 1e-5 * eager.abs().max().item() + v.abs().max().item() / 127
    blind = torch.arange(n_q) + offset < 0  # queries that see no key give zeros, as eager
    assert (out[..., blind, :] == 0).all() and (eager[..., blind, :] == 0).all()
    assert cosine(out, eager) >= END_TO_END_COSINE


@pytest.mark.parametrize("n_q, n_k", [(48, 112), (112, 48)])
@pytest.mark.parametrize("spelling", ["positions_finfo_min", "positions_sliding_window", "masked_fill_triu"])
def test_hand_written_causal_masks_run_as_the_causal_flag(n_q, n_k, spelling):
    """Bottom-right causal masks in hand-written attention, sliding windows included, become the causal flag,
    except a finfo.min-filled one that leaves queries with no key (they average uniformly, as eager does, so
    the mask is kept)."""
    gen = torch.Generator().manual_seed(n_q + n_k)
    q = torch.randn(2, 4, n_q, 32, generator=gen)
    k, v = (torch.randn(2, 4, n_k, 32, generator=gen) for _ in range(2))
    model = HandWrittenCausal(spelling)
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(model, backend="intfa"), q, k, v)
        eager = model(q, k, v)
    calls = re.findall(re.escape(OP_NAME) + r"\((.*)\)", "\n".join(code))
    assert len(calls) == 1 and counters["intfa"][DEFAULT_COUNTER] == 1, calls
    folded = spelling == "masked_fill_triu" or n_k >= n_q
    if folded:
        window_left = 39 if spelling == "positions_sliding_window" else -1
        assert re.search(causal_call(n_k - n_q, window_left), calls[0]), calls
    else:
        mask, is_causal = op_call_arguments(calls[0])[6:8]
        assert mask != "None" and is_causal == "False", calls
    sees_keys = torch.arange(n_q) + n_k - n_q >= 0  # eager gives NaN where masked_fill(-inf) leaves no key
    assert cosine(out[..., sees_keys, :], eager[..., sees_keys, :]) >= END_TO_END_COSINE
    if spelling == "masked_fill_triu":
        assert (out[..., ~sees_keys, :] == 0).all()  # SDPA's zeros, as for any fully masked row


def test_a_boolean_tensor_added_to_the_scores_is_added_not_read_as_a_mask():
    """``scores + bool_tensor`` adds 0 or 1 (odd, but what the model says): the rewrite must add it too."""

    class AddsBooleans(torch.nn.Module):
        def forward(self, q, k, v, flags):
            return (q @ k.transpose(-1, -2) * 0.125 + flags).softmax(-1) @ v

    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 64, 64, generator=gen) for _ in range(3))
    flags = torch.rand(1, 1, 64, 64, generator=gen) > 0.5
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(AddsBooleans(), backend="intfa"), q, k, v, flags)
        eager = AddsBooleans()(q, k, v, flags)
    assert OP_NAME in "\n".join(code)
    assert cosine(out, eager) >= END_TO_END_COSINE


@pytest.mark.parametrize("spelling", ["finfo_min_fill", "tril_and_padding"])
def test_masks_that_are_not_only_causal_stay_masks(spelling):
    """A causal mask that leaves the first query with no key, filled with finfo.min (that row averages instead of
    giving zeros), or a causal mask and-ed with padding, means more than "causal": it is passed on as a mask."""
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 2, 64, 32, generator=gen) for _ in range(3))
    padding = torch.ones(64, dtype=torch.bool)
    padding[50:] = False

    def attend(q, k, v):
        keep = torch.ones(64, 64, dtype=torch.bool).tril(-1 if spelling == "finfo_min_fill" else 0)
        if spelling == "finfo_min_fill":
            mask = torch.zeros(64, 64).masked_fill(~keep, torch.finfo(torch.float32).min)
        else:
            mask = keep & padding
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(attend, backend="intfa"), q, k, v)
        eager = attend(q, k, v)
    calls = re.findall(re.escape(OP_NAME) + r"\((.*)\)", "\n".join(code))
    assert len(calls) == 1 and op_call_arguments(calls[0])[6:8] != ["None", "False"], calls
    mask, is_causal = op_call_arguments(calls[0])[6:8]
    assert mask != "None" and is_causal == "False", calls
    assert cosine(out, eager) >= END_TO_END_COSINE


@pytest.mark.parametrize("option, value", [("qk_granularity", "per_block"), ("qk_granularity", "per_head"),
                                           ("v_granularity", "per_tensor"), ("smooth_k", True), ("qk_bits", 4),
                                           ("kv_block_size", 16), ("smooth_q", True),
                                           ("qk_rotation", "hadamard"), ("pv_format", "int8")])
def test_ablation_toggles_change_what_runs(model_and_input, option, value):
    model, x = model_and_input
    base = {"pv_format": "int8"} if option == "v_granularity" else {}  # V's scales: a quantized V
    default, _ = _compile_and_run(model, x, **base)
    torch._dynamo.reset()
    toggled, code = _compile_and_run(model, x, **base, **{option: value})
    assert OP_NAME in code
    assert not torch.equal(default, toggled)
    with torch.no_grad():
        eager = model(x)
    # INT4 Q/K has a step 127/7 ≈ 18x coarser than INT8, so its score error is ~18x larger; 1 − cosine
    # grows with the square of the error. 0.9 is a loose floor for that case, END_TO_END_COSINE the INT8 bar.
    assert cosine(toggled, eager) >= (0.9 if option == "qk_bits" else END_TO_END_COSINE)


def test_tma_loads_reaches_the_op_and_leaves_the_result_alone(model_and_input):
    """``tma_loads`` is a launch detail of the CUDA kernel: the op receives it among its launch options (so it is
    part of what was compiled), and the CPU implementation, like the kernel's other load path, computes the same
    values."""
    model, x = model_and_input
    default, default_code = _compile_and_run(model, x)
    torch._dynamo.reset()
    with_tma, code = _compile_and_run(model, x, tma_loads=True)
    calls = [line for line in code.splitlines() if f"{OP_NAME}(" in line]
    assert calls and all(re.search(rf"(launch=)?'tma_loads'{NO_EXACT_INPUTS}\)$", line) for line in calls), calls
    assert not any(re.search(rf"(launch=)?'tma_loads'{NO_EXACT_INPUTS}\)$", line) for line in default_code.splitlines()
                   if f"{OP_NAME}(" in line)
    assert torch.equal(default, with_tma)


@pytest.mark.parametrize("model_factory", ["sdpa", "hand-written"])
def test_a_failing_rewrite_keeps_the_original_attention(model_factory, monkeypatch, caplog):
    """An unexpected failure inside our rewrite leaves the site as Inductor would compile it, with a warning."""
    from intfa_compile.passes import rewrite

    from tests.model_zoo import TimmStyleAttention

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(rewrite, "int8_sdpa", broken)
    model = (SelfAttention() if model_factory == "sdpa" else TimmStyleAttention(dim=256)).eval()
    x = torch.randn(2, 64, 256)
    with caplog.at_level(logging.WARNING, logger="intfa_compile"), torch.no_grad():
        out = torch.compile(model, backend="intfa")(x)
        eager = model(x)
    assert torch.allclose(out, eager, atol=1e-5, rtol=1e-4)
    assert counters["intfa"][DEFAULT_COUNTER] == 0 and counters["intfa"]["left_alone"] == 1
    assert any("injected failure" in r.getMessage() and "kept as it was" in r.getMessage() for r in caplog.records)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="injected failure"), torch.no_grad():
        torch.compile(model, backend="intfa", options={"fallback": "error"})(x)


@pytest.mark.parametrize("case", ["length_one", "empty_batch", "channels_last", "fp16_near_limit"])
def test_edge_inputs_match_eager(case):
    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    gen = torch.Generator().manual_seed(6)
    shape = {"length_one": (2, 4, 1, 32), "empty_batch": (0, 4, 16, 32)}.get(case, (2, 4, 40, 32))
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    if case == "channels_last":
        q, k, v = (t.contiguous(memory_format=torch.channels_last) for t in (q, k, v))
    if case == "fp16_near_limit":
        # |V| near fp16's largest finite value; the scores stay moderate.
        q, k = q.half(), k.half()
        v = (v.sign() * 6.0e4).half()
    with torch.no_grad():
        out = torch.compile(attend, backend="intfa")(q, k, v)
        eager = attend(q, k, v)
    assert out.shape == eager.shape and out.dtype == eager.dtype
    assert not out.isinf().any() and not out.isnan().any()
    if out.numel():
        assert cosine(out.float(), eager.float()) >= END_TO_END_COSINE


def test_a_compiled_model_keeps_a_bounded_number_of_recompiles(monkeypatch):
    """Graphs recompiled for settings changed after compilation are kept per settings, least recently used dropped
    past ``RECOMPILES_KEPT``: a model whose config keeps changing does not hold every graph it ever needed."""
    from intfa_compile import backend

    monkeypatch.setattr(backend, "RECOMPILES_KEPT", 2)
    compiled_graphs = []

    def keep(gm, example_inputs):
        compiled_graphs.append(backend.intfa_backend(gm, example_inputs))
        return compiled_graphs[-1]

    torch._dynamo.reset()
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    attend = torch.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), backend=keep)
    with torch.no_grad():
        first = attend(q, k, v)
        for length in (1, 2, 3, 1):
            with config.patch(min_seq_len=length):
                assert torch.equal(attend(q, k, v), first)  # the same INT8 attention under each setting
    (graph,) = compiled_graphs
    kept = [settings.min_seq_len for settings, _ in graph._recompiled]
    assert kept == [3, 1]  # 2 dropped when 3 came, 1 compiled again after its eviction
    torch._dynamo.reset()
