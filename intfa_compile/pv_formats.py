"""The P·V formats, one record each: what every layer reads to run, check, count and explain a format.

Q·Kᵀ is INT8 in every format; they differ in how P (the softmax block) and V meet in the second GEMM. A new
format is a new ``PVFormat`` in ``PV_FORMATS`` plus its kernel and CPU twin arithmetic (CONTRIBUTING.md): config's
allowed values, the guards, the site records and counters, the op's checks, the key-block rule, V's quantizers and
the CPU implementation's rounding of P read the record. A leaf module (torch only), so anything may import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PVFormat:
    """One way to run P·V."""

    name: str
    """``config.pv_format``'s value."""
    v_dtype: torch.dtype | None
    """The dtype of the V the op takes, quantized with per-channel fp32 scales; None: V stays 16-bit, as it is
    when fp16 or bf16 (an fp32 V is rounded to bf16, ``quantize.value_16bit``), with no scales."""
    p_scales: tuple[str, ...]
    """The P scales (``config.p_scale``) the op takes with it; the first is the default. A 16-bit P has no scale:
    the op takes either and ignores it (``config`` refuses a non-default one there, as doing nothing)."""
    widest_128_key_head_dim: int
    """The widest padded head dim whose tiles take 128 keys per block without spilling registers (beyond it:
    64; ``numerics.default_kv_block``)."""
    min_cuda_capability: tuple[int, int] | None
    """The oldest GPU whose tensor cores run its P·V GEMM, where that is newer than what the INT8 Q·Kᵀ needs
    (None: any GPU the kernel runs on); a site on an older GPU is left alone, with the reason logged."""
    outcome: str
    """What a site that runs it records (``sites``, ``explain``)."""
    counter: str
    """Its entry in ``torch._dynamo.utils.counters["intfa"]``: sites rewritten to it."""
    description: str

    @property
    def quantized(self) -> bool:
        """Whether V (and P) are quantized, with V's per-channel scales passed to the op."""
        return self.v_dtype is not None

    @property
    def v_max(self) -> float:
        """The value V's per-channel scale maps each channel's max|v| onto: ``v_dtype``'s largest (127 for INT8,
        448 for e4m3), so every quantizer of V reads it from the dtype, not from a list of formats."""
        if self.v_dtype is None:
            raise ValueError(f"pv_format={self.name!r} keeps V in 16-bit: it has no quantized range")
        info = torch.finfo(self.v_dtype) if self.v_dtype.is_floating_point else torch.iinfo(self.v_dtype)
        return float(info.max)

    @property
    def p_log2_scale(self) -> float:
        """log2 of the factor P carries into a floating-point 8-bit P·V (e4m3: P·448, so P uses the format's whole
        range; SageAttention2's static scale), added to P's base-2 exponent; 0 where P stays in [0, 1] (16-bit P)
        or is scaled to integers by its P scale (INT8)."""
        if self.v_dtype is None or not self.v_dtype.is_floating_point:
            return 0.0
        return math.log2(self.v_max)


INT8 = PVFormat("int8", torch.int8, ("fixed", "row_block"), 128, None, "INT8", "int8_sites",
                "P and V in INT8, an INT8 GEMM accumulating in INT32 (full INT8, the paper's headline)")
FP8 = PVFormat("fp8", torch.float8_e4m3fn, ("fixed",), 64, (8, 9), "INT8 Q·Kᵀ, FP8 P·V", "fp8_pv_sites",
               "P·448 and V in e4m3 (V per channel), an FP8 GEMM accumulating in fp32 (SageAttention2's P·V)")
FP16 = PVFormat("fp16", None, ("fixed", "row_block"), 128, None, "half-INT8", "half_int8_sites",
                "P and V in 16-bit, a 16-bit GEMM accumulating in fp32 (the paper's half-INT8)")

PV_FORMATS: dict[str, PVFormat] = {fmt.name: fmt for fmt in (INT8, FP8, FP16)}
"""Every P·V format by name, in ``config.pv_format``'s order of values."""

DEFAULT_PV_FORMAT = FP16.name
"""The format when none is chosen: half-INT8 (why: ``config.pv_format``)."""


def pv_format(name: object) -> PVFormat:
    """The format called ``name``; ``ValueError`` naming the formats for anything else (a bool included: the
    boolean ``quantize_pv`` of 0.1 is gone)."""
    if isinstance(name, str) and name in PV_FORMATS:
        return PV_FORMATS[name]
    raise ValueError(f"pv_format must be one of {tuple(PV_FORMATS)}, got {name!r}")


def pv_format_of_value(v_dtype: torch.dtype) -> PVFormat:
    """The format of an op call, from the dtype of the V it was given."""
    for fmt in PV_FORMATS.values():
        if fmt.v_dtype == v_dtype:
            return fmt
    return FP16
