"""Static scales: prepare → calibrate → collect → save / load → compile with them.

``prepare(model)`` compiles the model so that every attention site it finds computes the original
attention (fp, SDPA semantics) while observers record the range of Q and K per head and of V per head
and channel. ``collect(prepared)`` turns what they saw into ``AttentionScales``, keyed by site
(module path and call order, so a file saved on one machine loads on another). Compiling with
``options={"scales": scales}`` quantizes with those scales: no per-call reductions over Q, K, V.
A site missing from the scales, or whose shapes disagree, falls back to dynamic scales with a log line.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .observers import OBSERVERS

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


_sessions: dict[str, CalibrationSession] = {}
_session_ids = itertools.count()


@dataclass(frozen=True)
class AttentionScales:
    """Static quantization scales per attention site: Q and K per head, V per head and channel."""

    sites: dict[str, dict[str, list]]
    """site key → {"q": [Hq], "k": [Hk], "v": [Hk][D]} as amax values (scale = amax / 127)."""
    observer: str = "minmax"

    def fingerprint(self) -> str:
        """A hash of the content: part of the compiled graph's cache key."""
        return hashlib.sha256(json.dumps({"sites": self.sites, "observer": self.observer},
                                         sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Write the scales as JSON (portable across machines and devices)."""
        Path(path).write_text(json.dumps({"format": "intfa-scales/1", "observer": self.observer,
                                          "sites": self.sites}, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> AttentionScales:
        """Read scales written by ``save``."""
        data = json.loads(Path(path).read_text())
        if data.get("format") != "intfa-scales/1":
            raise ValueError(f"{path} is not an intfa scales file")
        return cls(sites=data["sites"], observer=data.get("observer", "minmax"))

    def __hash__(self) -> int:
        return hash(self.fingerprint())


def prepare(model: torch.nn.Module, observer: str = "minmax", options: dict[str, Any] | None = None
            ) -> torch.nn.Module:
    """``model`` compiled for calibration: run batches through the result, then ``collect`` it."""
    if observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {sorted(OBSERVERS)}, got {observer!r}")
    session_id = f"session{next(_session_ids)}"
    _sessions[session_id] = CalibrationSession(observer, dict(options or {}))
    prepared = torch.compile(model, backend="intfa", options={**(options or {}), "calibrate": session_id})
    prepared._intfa_calibration = session_id
    return prepared


def collect(prepared: torch.nn.Module) -> AttentionScales:
    """The scales the observers of a ``prepare``d model have seen, per site."""
    session_id = getattr(prepared, "_intfa_calibration", None)
    if session_id not in _sessions:
        raise ValueError("collect() takes a model returned by intfa_compile.prepare()")
    session = _sessions[session_id]
    if not session.sites:
        raise RuntimeError("no attention site has been observed: run calibration batches through the prepared "
                           "model first (under torch.no_grad())")
    sites = {name: {"q": obs.q.amax().tolist(), "k": obs.k.amax().tolist(), "v": obs.v.amax().tolist()}
             for name, obs in sorted(session.sites.items())}
    return AttentionScales(sites=sites, observer=session.observer)


@torch.library.custom_op("intfa::observed_attention", mutates_args=())
def observed_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool,
                       scale: float | None, session: str, site: str, scale_factor: Tensor | None = None) -> Tensor:
    """Calibration stand-in for an attention site: records Q, K, V ranges, returns fp attention. A scale known
    only at run time is ``scale`` times the 0-d ``scale_factor``; Q's range is recorded without it, as the INT8
    rewrite quantizes Q before applying it."""
    observers = _sessions[session].observers_for(site)
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


_static: dict[str, AttentionScales] = {}


def register_scales(scales: AttentionScales) -> str:
    """Make ``scales`` reachable by compiled graphs through their fingerprint; returns it."""
    key = scales.fingerprint()
    _static[key] = scales
    return key


def static_amax(scales: AttentionScales | None, site: str, q: Tensor, k: Tensor) -> dict[str, list] | None:
    """The calibrated ranges for ``site`` if they exist and fit these shapes; else None, with a log line."""
    if scales is None:
        return None
    entry = scales.sites.get(site)
    if entry is None:
        log.info("intfa: no static scales for attention site %s; it quantizes with dynamic scales", site)
        return None
    heads_q, heads_k, head_dim = q.shape[1], k.shape[1], k.shape[-1]
    if not all(isinstance(size, int) for size in (heads_q, heads_k, head_dim)):
        log.warning("intfa: attention site %s has symbolic head counts or head dim (q %s, k %s); static scales "
                    "hold one shape, so it quantizes with dynamic scales", site, tuple(q.shape), tuple(k.shape))
        return None
    v = entry["v"]
    if len(entry["q"]) != heads_q or len(entry["k"]) != heads_k or len(v) != heads_k or len(v[0]) != head_dim:
        log.warning("intfa: static scales for %s do not fit its shapes (q %s, k %s); it quantizes with dynamic "
                    "scales", site, tuple(q.shape), tuple(k.shape))
        return None
    return entry


_device_copies: dict[tuple[str, str, str, torch.device], Tensor] = {}


@torch.library.custom_op("intfa::static_amax", mutates_args=())
def static_amax_op(like: Tensor, fingerprint: str, site: str, which: str) -> Tensor:
    """The calibrated range (fp32) of one site's ``which`` ("q", "k" or "v") on ``like``'s device."""
    key = (fingerprint, site, which, like.device)
    if key not in _device_copies:
        values = _static[fingerprint].sites[site][which]
        _device_copies[key] = torch.tensor(values, dtype=torch.float32, device=like.device)
    return _device_copies[key].clone()  # a fresh output: the compiled graph may reuse it in place


@static_amax_op.register_fake
def _static_amax_fake(like, fingerprint, site, which):
    entry = _static[fingerprint].sites[site][which]
    shape = (len(entry), len(entry[0])) if which == "v" else (len(entry),)
    return like.new_empty(shape, dtype=torch.float32)
