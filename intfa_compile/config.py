"""Toggles of the INT8 attention rewrite, in the manner of ``torch/_inductor/config.py``.

Each toggle is a typed module global with a docstring. Change one for the whole process
(``intfa_compile.config.pv_format = "int8"``), for a scope of this thread (``with config.patch(pv_format="int8"):``;
patched values are context-local, as torch's own config patches: another thread compiling at the same time keeps
its own) or for one compiled model (``torch.compile(m, backend="intfa", options={"pv_format": "int8"})``).

The backend reads the values when it compiles a graph; every value is part of the compiled graph's
cache key, so Inductor's FX graph cache never serves a graph built under other settings.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import os
import sys
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import fields, make_dataclass
from typing import Any, Literal

from .attention_scales import AttentionScales
from .numerics import KV_BLOCK_AUTOTUNE, PScale, QKBits, QKGranularity, QKRotation, VGranularity
from .pv_formats import DEFAULT_PV_FORMAT, PV_FORMATS, PVFormat
from .pv_formats import pv_format as pv_format_named

PVFormatName = Literal[tuple(PV_FORMATS)]  # type: ignore[valid-type]
"""``pv_format``'s values: the names of ``pv_formats.PV_FORMATS``."""

_TRUE_WORDS, _FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _env_bool(name: str, default: bool) -> bool:
    """The boolean an environment variable sets (read at import), or ``default`` when unset or empty; any other
    word is an error naming the variable, never a silent False."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE_WORDS or value in _FALSE_WORDS:
        return value in _TRUE_WORDS
    raise ValueError(f"environment variable {name}={os.environ[name]!r}: expected one of "
                     f"{', '.join(_TRUE_WORDS + _FALSE_WORDS)} (case-insensitive)")


def _env_count(name: str, default: int) -> int:
    """The non-negative integer an environment variable sets (read at import), or ``default`` when unset or empty;
    anything else is an error naming the variable."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdecimal():
        raise ValueError(f"environment variable {name}={os.environ[name]!r}: expected a non-negative integer")
    return int(value)


enabled: bool = _env_bool("INTFA_ENABLED", True)
"""Rewrite attention to INT8 at all. False compiles exactly what Inductor alone would compile."""

pv_format: PVFormatName = DEFAULT_PV_FORMAT
"""How P·V runs (Q·Kᵀ is INT8 in every case; each format is one record in ``intfa_compile.pv_formats``). "fp16"
(default): P and V kept in 16-bit (V's own dtype when it is fp16 or bf16; an fp32 V is rounded to bf16), a 16-bit GEMM
with fp32 accumulation: the paper's "half-INT8". "int8": P and V in INT8, an INT8 GEMM (full INT8, the paper's
headline). "fp8": P and V in e4m3, V scaled per channel, an FP8 GEMM with fp32 accumulation (SageAttention2's choice).

Why half-INT8 is the default (benchmarks/RESULTS.md, "On a real task"): on semantic search with the real
all-MiniLM-L6-v2 it keeps the nearest neighbours of eager fp32 better than running the whole model in bf16 (top-5 0.987
against 0.952); full INT8 does not (0.921), and no 8-bit P·V we found does (``benchmarks/task_accuracy.py --decompose``
splits its error between Q/K, V and P). The per-pipe model (``benchmarks/pipe_model.py``, sm_90) predicts half-INT8 at
least as fast as full INT8 at every head dim when the pipes overlap (d = 128: tensor-bound 1,319 against issue-bound
1,294 TOPS; d = 64 and 256: faster), and 8% slower at d = 128 only if nothing overlaps; no GPU has timed either yet.
Full INT8 remains one option away for speed measured on your GPU; "fp8" needs FP8 tensor cores (sm_89+) and takes P's
fixed scale only."""

p_scale: PScale = "fixed"
"""Scale of the INT8 softmax block P. "fixed" is the paper's 1/127 (P lies in [0, 1] after the running
max is subtracted). "row_block" scales each row of each KV block by its own maximum, which keeps
resolution for rows whose maximum was set by an earlier block."""

kv_block_size: Literal["auto", "tune", 16, 32, 64, 128] = "auto"
"""Keys per block of the online softmax. The result depends on it (P is quantized against the running maximum
of the blocks so far), so it is a setting. "auto": a rule of shapes (``numerics.default_kv_block``: 128 keys
where such a tile fits without spills, the per-pipe model's faster choice, else 64), the same on every device,
so the CPU implementation computes what the GPU kernel does. "tune": the CUDA kernel's autotuner picks 64 or
128 by timing (its choice per shape: ``kernels.int8_flash_attention.tuned_tiles()``; results may then differ
from the CPU's and between processes by one P quantization step); "auto" elsewhere. A number fixes it."""

tma_loads: bool = False
"""Load K and V in the CUDA kernel through Hopper's tensor memory accelerator (tensor descriptors, ``UTMALDG``)
where the layout allows (``kernels.int8_flash_attention.tensor_descriptors_fit``), instead of per-thread
asynchronous copies. The result is the same (the load path only; no effect on CPU or before sm_90). The
per-pipe model predicts 6.5% fewer issue cycles per key block for full INT8 at d = 128 and 2% more at d = 64
(``benchmarks/NOTES.md``); off by default until a GPU run has measured it (``benchmarks/gpu_session.sh`` runs
and times it)."""

