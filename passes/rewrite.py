"""The decision and the replacement shared by every attention rewrite, under the settings of one compile."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from torch._dynamo.utils import counters

from intfa_compile.calibration import static_amax
from intfa_compile.exact_fallback import band_mask
from intfa_compile.numerics import KV_BLOCK_AUTOTUNE
from intfa_compile.ops import int8_sdpa, int8_sdpa_static, scale_and_factor
from intfa_compile.sites import COUNTER_OF_PV_FORMAT, LEFT_ALONE, OUTCOME_OF_PV_FORMAT, record, retract

from .attention_site import AttentionSite
from .guards import config_skip_reason, unsupported_reason


class UnsupportedAttentionError(RuntimeError):
    """Raised for an attention site the INT8 rewrite cannot handle when ``fallback="error"``."""


_settings: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("intfa_settings", default=None)
# Decisions already taken in this pass run, by anchor node: several patterns may look at one site.
_decided: contextvars.ContextVar[dict[torch.fx.Node, bool] | None] = contextvars.ContextVar("intfa_decided",
                                                                                           default=None)
# Names of the nodes whose sites were decided in any stage of this compile, so none is reported twice.
_decided_names: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("intfa_decided_names", default=None)
_last_approved: contextvars.ContextVar[AttentionSite | None] = contextvars.ContextVar("intfa_last_approved",
                                                                                     default=None)


# Stable names of the sites of this compile: module path and call order ("layers.0.self_attn#0").
_site_keys: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("intfa_site_keys", default=None)
# Why the structural matcher declined each softmax it looked at, by node name: the report of what stayed says so.
_declined: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("intfa_declined", default=None)


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """One compile of one graph: its stages share the record of sites already reported and their keys."""
    tokens = (_decided_names.set(set()), _site_keys.set({}), _declined.set({}))
    try:
        yield
    finally:
        _decided_names.reset(tokens[0])
        _site_keys.reset(tokens[1])
        _declined.reset(tokens[2])


def note_declined(node: torch.fx.Node, reason: str) -> None:
    """Keep why the softmax at ``node`` was not taken as attention, for the report of what stayed."""
    declined = _declined.get()
    if declined is not None:
        declined[node.name] = reason


def declined_reason(node: torch.fx.Node) -> str | None:
    """Why the structural matcher did not take the softmax at ``node``, if it looked at it in this compile."""
    return (_declined.get() or {}).get(node.name)


def site_key(site: AttentionSite) -> str:
    """The site's stable key for static scales: its module path and its order among that module's sites."""
    keys = _site_keys.get()
    if keys is None:
        keys = {}
        _site_keys.set(keys)
    if site.anchor.name not in keys:
        module = site.record(LEFT_ALONE).module
        index = sum(key.rsplit("#", 1)[0] == module for key in keys.values())
        keys[site.anchor.name] = f"{module}#{index}"
    return keys[site.anchor.name]


def already_reported(node: torch.fx.Node) -> bool:
    """Whether a stage of this compile has reported the site anchored at a node of this name."""
    return node.name in (_decided_names.get() or ())


def _remember(site: AttentionSite, rewritten: bool) -> None:
    decided = _decided.get()
    if decided is not None:
        decided[site.anchor] = rewritten
    names = _decided_names.get()
    if names is not None:
        names.add(site.anchor.name)


def _earlier_decision(site: AttentionSite) -> bool | None:
    return (_decided.get() or {}).get(site.anchor)


@contextlib.contextmanager
def rewriting_under(settings: dict[str, Any]) -> Iterator[None]:
    """Make ``settings`` the ones rewrites consult while a pass runs."""
    tokens = (_settings.set(settings), _decided.set({}))
    try:
        yield
    finally:
        _settings.reset(tokens[0])
        _decided.reset(tokens[1])


def current_settings() -> dict[str, Any]:
    settings = _settings.get()
    if settings is None:
        raise RuntimeError("intfa rewrite invoked outside a pass (no settings in force)")
    return settings


def leave_alone(site: AttentionSite, reason: str, unsupported: bool = True) -> bool:
    """Record that ``site`` keeps its original attention and why; raises under fallback="error" if
    ``unsupported`` (a limit of the kernel rather than a choice of the settings). Returns False."""
    earlier = _earlier_decision(site)
    if earlier is not None:
        return earlier
    site_key(site)
    _remember(site, False)
    counters["intfa"]["left_alone"] += 1
    record(site.record(LEFT_ALONE, reason), warn=unsupported)
    if unsupported and current_settings()["fallback"] == "error":
        raise UnsupportedAttentionError(f"attention at {site.record(LEFT_ALONE).module}: {reason}")
    return False


def rewrite_failed(site: AttentionSite, error: Exception) -> None:
    """A rewrite ``decide`` approved raised: the site keeps its original attention, with a warning
    naming it, or the error propagates under fallback="error"."""
    settings = current_settings()
    if settings["fallback"] == "error":
        raise error
    counters["intfa"][COUNTER_OF_PV_FORMAT[settings["pv_format"]]] -= 1
    retract(site.anchor.name)
    _remember(site, False)
    counters["intfa"]["left_alone"] += 1
    record(site.record(LEFT_ALONE, f"the INT8 rewrite failed ({type(error).__name__}: {error}); kept as it was"),
           warn=True)


def forget_last_approved() -> None:
    """Called before judging a new site, so a failure is never blamed on an earlier one."""
    _last_approved.set(None)


def last_approved() -> AttentionSite | None:
    """The site ``decide`` approved most recently in this pass run (the one a failing rewrite was for)."""
    return _last_approved.get()


def decide(site: AttentionSite) -> bool:
    """Whether to rewrite ``site`` to INT8; records the outcome either way (and raises under fallback="error")."""
    earlier = _earlier_decision(site)
    if earlier is not None:
        return earlier
    site_key(site)
    settings = current_settings()
    reason = unsupported_reason(site)
    if reason is not None:
        return leave_alone(site, reason)
    reason = config_skip_reason(site, settings)
    if reason is not None:
        return leave_alone(site, reason, unsupported=False)
    _remember(site, True)
    _last_approved.set(site)
    counters["intfa"][COUNTER_OF_PV_FORMAT[settings["pv_format"]]] += 1
    record(site.record(OUTCOME_OF_PV_FORMAT[settings["pv_format"]]))
    return True


def int8_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
                   is_causal: bool, scale: float | torch.Tensor | None, causal_offset: int = 0, window_left: int = -1
                   ) -> torch.Tensor:
    """What replaces a site: quantization and ``intfa::int8_attention`` under the settings in force."""
    s = current_settings()
    site = last_approved()
    name = site_key(site) if site is not None else "<unknown>"
    if s["calibrate"]:
        if is_causal and (causal_offset != 0 or window_left >= 0):  # SDPA's is_causal is top-left, unbounded
            attn_mask = band_mask(query.shape[-2], key.shape[-2], causal_offset, window_left, query.device)
            is_causal = False
        sm_scale, factor = scale_and_factor(scale, query)
        return torch.ops.intfa.observed_attention(query, key, value, attn_mask, is_causal, sm_scale, s["calibrate"],
                                                  name, factor)
    op = _attention_op(query, s)
    kv_block = {"auto": 0, "tune": KV_BLOCK_AUTOTUNE}.get(s["kv_block_size"], s["kv_block_size"])
    ranges = static_amax(s["scales"], name, query, key)
    if ranges is not None:
        fingerprint = s["scales"].fingerprint()
        q_amax, k_amax, v_amax = (torch.ops.intfa.static_amax(query, fingerprint, name, which) for which in "qkv")
        return int8_sdpa_static(query, key, value, attn_mask, is_causal, scale, q_amax, k_amax, v_amax,
                                s["pv_format"], s["p_scale"], s["qk_bits"], attention_op=op,
                                causal_offset=causal_offset, window_left=window_left, kv_block=kv_block,
                                tma=s["tma_loads"])
    return int8_sdpa(query, key, value, attn_mask, is_causal, scale, s["pv_format"], s["p_scale"],
                     qk_granularity=s["qk_granularity"], v_granularity=s["v_granularity"], smooth_k=s["smooth_k"],
                     qk_bits=s["qk_bits"], attention_op=op, causal_offset=causal_offset, window_left=window_left,
                     kv_block=kv_block, tma=s["tma_loads"])


def _attention_op(query: torch.Tensor, settings: dict[str, Any]) -> Any:
    """The INT8 op to insert: the triton_op Inductor traces into, on CUDA when configured; else the custom op."""
    # The triton_op is traced at compile time with the head dim as its tile size: a symbolic one keeps the custom op.
    if settings["cuda_lowering"] == "triton_op" and query.device.type == "cuda" and isinstance(query.shape[-1], int):
        import intfa_compile.kernels.triton_op  # noqa: F401  (registers intfa::int8_attention_triton)

        return torch.ops.intfa.int8_attention_triton
    return torch.ops.intfa.int8_attention
