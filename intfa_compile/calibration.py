"""Static scales: prepare → calibrate → collect → save / load → compile with them.

``prepare(model)`` compiles the model so that every attention site it finds computes the original
attention (fp, SDPA semantics) while observers record the range of Q and K per head and of V per head
and channel. ``collect(prepared)`` turns what they saw into ``AttentionScales``, keyed by site
(module path and call order, so a file saved on one machine loads on another). Compiling with
``options={"scales": scales}`` quantizes with those scales: no per-call reductions over Q, K, V.
A site missing from the scales, or whose shapes disagree, falls back to dynamic scales with a log line.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
import struct
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .arguments import check_model, checked_options
from .attention_scales import AttentionScales
from .observers import OBSERVERS
from .scales_format import (
    AMAX_CEILING,
    AMAX_FLOOR,
)

log = logging.getLogger("intfa_compile")


@dataclass
class _SiteObservers:
    q: torch.nn.Module
    k: torch.nn.Module
    v: torch.nn.Module


@dataclass
class CalibrationSession:
    """The observers of one prepared model, one set per attention site."""

    observer: str
    options: dict[str, Any] = field(default_factory=dict)
    sites: dict[str, _SiteObservers] = field(default_factory=dict)

    def observers_for(self, site: str) -> _SiteObservers:
        if site not in self.sites:
            make = OBSERVERS[self.observer]
            self.sites[site] = _SiteObservers(q=make((1,)), k=make((1,)), v=make((1, 3)))
        return self.sites[site]


_sessions: weakref.WeakValueDictionary[str, CalibrationSession] = weakref.WeakValueDictionary()
"""Every live calibration session by id (the id is what a compiled graph holds). The prepared model owns its
session: once the model is gone, so is the session and what its observers saw."""
_session_ids = itertools.count()


def prepare(model: torch.nn.Module, observer: str = "minmax", options: dict[str, Any] | None = None
            ) -> torch.nn.Module:
    """``model`` compiled for calibration: run batches through the result, then ``collect`` it."""
    check_model(model, "prepare")
    if not isinstance(observer, str) or observer not in OBSERVERS:
        raise ValueError(f"prepare: observer must be one of {sorted(OBSERVERS)}, got {observer!r}")
    options = checked_options(options, "prepare", reserved=("calibrate", "scales"))
    session_id = f"session{next(_session_ids)}"
    session = _sessions[session_id] = CalibrationSession(observer, options)
    prepared = torch.compile(model, backend="intfa", options={**options, "calibrate": session_id})
    prepared._intfa_calibration = session  # the owner: the session lives as long as the prepared model
    return prepared


def collect(prepared: torch.nn.Module) -> AttentionScales:
    """The scales the observers of a ``prepare``d model have seen, per site."""
    session = getattr(prepared, "_intfa_calibration", None)
    if not isinstance(session, CalibrationSession):
        raise ValueError(f"collect: prepared must be a model returned by intfa_compile.prepare(), got "
                         f"{type(prepared).__name__}")
    if not session.sites:
        raise RuntimeError("no attention site has been observed: run calibration batches through the prepared "
                           "model first (under torch.no_grad())")
    sites = {name: {which: _observed_ranges(getattr(obs, which), name, which) for which in "qkv"}
             for name, obs in sorted(session.sites.items())}
    return AttentionScales(sites=sites, observer=session.observer)


def _observed_ranges(observer: torch.nn.Module, site: str, which: str) -> list:
    """What ``observer`` saw as ranges for the file: a head or channel that saw only zeros gets ``AMAX_FLOOR``;
    a non-finite range (the calibration batches held inf or NaN) or one above ``AMAX_CEILING`` is an error."""
    amax = observer.amax()
    if not bool(torch.isfinite(amax).all()) or bool((amax > AMAX_CEILING).any()):
        raise ValueError(f"calibration of site {site!r}, field {which!r}: observed ranges {amax.tolist()} include "
                         "a non-finite value or one above 2**48; were there inf or NaN in the calibration batches?")
    return amax.clamp(min=AMAX_FLOOR).tolist()


@torch.library.custom_op("intfa::observed_attention", mutates_args=())
def observed_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool,
                       scale: float | None, session: str, site: str, scale_factor: Tensor | None = None) -> Tensor:
    """Calibration stand-in for an attention site: records Q, K, V ranges, returns fp attention. A scale known
    only at run time is ``scale`` times the 0-d ``scale_factor``; Q's range is recorded without it, as the INT8
    rewrite quantizes Q before applying it."""
    owner = _sessions.get(session)
    if owner is None:
        raise RuntimeError(f"intfa calibration session {session!r} has ended: the model intfa_compile.prepare() "
                           "returned for it is gone, and with it what its observers saw")
    observers = owner.observers_for(site)
    observers.q(q)
    observers.k(k)
    observers.v(v)
    if scale_factor is not None:
        q = (q.float() * scale_factor.float()).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])
    result = torch.empty_like(q)  # strided like q, as the fake says
    result.copy_(out)
    return result


@observed_attention.register_fake
def _observed_attention_fake(q, k, v, attn_mask, is_causal, scale, session, site, scale_factor=None):
    return torch.empty_like(q)


class ScalesMismatchError(ValueError):
    """Static scales that do not fit an attention site, under ``fallback="error"``."""


def static_amax(scales: AttentionScales | None, site: str, q: Tensor, k: Tensor, strict: bool = False
                ) -> dict[str, list] | None:
    """The calibrated ranges for ``site`` if they exist and fit these shapes; else None, with a log line naming the
    site and what differed (``strict``, as under ``fallback="error"``: ``ScalesMismatchError`` instead)."""
    if scales is None:
        return None
    problem = _scales_mismatch(scales, site, q, k)
    if problem is None:
        return scales.sites[site]
    if strict:
        raise ScalesMismatchError(f"static scales for attention site {site}: {problem}")
    log.warning("intfa: static scales for attention site %s: %s; it quantizes with dynamic scales", site, problem)
    return None


def _scales_mismatch(scales: AttentionScales, site: str, q: Tensor, k: Tensor) -> str | None:
    """Why ``scales`` cannot quantize ``site`` with these q and k, or None if they fit."""
    entry = scales.sites.get(site)
    if entry is None:
        known = sorted(scales.sites)
        shown = ", ".join(known[:4]) + (", ..." if len(known) > 4 else "")
        return f"the scales have no entry for this site (they hold {len(known)} site(s): {shown or 'none'})"
    heads_q, heads_k, head_dim = q.shape[1], k.shape[1], k.shape[-1]
    if not all(isinstance(size, int) for size in (heads_q, heads_k, head_dim)):
        return (f"its head counts or head dim are symbolic (q {tuple(q.shape)}, k {tuple(k.shape)}) and static "
                "scales hold one shape")
    differences = [f"{name}: {held} in the scales, {seen} at the site" for name, held, seen in (
        ("query heads", len(entry["q"]), heads_q), ("KV heads", len(entry["k"]), heads_k),
        ("head dim", len(entry["v"][0]), head_dim)) if held != seen]
    return "; ".join(differences) or None


@functools.lru_cache(maxsize=256)
def _device_copy(digest: str, device: torch.device, values: str, shape: tuple[int, ...]) -> Tensor:
    """The ranges ``values`` encodes on ``device``, made once per (ranges, device) while in use: at most 256 kept
    (every site's Q, K and V of a few models on a few devices), the least recently used dropped first."""
    return torch.frombuffer(bytearray.fromhex(values), dtype=torch.float32).view(shape).to(device)


@torch.library.custom_op("intfa::static_amax", mutates_args=())
def static_amax_op(like: Tensor, digest: str, values: str, shape: list[int]) -> Tensor:
    """Calibrated ranges as an fp32 tensor of ``shape`` on ``like``'s device. ``values`` holds them as the hex of
    their little-endian fp32 bytes (``encode_ranges``): the call's own argument, so a compiled graph and an
    AOTInductor package carry them and nothing is looked up at run time. One copy per device is made on first use,
    found again by the short ``digest`` of ``values`` (no per-call conversion of the values), and cloned per call
    (the compiled graph may reuse the output in place)."""
    return _device_copy(digest, like.device, values, tuple(shape)).clone()


@static_amax_op.register_fake
def _static_amax_fake(like: Tensor, digest: str, values: str, shape: list[int]) -> Tensor:
    if len(values) != 8 * math.prod(shape):
        raise ValueError(f"static_amax: {len(values) // 8} values do not fill shape {shape}")
    return like.new_empty(shape, dtype=torch.float32)


def encode_ranges(values: list[float]) -> tuple[str, str]:
    """(digest, hex) of ``values`` as fp32: the arguments ``intfa::static_amax`` takes them as."""
    encoded = struct.pack(f"<{len(values)}f", *values).hex()
    return hashlib.sha256(encoded.encode()).hexdigest()[:16], encoded


def static_amax_tensors(like: Tensor, ranges: dict[str, list]) -> tuple[Tensor, Tensor, Tensor]:
    """One site's calibrated ranges (``static_amax``'s entry) as tensors in the graph: Q (Hq,), K (Hk,), V
    (Hk, D)."""
    q, k, v = ranges["q"], ranges["k"], ranges["v"]
    return tuple(torch.ops.intfa.static_amax(like, *encode_ranges(flat), shape)
                 for flat, shape in ((q, [len(q)]), (k, [len(k)]),
                                     ([x for row in v for x in row], [len(v), len(v[0])])))