qk_granularity: QKGranularity = "per_token"
"""Granularity of the Q and K scales; each factors out of Q·Kᵀ. "per_token": one scale per token and
head (INT-FlashAttention's choice). "per_block": one per block of tokens (128 query rows, 64 keys,
as SageAttention). "per_head": one per head over the whole sequence (coarsest)."""

v_granularity: VGranularity = "per_channel"
"""Granularity of the V scales. "per_channel": one scale per head-dim channel, which factors out of P·V
because that sum runs over tokens. "per_tensor": one scale per (batch, head), as the paper's Triton code."""

smooth_k: bool = False
"""Subtract K's mean over the sequence (per channel) before quantizing it (SageAttention). Softmax is
invariant to it: it shifts each query's scores by one constant. It helps when K has a large shared
offset across tokens, which would otherwise eat the INT8 range."""

smooth_q: bool = False
"""Subtract Q's mean over the sequence (per channel) before quantizing it, and add the per-key term that this
removes from every score (mean·k_j times the softmax scale, in fp32) to the mask, so the scores are unchanged
(SageAttention2's Q smoothing; ``quantize.center_queries``). Helps when Q has a large offset shared by its tokens.
It gives the kernel an additive mask, so the query scale no longer folds into the exponent (one more multiply
and a mask load per score); applied where the mask stays one row per head (no mask, a padding mask, a causal
flag), else that site keeps Q as it is."""

qk_rotation: QKRotation = "none"
"""Rotate the head dim of Q and K by the same orthonormal randomized Walsh–Hadamard matrix (blocks of up to 128
channels) before quantizing them (``intfa_compile.rotation``; QuaRot, FlashAttention-3): Q·Kᵀ is unchanged and a
channel with outliers is spread over its block, so per-token scales are no longer set by it. Rotation and
quantization are one operator, ``intfa::hadamard_quantize``: on CUDA one Triton kernel that reads Q (or K) once
and writes INT8 and scales, the traffic of the quantization alone; Inductor feeds it views of the projection's
output, or a realized buffer where a pointwise op such as rotary embeddings comes first (one more 16-bit write and
read of Q and K there; ``benchmarks/rotation_cost.py``). ``per_head`` granularity rotates with a GEMM first."""

qk_bits: QKBits = 8
"""Bits of the Q and K integers. 4 quantizes to [-7, 7] (held in INT8 storage; the GEMM still runs in
INT8): an accuracy ablation only, with no speed path of its own yet."""

cuda_lowering: Literal["custom_op", "triton_op"] = "custom_op"
"""How the INT8 op reaches Inductor on CUDA. "custom_op": ``intfa::int8_attention``, opaque to the
compiler, whose Python implementation launches the Triton kernel. "triton_op":
``intfa::int8_attention_triton``, which Inductor traces into and launches from its generated code.
Which is faster is for a GPU measurement to say; CPU always uses the custom op."""

scales: Any = None
"""Static scales (``intfa_compile.AttentionScales`` from ``collect``) or None for dynamic scales
computed per call. With static scales, Q and K are quantized per head and V per channel against the
calibrated ranges, and no reduction over them runs per call; a site the scales do not cover falls
back to dynamic scales with a log line. Not combinable with ``smooth_k``."""

calibrate: str = ""
"""Set by ``intfa_compile.prepare``: the calibration session whose observers record each site."""

min_seq_len: int = _env_count("INTFA_MIN_SEQ_LEN", 0)
"""Attention whose key sequence is shorter than this is left alone: quantization overhead dominates."""

fallback: Literal["original", "error"] = "original"
"""What to do with attention the rewrite cannot handle. "original" keeps it as it was and logs why;
"error" raises ``UnsupportedAttentionError``."""


def _toggle_types() -> dict[str, Any]:
    """Each toggle above (a public annotated module global) and its type, in definition order."""
    module = sys.modules[__name__]
    return {name: hint for name, hint in typing.get_type_hints(module).items() if not name.startswith("_")}


class _SettingsMethods:
    """What ``Settings`` computes from its fields."""

    @property
    def pv(self) -> PVFormat:
        """The P·V format's record (``pv_formats``)."""
        return PV_FORMATS[self.pv_format]  # type: ignore[attr-defined]

    @property
    def kv_block(self) -> int:
        """``kv_block_size`` as the op's ``kv_block`` argument (0: the shape rule; ``KV_BLOCK_AUTOTUNE``)."""
        size = self.kv_block_size  # type: ignore[attr-defined]
        return {"auto": 0, "tune": KV_BLOCK_AUTOTUNE}.get(size, size)

    def fingerprint(self) -> dict[str, Any]:
        """Every setting as plain JSON data (static scales by their content's fingerprint): the cache key part."""
        return {f.name: (value.fingerprint() if hasattr(value, "fingerprint") else value)
                for f in fields(self) for value in (getattr(self, f.name),)}  # type: ignore[arg-type]


Settings = make_dataclass("Settings", list(_toggle_types().items()), bases=(_SettingsMethods,), frozen=True)
Settings.__module__ = __name__
Settings.__doc__ = """The toggles one compilation runs under, frozen when it starts (``resolve``): one field per toggle
above, made from the toggles' own declarations (name, type; each documented there), so a toggle is declared once."""


@functools.cache
def keys() -> tuple[str, ...]:
    """Names of every toggle, in definition order."""
    return tuple(f.name for f in fields(Settings))


def _check_value(name: str, value: Any) -> None:
    hint = _toggle_types()[name]
    if typing.get_origin(hint) is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ValueError(f"intfa config {name!r} must be one of {allowed}, got {value!r}")
    elif hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"intfa config {name!r} must be a bool, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"intfa config {name!r} must be a non-negative int, got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise ValueError(f"intfa config {name!r} must be a str, got {value!r}")
    elif name == "scales":
        if value is not None and not isinstance(value, AttentionScales):
            raise ValueError(f"intfa config 'scales' must be AttentionScales or None, got {type(value).__name__}")


def validate(changes: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the valid keys if ``changes`` has an unknown key or a bad value."""
    unknown = sorted(set(changes) - set(keys()))
    if unknown:
        raise ValueError(f"unknown intfa option(s) {unknown}; valid options are {list(keys())}")
    for name, value in changes.items():
        _check_value(name, value)


def generation() -> tuple[int, int]:
    """What moves whenever a toggle is assigned, or a ``patch`` is entered or left in this context, so compiled code
    can notice cheaply: (assignments so far, this context's patch serial)."""
    return _generation, _patched.get()[0]


def snapshot() -> dict[str, Any]:
    """The current value of every toggle."""
    module = sys.modules[__name__]
    return {name: getattr(module, name) for name in keys()}


def resolve(overrides: Mapping[str, Any] | None = None) -> Settings:
    """The settings one compilation runs under: the current values with ``overrides`` applied, checked together."""
    values = snapshot()
    if overrides:
        validate(overrides)
        values.update(overrides)
    pv = pv_format_named(values["pv_format"])
    if values["p_scale"] not in pv.p_scales:
        raise ValueError(f"intfa: pv_format={pv.name!r} takes P's {' or '.join(pv.p_scales)} scale only "
                         f"(p_scale={values['p_scale']!r})")
    if not pv.quantized:  # nothing of P·V is quantized: its INT8 options would do nothing
        for name, default in (("p_scale", "fixed"), ("v_granularity", "per_channel")):
            if values[name] != default:
                raise ValueError(f"intfa: {name}={values[name]!r} applies to a quantized P·V; pv_format='fp16' (the "
                                 f"default, half-INT8) keeps P and V in 16-bit: set pv_format='int8' with it")
    if values["scales"] is not None:
        transforms = [name for name in ("smooth_k", "smooth_q") if values[name]]
        transforms += ["qk_rotation"] if values["qk_rotation"] != "none" else []
        if transforms:
            raise ValueError(f"intfa: static 'scales' were calibrated on Q and K as they are; they cannot be combined "
                             f"with {', '.join(transforms)}")
    return Settings(**values)


@contextlib.contextmanager
def patch(changes: Mapping[str, Any] | None = None, **kwargs: Any) -> Iterator[None]:
    """Set toggles for the duration of a ``with`` block (or a decorated function), then restore them. The values
    hold in this thread (this context: an asyncio task has its own) only; patches nest, the inner one winning."""
    updates = {**(changes or {}), **kwargs}
    validate(updates)
    _, current = _patched.get()
    token = _patched.set((next(_patch_serials), types.MappingProxyType({**current, **updates})))
    try:
        yield
    finally:
        _patched.reset(token)


_generation: int = 0

_patch_serials = itertools.count(1)
_patched: contextvars.ContextVar[tuple[int, Mapping[str, Any]]] = contextvars.ContextVar(
    "intfa_config_patched", default=(0, types.MappingProxyType({})))
"""This context's patched toggles and the serial of the ``patch`` that set them (0: none)."""

_TOGGLE_NAMES = frozenset(keys())


class _ConfigModule(types.ModuleType):
    """Reads a toggle from this context's ``patch`` first; validates every assignment to a toggle and bumps the
    generation counter. Assigning a toggle that a ``patch`` of this context holds changes it within that patch
    (undone when the patch ends, as the patch's own value is), elsewhere for the whole process."""

    def __getattribute__(self, name: str) -> Any:
        if name in _TOGGLE_NAMES:
            patched = _patched.get()[1]
            if name in patched:
                return patched[name]
        return super().__getattribute__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _TOGGLE_NAMES:
            _check_value(name, value)
            _, patched = _patched.get()
            if name in patched:
                _patched.set((next(_patch_serials), types.MappingProxyType({**patched, name: value})))
                return
            super().__setattr__("_generation", self._generation + 1)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _ConfigModule
